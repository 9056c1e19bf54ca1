//! `mptcp-agent decode`: every MPTCP option of a capture file, decoded with the shared codec,
//! grouped into connections by token, with derived tokens and IDSNs and a verdict on every
//! MP_JOIN and ADD_ADDR HMAC whose keys the capture holds.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use mptcp_common::{
    mptcp::{
        AddAddr, MpCapable, MpExperimental, MpFail, MpFastClose, MpJoin, MpPrio, MpTcpRst, MptcpOption,
        RemoveAddr,
    },
    options::{OptionWalker, TcpOption},
};
use serde::Serialize;

use crate::{
    analysis::capture_file::{self, CaptureFileError, FrameError, TcpSegment},
    dataplane::handshake,
};

/// One MPTCP option as the per-packet listing shows it. 64-bit values are JSON integers (exact;
/// read them as 64-bit integers); HMACs longer than 64 bits and opaque payloads are hex strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "subtype", rename_all = "snake_case")]
pub enum OptionRecord {
    MpCapable {
        version: u8,
        flags: u8,
        sender_key: Option<u64>,
        receiver_key: Option<u64>,
        data_len: Option<u16>,
        checksum: Option<u16>,
        /// Derived from `sender_key` with the version's hash.
        sender_token: Option<u32>,
        sender_idsn: Option<u64>,
    },
    MpJoinSyn {
        backup: bool,
        addr_id: u8,
        token: u32,
        nonce: u32,
    },
    MpJoinSynAck {
        backup: bool,
        addr_id: u8,
        truncated_hmac: u64,
        nonce: u32,
    },
    MpJoinAck {
        hmac: String,
    },
    Dss {
        data_fin: bool,
        data_ack: Option<u64>,
        data_ack_wide: Option<bool>,
        dsn: Option<u64>,
        dsn_wide: Option<bool>,
        subflow_seq: Option<u32>,
        data_len: Option<u16>,
        checksum: Option<u16>,
        infinite_mapping: bool,
    },
    AddAddr {
        echo: bool,
        addr_id: u8,
        addr: IpAddr,
        port: Option<u16>,
        hmac: Option<u64>,
        /// The RFC 6824 shape (IP version nibble, no HMAC).
        v0: bool,
    },
    RemoveAddr {
        ids: Vec<u8>,
    },
    MpPrio {
        backup: bool,
        addr_id: Option<u8>,
    },
    MpFail {
        dsn: u64,
    },
    MpFastclose {
        receiver_key: u64,
    },
    MpTcprst {
        flags: u8,
        reason: u8,
    },
    MpExperimental {
        nibble: u8,
        payload: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_and_idsn(version: u8, key: u64) -> (u32, u64) {
    if version == 0 {
        (handshake::token_v0(key), handshake::idsn_v0(key))
    } else {
        (handshake::token(key), handshake::idsn(key))
    }
}

impl From<&MptcpOption> for OptionRecord {
    fn from(option: &MptcpOption) -> Self {
        match *option {
            MptcpOption::Capable(MpCapable {
                version,
                flags,
                sender_key,
                receiver_key,
                data_len,
                checksum,
            }) => {
                let derived = sender_key.map(|key| token_and_idsn(version, key));
                Self::MpCapable {
                    version,
                    flags,
                    sender_key,
                    receiver_key,
                    data_len,
                    checksum,
                    sender_token: derived.map(|(token, _)| token),
                    sender_idsn: derived.map(|(_, idsn)| idsn),
                }
            }
            MptcpOption::Join(MpJoin::Syn { backup, addr_id, token, nonce }) => {
                Self::MpJoinSyn { backup, addr_id, token, nonce }
            }
            MptcpOption::Join(MpJoin::SynAck { backup, addr_id, truncated_hmac, nonce }) => {
                Self::MpJoinSynAck { backup, addr_id, truncated_hmac, nonce }
            }
            MptcpOption::Join(MpJoin::Ack { hmac }) => Self::MpJoinAck { hmac: hex(&hmac) },
            MptcpOption::Dss(dss) => Self::Dss {
                data_fin: dss.data_fin,
                data_ack: dss.data_ack.map(|ack| ack.value),
                data_ack_wide: dss.data_ack.map(|ack| ack.wide),
                dsn: dss.mapping.map(|m| m.dsn),
                dsn_wide: dss.mapping.map(|m| m.dsn_wide),
                subflow_seq: dss.mapping.map(|m| m.subflow_seq),
                data_len: dss.mapping.map(|m| m.data_len),
                checksum: dss.mapping.and_then(|m| m.checksum),
                infinite_mapping: dss.mapping.is_some_and(|m| m.is_infinite()),
            },
            MptcpOption::AddAddr(add) => Self::AddAddr {
                echo: add.echo,
                addr_id: add.addr_id,
                addr: add.addr,
                port: add.port,
                hmac: add.hmac,
                v0: add.is_v0(),
            },
            MptcpOption::RemoveAddr(RemoveAddr { ids }) => Self::RemoveAddr { ids: ids.as_slice().to_vec() },
            MptcpOption::Prio(MpPrio { backup, addr_id }) => Self::MpPrio { backup, addr_id },
            MptcpOption::Fail(MpFail { dsn }) => Self::MpFail { dsn },
            MptcpOption::FastClose(MpFastClose { receiver_key }) => Self::MpFastclose { receiver_key },
            MptcpOption::TcpRst(MpTcpRst { flags, reason }) => Self::MpTcprst { flags, reason },
            MptcpOption::Experimental(MpExperimental { nibble, payload }) => {
                Self::MpExperimental { nibble, payload: hex(payload.as_slice()) }
            }
        }
    }
}

/// One TCP packet that carries MPTCP options or malformed options.
#[derive(Debug, Clone, Serialize)]
pub struct PacketRecord {
    pub frame: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP flags among S, A, F, R.
    pub flags: String,
    pub options: Vec<OptionRecord>,
    pub errors: Vec<String>,
}

/// A frame or option the decoder could not make sense of.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub frame: u64,
    pub error: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubflowKind {
    /// Its SYN carried MP_CAPABLE: the connection's first subflow.
    MpCapable,
    /// Its SYN carried MP_JOIN.
    MpJoin,
    /// Its SYN carried no MPTCP option.
    Tcp,
    /// Its SYN is not in the capture.
    Unknown,
}

/// The MP_JOIN handshake of a subflow.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinHandshake {
    /// The token in the SYN: the responder's.
    pub token: u32,
    pub initiator_nonce: u32,
    pub responder_nonce: Option<u32>,
    pub initiator_addr_id: u8,
    pub responder_addr_id: Option<u8>,
    pub initiator_backup: bool,
    pub responder_backup: Option<bool>,
}

/// One TCP subflow (4-tuple), oriented from the host that sent its SYN.
#[derive(Debug, Clone, Serialize)]
pub struct Subflow {
    pub id: usize,
    pub connection: Option<usize>,
    pub initiator: SocketAddr,
    pub responder: SocketAddr,
    pub kind: SubflowKind,
    pub first_frame: u64,
    pub packets: u64,
    pub version: Option<u8>,
    pub join: Option<JoinHandshake>,
    /// Why the subflow fell back to plain TCP, when it did.
    pub fallback: Option<String>,
    #[serde(skip)]
    state: SubflowState,
}

/// What the analysis tracks per subflow but does not report as such.
#[derive(Debug, Clone, Default)]
struct SubflowState {
    syn_ack_seen: bool,
    mp_capable_syn_ack: bool,
    initiator_key: Option<u64>,
    responder_key: Option<u64>,
    /// Frames after the handshake that carried any MPTCP option, and that carried payload.
    mptcp_after_handshake: u64,
    payload_after_handshake: u64,
    infinite_mapping_frame: Option<u64>,
}

/// One MPTCP connection: the keys of both hosts and what follows from them.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub id: usize,
    pub version: u8,
    pub initiator_key: Option<u64>,
    pub responder_key: Option<u64>,
    pub initiator_token: Option<u32>,
    pub initiator_idsn: Option<u64>,
    pub responder_token: Option<u32>,
    pub responder_idsn: Option<u64>,
    pub subflows: Vec<usize>,
}

impl Connection {
    /// The key whose token is `token`, and the other key.
    fn keys_for_token(&self, token: u32) -> Option<(Option<u64>, Option<u64>)> {
        if self.responder_token == Some(token) {
            Some((self.responder_key, self.initiator_key))
        } else if self.initiator_token == Some(token) {
            Some((self.initiator_key, self.responder_key))
        } else {
            None
        }
    }
}

/// One ADD_ADDR option.
#[derive(Debug, Clone, Serialize)]
pub struct AddAddrRecord {
    pub frame: u64,
    pub subflow: usize,
    pub sender: SocketAddr,
    pub echo: bool,
    pub addr_id: u8,
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub hmac: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacOption {
    MpJoinSynAck,
    MpJoinAck,
    AddAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Verified,
    Failed,
    /// The keys (or nonces) needed are not in the capture.
    Unknown,
}

/// The check of one HMAC carried in one frame.
#[derive(Debug, Clone, Serialize)]
pub struct HmacCheck {
    pub frame: u64,
    pub subflow: usize,
    pub connection: Option<usize>,
    pub option: HmacOption,
    /// Hex, as on the wire.
    pub received: String,
    pub expected: Option<String>,
    pub verdict: Verdict,
    /// Why the verdict is unknown.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub frames: u64,
    pub tcp_packets: u64,
    pub mptcp_packets: u64,
    pub non_tcp_frames: u64,
    pub undecodable_frames: u64,
    pub malformed_options: u64,
    pub connections: usize,
    pub subflows: usize,
    pub fallbacks: usize,
    pub hmac_verified: usize,
    pub hmac_failed: usize,
    pub hmac_unknown: usize,
}

/// Everything `decode` reports about one capture file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    /// Set when the file ends early or is corrupt; what came before is still decoded.
    pub read_error: Option<String>,
    pub summary: Summary,
    pub connections: Vec<Connection>,
    pub subflows: Vec<Subflow>,
    pub add_addrs: Vec<AddAddrRecord>,
    pub hmac_checks: Vec<HmacCheck>,
    pub undecodable_frames: Vec<Problem>,
    pub malformed_options: Vec<Problem>,
    /// Only with `--packets`: every packet carrying MPTCP options or malformed options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<Vec<PacketRecord>>,
}

/// Decodes a capture file.
pub fn decode_file(path: &Path, with_packets: bool) -> Result<Report, CaptureFileError> {
    let capture = capture_file::read(path)?;
    let mut analysis = Analysis::default();
    let mut packets = Vec::new();
    for frame in &capture.frames {
        analysis.summary.frames += 1;
        match frame.tcp() {
            Ok(segment) => {
                let record = analysis.packet(frame.number, &segment);
                if !record.options.is_empty() || !record.errors.is_empty() {
                    packets.push(record);
                }
            }
            Err(FrameError::NotTcp) => analysis.summary.non_tcp_frames += 1,
            Err(error) => {
                analysis.summary.undecodable_frames += 1;
                analysis.undecodable.push(Problem { frame: frame.number, error: error.to_string() });
            }
        }
    }
    let mut report = analysis.finish(path.display().to_string());
    report.read_error = capture.read_error;
    if with_packets {
        report.packets = Some(packets);
    }
    Ok(report)
}

#[derive(Default)]
struct Analysis {
    summary: Summary,
    subflows: Vec<Subflow>,
    /// Both orientations of every 4-tuple, to the latest subflow on it.
    by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    add_addrs: Vec<AddAddrRecord>,
    join_synacks: Vec<(u64, usize, u64)>,
    join_acks: Vec<(u64, usize, [u8; 20])>,
    undecodable: Vec<Problem>,
    malformed: Vec<Problem>,
}

impl Analysis {
    fn packet(&mut self, frame: u64, segment: &TcpSegment<'_>) -> PacketRecord {
        self.summary.tcp_packets += 1;
        let mut record = PacketRecord {
            frame,
            src: segment.src,
            dst: segment.dst,
            flags: [(segment.syn, 'S'), (segment.ack, 'A'), (segment.fin, 'F'), (segment.rst, 'R')]
                .iter()
                .filter_map(|&(set, flag)| set.then_some(flag))
                .collect(),
            options: Vec::new(),
            errors: Vec::new(),
        };
        let mut parsed = Vec::new();
        for option in OptionWalker::new(segment.options) {
            let error = match option {
                Ok(TcpOption::Mptcp(bytes)) => match MptcpOption::parse(bytes) {
                    Ok(mptcp) => {
                        record.options.push(OptionRecord::from(&mptcp));
                        parsed.push(mptcp);
                        continue;
                    }
                    Err(error) => error.to_string(),
                },
                Ok(_) => continue,
                Err(error) => error.to_string(),
            };
            self.malformed.push(Problem { frame, error: error.clone() });
            record.errors.push(error);
        }
        self.summary.malformed_options += record.errors.len() as u64;
        if !parsed.is_empty() {
            self.summary.mptcp_packets += 1;
        }
        let subflow = self.subflow_for(frame, segment, &parsed);
        self.track(frame, subflow, segment, &parsed);
        record
    }

    /// The subflow of a packet; a SYN opens a new one unless it retransmits the current SYN.
    fn subflow_for(&mut self, frame: u64, segment: &TcpSegment<'_>, options: &[MptcpOption]) -> usize {
        let tuple = (segment.src, segment.dst);
        let is_syn = segment.syn && !segment.ack;
        if let Some(&id) = self.by_tuple.get(&tuple)
            && !(is_syn && self.subflows[id].state.syn_ack_seen)
        {
            return id;
        }
        let kind = if !is_syn {
            SubflowKind::Unknown
        } else if options.iter().any(|o| matches!(o, MptcpOption::Capable(_))) {
            SubflowKind::MpCapable
        } else if options.iter().any(|o| matches!(o, MptcpOption::Join(MpJoin::Syn { .. }))) {
            SubflowKind::MpJoin
        } else {
            SubflowKind::Tcp
        };
        // Without its SYN, a subflow is oriented by its first packet; a SYN-ACK comes from the
        // responder.
        let (initiator, responder) =
            if segment.syn && segment.ack { (segment.dst, segment.src) } else { (segment.src, segment.dst) };
        let id = self.subflows.len();
        self.subflows.push(Subflow {
            id,
            connection: None,
            initiator,
            responder,
            kind,
            first_frame: frame,
            packets: 0,
            version: None,
            join: None,
            fallback: None,
            state: SubflowState::default(),
        });
        self.by_tuple.insert(tuple, id);
        self.by_tuple.insert((segment.dst, segment.src), id);
        id
    }

    fn track(&mut self, frame: u64, id: usize, segment: &TcpSegment<'_>, options: &[MptcpOption]) {
        let subflow = &mut self.subflows[id];
        subflow.packets += 1;
        let from_initiator = segment.src == subflow.initiator;
        let is_syn_ack = segment.syn && segment.ack;
        let handshake_done = subflow.state.syn_ack_seen && !segment.syn;
        if is_syn_ack {
            subflow.state.syn_ack_seen = true;
        }
        // The third ACK still carries handshake options; count what comes after it.
        let handshake_option = options.iter().any(|o| {
            matches!(o, MptcpOption::Join(_))
                || matches!(o, MptcpOption::Capable(c) if c.receiver_key.is_some() && c.data_len.is_none())
        });
        if handshake_done && !handshake_option {
            if !options.is_empty() {
                subflow.state.mptcp_after_handshake += 1;
            }
            if segment.payload_len > 0 {
                subflow.state.payload_after_handshake += 1;
            }
        }
        for option in options {
            match *option {
                MptcpOption::Capable(capable) => {
                    subflow.version = Some(capable.version);
                    if is_syn_ack {
                        subflow.state.mp_capable_syn_ack = true;
                    }
                    // SYN-ACK: the responder's key; third ACK and first data: both, sender first.
                    let (own, peer) = (capable.sender_key, capable.receiver_key);
                    let (initiator_key, responder_key) =
                        if from_initiator { (own, peer) } else { (peer, own) };
                    subflow.state.initiator_key = subflow.state.initiator_key.or(initiator_key);
                    subflow.state.responder_key = subflow.state.responder_key.or(responder_key);
                }
                MptcpOption::Join(MpJoin::Syn { backup, addr_id, token, nonce }) => {
                    subflow.join = Some(JoinHandshake {
                        token,
                        initiator_nonce: nonce,
                        initiator_addr_id: addr_id,
                        initiator_backup: backup,
                        ..JoinHandshake::default()
                    });
                }
                MptcpOption::Join(MpJoin::SynAck { backup, addr_id, truncated_hmac, nonce }) => {
                    if let Some(join) = subflow.join.as_mut() {
                        join.responder_nonce = Some(nonce);
                        join.responder_addr_id = Some(addr_id);
                        join.responder_backup = Some(backup);
                    }
                    self.join_synacks.push((frame, id, truncated_hmac));
                }
                MptcpOption::Join(MpJoin::Ack { hmac }) => self.join_acks.push((frame, id, hmac)),
                MptcpOption::Dss(dss) if dss.mapping.is_some_and(|m| m.is_infinite()) => {
                    subflow.state.infinite_mapping_frame.get_or_insert(frame);
                }
                MptcpOption::AddAddr(AddAddr { echo, addr_id, addr, port, hmac }) => {
                    self.add_addrs.push(AddAddrRecord {
                        frame,
                        subflow: id,
                        sender: segment.src,
                        echo,
                        addr_id,
                        addr,
                        port,
                        hmac,
                    });
                }
                _ => {}
            }
        }
    }

    fn finish(mut self, file: String) -> Report {
        let connections = self.connections();
        for subflow in &mut self.subflows {
            subflow.fallback = fallback_reason(subflow);
        }
        let mut checks = Vec::new();
        for &(frame, id, received) in &self.join_synacks {
            checks.push(self.check_join(
                frame,
                id,
                HmacOption::MpJoinSynAck,
                &received.to_be_bytes(),
                &connections,
            ));
        }
        for (frame, id, received) in &self.join_acks {
            checks.push(self.check_join(*frame, *id, HmacOption::MpJoinAck, received, &connections));
        }
        for add in self.add_addrs.iter().filter(|add| add.hmac.is_some()) {
            checks.push(self.check_add_addr(add, &connections));
        }
        checks.sort_by_key(|check| check.frame);
        let count = |verdict| checks.iter().filter(|c| c.verdict == verdict).count();
        let summary = Summary {
            connections: connections.len(),
            subflows: self.subflows.len(),
            fallbacks: self.subflows.iter().filter(|s| s.fallback.is_some()).count(),
            hmac_verified: count(Verdict::Verified),
            hmac_failed: count(Verdict::Failed),
            hmac_unknown: count(Verdict::Unknown),
            ..self.summary
        };
        Report {
            file,
            read_error: None,
            summary,
            connections,
            subflows: self.subflows,
            add_addrs: self.add_addrs,
            hmac_checks: checks,
            undecodable_frames: self.undecodable,
            malformed_options: self.malformed,
            packets: None,
        }
    }

    /// Groups subflows into connections: one per subflow with MP_CAPABLE keys (its SYN may be
    /// missing from the capture), joins by token.
    fn connections(&mut self) -> Vec<Connection> {
        let mut connections: Vec<Connection> = Vec::new();
        for subflow in &mut self.subflows {
            let state = &subflow.state;
            if state.initiator_key.is_none() && state.responder_key.is_none() {
                continue;
            }
            let version = subflow.version.unwrap_or(1);
            let derive = |key: Option<u64>| key.map(|key| token_and_idsn(version, key));
            let (initiator, responder) = (derive(state.initiator_key), derive(state.responder_key));
            let id = connections.len();
            subflow.connection = Some(id);
            connections.push(Connection {
                id,
                version,
                initiator_key: state.initiator_key,
                responder_key: state.responder_key,
                initiator_token: initiator.map(|(token, _)| token),
                initiator_idsn: initiator.map(|(_, idsn)| idsn),
                responder_token: responder.map(|(token, _)| token),
                responder_idsn: responder.map(|(_, idsn)| idsn),
                subflows: vec![subflow.id],
            });
        }
        for subflow in &mut self.subflows {
            let Some(join) = &subflow.join else { continue };
            if let Some(connection) = connections.iter_mut().find(|c| c.keys_for_token(join.token).is_some())
            {
                subflow.connection = Some(connection.id);
                subflow.version = Some(connection.version);
                connection.subflows.push(subflow.id);
            }
        }
        connections
    }

    /// (key of the subflow's initiator, key of its responder), as far as the capture tells.
    fn subflow_keys(&self, subflow: &Subflow, connections: &[Connection]) -> (Option<u64>, Option<u64>) {
        let Some(connection) = subflow.connection.and_then(|id| connections.get(id)) else {
            return (None, None);
        };
        match &subflow.join {
            // The SYN names the responder by its token.
            Some(join) => connection
                .keys_for_token(join.token)
                .map(|(responder, initiator)| (initiator, responder))
                .unwrap_or((None, None)),
            None => (connection.initiator_key, connection.responder_key),
        }
    }

    fn check_join(
        &self,
        frame: u64,
        id: usize,
        option: HmacOption,
        received: &[u8],
        connections: &[Connection],
    ) -> HmacCheck {
        let subflow = &self.subflows[id];
        let (initiator_key, responder_key) = self.subflow_keys(subflow, connections);
        let nonces = subflow.join.as_ref().and_then(|j| Some((j.initiator_nonce, j.responder_nonce?)));
        let v0 = subflow.version == Some(0);
        let expected = match (initiator_key.zip(responder_key), nonces) {
            (None, _) => Err("the keys of this subflow's connection are not in the capture"),
            (Some(_), None) => Err("the MP_JOIN SYN or SYN-ACK with the nonces is not in the capture"),
            (Some((a, b)), Some((ra, rb))) => Ok(match option {
                HmacOption::MpJoinSynAck if v0 => {
                    handshake::join_synack_hmac_v0(b, a, rb, ra).to_be_bytes().to_vec()
                }
                HmacOption::MpJoinSynAck => handshake::join_synack_hmac(b, a, rb, ra).to_be_bytes().to_vec(),
                _ if v0 => handshake::join_ack_hmac_v0(a, b, ra, rb).to_vec(),
                _ => handshake::join_ack_hmac(a, b, ra, rb).to_vec(),
            }),
        };
        hmac_check(frame, subflow, option, received, expected)
    }

    fn check_add_addr(&self, add: &AddAddrRecord, connections: &[Connection]) -> HmacCheck {
        let subflow = &self.subflows[add.subflow];
        let (initiator_key, responder_key) = self.subflow_keys(subflow, connections);
        let (sender_key, receiver_key) = if add.sender == subflow.initiator {
            (initiator_key, responder_key)
        } else {
            (responder_key, initiator_key)
        };
        let expected = sender_key
            .zip(receiver_key)
            .map(|(sender, receiver)| {
                handshake::add_addr_hmac(sender, receiver, add.addr_id, add.addr, add.port)
                    .to_be_bytes()
                    .to_vec()
            })
            .ok_or("the keys of this subflow's connection are not in the capture");
        let received = add.hmac.unwrap_or_default().to_be_bytes();
        hmac_check(add.frame, subflow, HmacOption::AddAddr, &received, expected)
    }
}

fn hmac_check(
    frame: u64,
    subflow: &Subflow,
    option: HmacOption,
    received: &[u8],
    expected: Result<Vec<u8>, &str>,
) -> HmacCheck {
    let (verdict, reason) = match &expected {
        Ok(expected) if expected == received => (Verdict::Verified, None),
        Ok(_) => (Verdict::Failed, None),
        Err(reason) => (Verdict::Unknown, Some((*reason).to_owned())),
    };
    HmacCheck {
        frame,
        subflow: subflow.id,
        connection: subflow.connection,
        option,
        received: hex(received),
        expected: expected.ok().map(|e| hex(&e)),
        verdict,
        reason,
    }
}

fn fallback_reason(subflow: &Subflow) -> Option<String> {
    let state = &subflow.state;
    if subflow.kind == SubflowKind::MpCapable && state.syn_ack_seen && !state.mp_capable_syn_ack {
        return Some("the SYN-ACK carries no MP_CAPABLE: the responder does not do MPTCP".to_owned());
    }
    if let Some(frame) = state.infinite_mapping_frame {
        return Some(format!("infinite mapping in frame {frame}"));
    }
    let negotiated =
        matches!(subflow.kind, SubflowKind::MpCapable | SubflowKind::MpJoin) && state.syn_ack_seen;
    if negotiated && state.payload_after_handshake > 0 && state.mptcp_after_handshake == 0 {
        return Some("no MPTCP option after the handshake although data flowed".to_owned());
    }
    None
}

/// `decode --json`: the report as pretty JSON.
pub fn to_json(report: &Report) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn hex_opt<T: std::fmt::LowerHex>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| format!("{v:#x}"))
}

/// `decode` without `--json`: a summary for people.
pub fn to_text(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = &report.summary;
    let _ = writeln!(
        out,
        "{}: {} frames, {} TCP packets, {} with MPTCP options, {} not TCP, {} undecodable, {} malformed options",
        report.file,
        s.frames,
        s.tcp_packets,
        s.mptcp_packets,
        s.non_tcp_frames,
        s.undecodable_frames,
        s.malformed_options
    );
    if let Some(error) = &report.read_error {
        let _ = writeln!(out, "reading stopped early: {error}");
    }
    let subflow_line = |out: &mut String, subflow: &Subflow| {
        let _ = write!(
            out,
            "  subflow {}: {} -> {}, {:?}, {} packets from frame {}",
            subflow.id,
            subflow.initiator,
            subflow.responder,
            subflow.kind,
            subflow.packets,
            subflow.first_frame
        );
        if let Some(join) = &subflow.join {
            let _ = write!(
                out,
                ", token {:#010x}, address IDs {} -> {}, backup {} / {}",
                join.token,
                join.initiator_addr_id,
                opt(join.responder_addr_id),
                join.initiator_backup,
                opt(join.responder_backup)
            );
        }
        if let Some(reason) = &subflow.fallback {
            let _ = write!(out, ", FELL BACK: {reason}");
        }
        out.push('\n');
    };
    for connection in &report.connections {
        let _ = writeln!(
            out,
            "connection {} (MPTCP v{}): initiator key {} token {} IDSN {}; responder key {} token {} IDSN {}",
            connection.id,
            connection.version,
            hex_opt(connection.initiator_key),
            hex_opt(connection.initiator_token),
            opt(connection.initiator_idsn),
            hex_opt(connection.responder_key),
            hex_opt(connection.responder_token),
            opt(connection.responder_idsn),
        );
        for subflow in connection.subflows.iter().filter_map(|&id| report.subflows.get(id)) {
            subflow_line(&mut out, subflow);
        }
    }
    let loose: Vec<&Subflow> = report.subflows.iter().filter(|s| s.connection.is_none()).collect();
    if !loose.is_empty() {
        let _ = writeln!(out, "subflows of no known connection:");
        loose.into_iter().for_each(|subflow| subflow_line(&mut out, subflow));
    }
    for add in &report.add_addrs {
        let _ = writeln!(
            out,
            "ADD_ADDR frame {} from {}: id {} {}{}{}",
            add.frame,
            add.sender,
            add.addr_id,
            add.addr,
            add.port.map(|p| format!(" port {p}")).unwrap_or_default(),
            if add.echo { " (echo)" } else { "" }
        );
    }
    for check in &report.hmac_checks {
        let _ = writeln!(
            out,
            "HMAC {:?} frame {} (subflow {}): {:?}{}",
            check.option,
            check.frame,
            check.subflow,
            check.verdict,
            check.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "HMACs: {} verified, {} failed, {} unknown; {} connections, {} subflows, {} fell back",
        s.hmac_verified, s.hmac_failed, s.hmac_unknown, s.connections, s.subflows, s.fallbacks
    );
    for problem in report.undecodable_frames.iter().chain(&report.malformed_options) {
        let _ = writeln!(out, "frame {}: {}", problem.frame, problem.error);
    }
    if let Some(packets) = &report.packets {
        for packet in packets {
            let _ = writeln!(
                out,
                "frame {} {} -> {} [{}] {:?}{}",
                packet.frame,
                packet.src,
                packet.dst,
                packet.flags,
                packet.options,
                if packet.errors.is_empty() { String::new() } else { format!(" errors {:?}", packet.errors) }
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Offline checks of the grouping, orientation and verdict logic on synthetic captures. The
    //! HMAC values come from [`handshake`] (checked against independent vectors there); the
    //! integration test `tests/tests/decode.rs` checks everything against kernel traffic.
    use std::{
        borrow::Cow,
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use etherparse::PacketBuilder;
    use mptcp_common::mptcp::{DataAck, Dss, DssMapping};
    use pcap_file::{
        DataLink,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
        pcapng::{
            PcapNgWriter,
            blocks::{
                enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock,
            },
        },
    };

    use super::*;

    const CLIENT_KEY: u64 = 0x0102_0304_0506_0708;
    const SERVER_KEY: u64 = 0x1112_1314_1516_1718;
    const CLIENT_NONCE: u32 = 0x0102_0304;
    const SERVER_NONCE: u32 = 0x0a0b_0c0d;
    const CLIENT: [u8; 4] = [192, 0, 2, 1];
    const CLIENT_2: [u8; 4] = [198, 51, 100, 1];
    const SERVER: [u8; 4] = [192, 0, 2, 2];
    const SERVER_2: [u8; 4] = [198, 51, 100, 2];

    #[derive(Clone, Copy)]
    enum Flags {
        Syn,
        SynAck,
        Ack,
    }

    /// An IPv4 TCP packet carrying `options` (padded with NOPs) and 8 payload bytes.
    fn packet(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: Flags, options: &[MptcpOption]) -> Vec<u8> {
        let mut area = Vec::new();
        for option in options {
            let mut buf = [0u8; 40];
            let len = option.encode(&mut buf).unwrap();
            area.extend_from_slice(&buf[..len]);
        }
        while area.len() % 4 != 0 {
            area.push(1);
        }
        packet_with_area(src, dst, flags, &area)
    }

    /// An IPv4 TCP packet with a raw option area (a multiple of 4 bytes) and 8 payload bytes.
    fn packet_with_area(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: Flags, area: &[u8]) -> Vec<u8> {
        let mut builder = PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, 1, 1000);
        builder = match flags {
            Flags::Syn => builder.syn(),
            Flags::SynAck => builder.syn().ack(1),
            Flags::Ack => builder.ack(1),
        };
        let builder = builder.options_raw(area).unwrap();
        let mut out = Vec::new();
        builder.write(&mut out, &[0x5a; 8]).unwrap();
        out
    }

    fn capable(sender_key: Option<u64>, receiver_key: Option<u64>) -> MptcpOption {
        MptcpOption::Capable(MpCapable {
            version: 1,
            flags: 0x01,
            sender_key,
            receiver_key,
            data_len: None,
            checksum: None,
        })
    }

    /// A connection with an ADD_ADDR from the server and a join from the client's second address.
    fn handshake_packets(join_ack_hmac: [u8; 20]) -> Vec<Vec<u8>> {
        let (c, s) = ((CLIENT, 40000), (SERVER, 80));
        let (c2, s1) = ((CLIENT_2, 40001), (SERVER, 80));
        let announced = IpAddr::from(SERVER_2);
        let add_addr = AddAddr {
            echo: false,
            addr_id: 1,
            addr: announced,
            port: None,
            hmac: Some(handshake::add_addr_hmac(SERVER_KEY, CLIENT_KEY, 1, announced, None)),
        };
        let dss = Dss {
            data_fin: false,
            data_ack: Some(DataAck { value: 7, wide: true }),
            mapping: Some(DssMapping { dsn: 9, dsn_wide: true, subflow_seq: 1, data_len: 8, checksum: None }),
        };
        let synack_hmac = handshake::join_synack_hmac(SERVER_KEY, CLIENT_KEY, SERVER_NONCE, CLIENT_NONCE);
        let token = handshake::token(SERVER_KEY);
        vec![
            packet(c, s, Flags::Syn, &[capable(None, None)]),
            packet(s, c, Flags::SynAck, &[capable(Some(SERVER_KEY), None)]),
            packet(c, s, Flags::Ack, &[capable(Some(CLIENT_KEY), Some(SERVER_KEY))]),
            packet(s, c, Flags::Ack, &[MptcpOption::AddAddr(add_addr)]),
            packet(
                c2,
                s1,
                Flags::Syn,
                &[MptcpOption::Join(MpJoin::Syn { backup: true, addr_id: 2, token, nonce: CLIENT_NONCE })],
            ),
            packet(
                s1,
                c2,
                Flags::SynAck,
                &[MptcpOption::Join(MpJoin::SynAck {
                    backup: false,
                    addr_id: 0,
                    truncated_hmac: synack_hmac,
                    nonce: SERVER_NONCE,
                })],
            ),
            packet(c2, s1, Flags::Ack, &[MptcpOption::Join(MpJoin::Ack { hmac: join_ack_hmac })]),
            packet(c, s, Flags::Ack, &[MptcpOption::Dss(dss)]),
        ]
    }

    fn good_join_ack() -> [u8; 20] {
        handshake::join_ack_hmac(CLIENT_KEY, SERVER_KEY, CLIENT_NONCE, SERVER_NONCE)
    }

    struct Scratch(std::path::PathBuf);

    impl Scratch {
        /// A file name unique to this process and call, so tests can run in parallel.
        fn new(name: &str) -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            Self(std::env::temp_dir().join(format!("mptcp-decode-{}-{n}-{name}", std::process::id())))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write_pcap(name: &str, link_type: DataLink, frames: &[Vec<u8>]) -> Scratch {
        let header = PcapHeader { datalink: link_type, ..PcapHeader::default() };
        let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
        for frame in frames {
            writer.write_packet(&PcapPacket::new(Duration::ZERO, frame.len() as u32, frame)).unwrap();
        }
        let scratch = Scratch::new(name);
        std::fs::write(&scratch.0, writer.into_writer()).unwrap();
        scratch
    }

    fn decode(frames: &[Vec<u8>]) -> Report {
        let file = write_pcap("raw", DataLink::RAW, frames);
        decode_file(&file.0, true).unwrap()
    }

    #[test]
    fn a_whole_connection_is_grouped_and_every_hmac_verifies() {
        let report = decode(&handshake_packets(good_join_ack()));
        assert_eq!(report.read_error, None);
        assert_eq!(report.summary.mptcp_packets, 8);
        assert_eq!(report.connections.len(), 1);
        let connection = &report.connections[0];
        assert_eq!(connection.initiator_key, Some(CLIENT_KEY));
        assert_eq!(connection.responder_key, Some(SERVER_KEY));
        assert_eq!(connection.responder_token, Some(handshake::token(SERVER_KEY)));
        assert_eq!(connection.initiator_idsn, Some(handshake::idsn(CLIENT_KEY)));
        assert_eq!(connection.subflows, [0, 1]);
        let join = report.subflows[1].join.as_ref().unwrap();
        assert_eq!((join.initiator_addr_id, join.responder_addr_id), (2, Some(0)));
        assert_eq!((join.initiator_backup, join.responder_backup), (true, Some(false)));
        let verdicts: Vec<_> = report.hmac_checks.iter().map(|c| (c.frame, c.option, c.verdict)).collect();
        assert_eq!(
            verdicts,
            [
                (4, HmacOption::AddAddr, Verdict::Verified),
                (6, HmacOption::MpJoinSynAck, Verdict::Verified),
                (7, HmacOption::MpJoinAck, Verdict::Verified),
            ]
        );
        assert_eq!(report.summary.fallbacks, 0);
        let packets = report.packets.unwrap();
        assert_eq!(packets.len(), 8);
        assert!(matches!(packets[7].options[0], OptionRecord::Dss { data_ack: Some(7), dsn: Some(9), .. }));
    }

    #[test]
    fn a_wrong_hmac_fails_and_missing_keys_are_unknown() {
        let mut bad = good_join_ack();
        bad[3] ^= 0x80;
        let report = decode(&handshake_packets(bad));
        assert_eq!((report.summary.hmac_verified, report.summary.hmac_failed), (2, 1));
        let failed = report.hmac_checks.iter().find(|c| c.verdict == Verdict::Failed).unwrap();
        assert_eq!((failed.frame, failed.option), (7, HmacOption::MpJoinAck));
        assert_eq!(failed.expected.as_deref(), Some(hex(&good_join_ack()).as_str()));

        // Without the MP_CAPABLE handshake the join belongs to no known connection.
        let report = decode(&handshake_packets(good_join_ack())[4..]);
        assert_eq!(report.connections.len(), 0);
        assert_eq!(report.summary.hmac_unknown, 2);
        assert!(report.hmac_checks.iter().all(|c| c.reason.is_some()));

        // Captured from the SYN-ACK on, the subflows are still oriented from their initiators.
        let report = decode(&handshake_packets(good_join_ack())[1..]);
        assert_eq!(report.summary.hmac_verified, 3);
        assert_eq!(report.subflows[0].kind, SubflowKind::Unknown);
        assert_eq!(report.subflows[0].initiator, SocketAddr::from((CLIENT, 40000)));
    }

    #[test]
    fn fallback_malformed_options_and_broken_frames_are_reported() {
        let (c, s) = ((CLIENT, 40000), (SERVER, 80));
        let mut frames = vec![
            packet(c, s, Flags::Syn, &[capable(None, None)]),
            packet(s, c, Flags::SynAck, &[]),
            packet(c, s, Flags::Ack, &[]),
        ];
        // An MP_JOIN of 13 bytes, padded with NOPs: a malformed option.
        let bad_join = [30, 13, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1];
        frames.push(packet_with_area(c, s, Flags::Ack, &bad_join));
        // A frame cut inside its TCP header.
        frames.push(packet(c, s, Flags::Ack, &[])[..30].to_vec());
        // Not TCP: a UDP datagram.
        let mut udp = Vec::new();
        PacketBuilder::ipv4(CLIENT, SERVER, 64).udp(1, 2).write(&mut udp, &[0; 4]).unwrap();
        frames.push(udp);

        let report = decode(&frames);
        assert_eq!(report.summary.frames, 6);
        assert_eq!(report.summary.non_tcp_frames, 1);
        assert_eq!(report.undecodable_frames.len(), 1);
        assert_eq!(report.undecodable_frames[0].frame, 5);
        assert_eq!(report.malformed_options.len(), 1);
        assert_eq!(report.malformed_options[0].frame, 4);
        assert_eq!(report.subflows.len(), 1);
        assert!(report.subflows[0].fallback.as_deref().unwrap().contains("SYN-ACK carries no MP_CAPABLE"));
        assert_eq!(report.summary.fallbacks, 1);
        assert!(to_text(&report).contains("FELL BACK"));
    }

    #[test]
    fn pcapng_with_ethernet_frames_decodes_like_pcap() {
        let frames: Vec<Vec<u8>> = handshake_packets(good_join_ack())
            .into_iter()
            .map(|ip| {
                let mut ethernet = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
                ethernet.extend_from_slice(&ip);
                ethernet
            })
            .collect();
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        writer
            .write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: 0,
                options: vec![],
            })
            .unwrap();
        for frame in &frames {
            writer
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: Duration::ZERO,
                    original_len: frame.len() as u32,
                    data: Cow::Borrowed(frame),
                    options: vec![],
                })
                .unwrap();
        }
        let file = Scratch::new("ng");
        std::fs::write(&file.0, writer.into_inner()).unwrap();
        let report = decode_file(&file.0, false).unwrap();
        assert_eq!(report.summary.hmac_verified, 3);
        assert_eq!(report.connections.len(), 1);
        assert!(report.packets.is_none());
    }

    #[test]
    fn bad_files_are_clear_errors_and_a_cut_file_keeps_its_frames() {
        let missing = decode_file(Path::new("/nonexistent/capture.pcap"), false).unwrap_err();
        assert!(matches!(missing, CaptureFileError::Io { .. }), "{missing}");
        let garbage = Scratch::new("garbage");
        std::fs::write(&garbage.0, b"this is not a capture file at all").unwrap();
        let error = decode_file(&garbage.0, false).unwrap_err();
        assert!(matches!(error, CaptureFileError::Format { .. }), "{error}");

        let file = write_pcap("cut", DataLink::RAW, &handshake_packets(good_join_ack()));
        let mut bytes = std::fs::read(&file.0).unwrap();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&file.0, bytes).unwrap();
        let report = decode_file(&file.0, false).unwrap();
        assert!(report.read_error.is_some());
        assert_eq!(report.summary.frames, 7);
        assert_eq!(report.summary.hmac_verified, 3);
    }
}
