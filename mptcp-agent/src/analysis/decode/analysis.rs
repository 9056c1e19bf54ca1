//! The analysis proper: packets to subflows (oriented from the SYN's sender), subflows to
//! connections (MP_CAPABLE keys, MP_JOIN tokens), and why a subflow fell back.

use std::{collections::HashMap, net::SocketAddr};

use mptcp_common::{
    fallback::{MappingState, SegmentFacts},
    maps::fallback_reason,
    mptcp::{AddAddr, DssMapping, MpJoin, MptcpOption},
    options::{OptionWalker, TcpOption},
};

use super::{
    dss::{Data, DssSide},
    hmac::{self, HmacInputs},
    report::{
        AddAddrRecord, Connection, DataAcks, HmacCheck, JoinHandshake, MappingRecord, OptionRecord,
        PacketRecord, Problem, Report, Subflow, SubflowKind, Summary, Verdict, token_and_idsn,
    },
};
use crate::analysis::capture_file::{Frame, FrameError, TcpSegment};

/// A subflow with what the analysis tracks of it but does not report as such.
struct Tracked {
    subflow: Subflow,
    syn_ack_seen: bool,
    initiator_key: Option<u64>,
    responder_key: Option<u64>,
    /// The shared fallback rule's state per sender (initiator, responder), and its first
    /// verdict with the frame that gave it.
    mappings: [MappingState; 2],
    fallback: Option<(u8, u64)>,
    /// The data level per sender (initiator, responder).
    dss: [DssSide; 2],
    /// A join's (initiator, responder) keys, from the connection its SYN names.
    join_keys: (Option<u64>, Option<u64>),
}

#[derive(Default)]
pub(super) struct Analysis {
    summary: Summary,
    subflows: Vec<Tracked>,
    /// Both orientations of every 4-tuple, to the latest subflow on it.
    by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    add_addrs: Vec<AddAddrRecord>,
    /// Mappings whose verdict became final since the caller last took them.
    finished_mappings: Vec<MappingRecord>,
    /// DSS checksum verdicts of the mappings handed on: verified, failed, unknown.
    checksums: [usize; 3],
    hmacs: HmacInputs,
    undecodable: Vec<Problem>,
    malformed: Vec<Problem>,
}

impl Analysis {
    /// Counts a frame; a TCP packet with MPTCP options or malformed options gives its record.
    pub(super) fn frame(&mut self, frame: &Frame) -> Option<PacketRecord> {
        self.summary.frames += 1;
        match frame.tcp() {
            Ok(segment) => {
                let record = self.packet(frame.number, &segment);
                (!record.options.is_empty() || !record.errors.is_empty()).then_some(record)
            }
            Err(FrameError::NotTcp) => {
                self.summary.non_tcp_frames += 1;
                None
            }
            Err(error) => {
                self.summary.undecodable_frames += 1;
                self.undecodable.push(Problem { frame: frame.number, error: error.to_string() });
                None
            }
        }
    }

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
            && !(is_syn && self.subflows[id].syn_ack_seen)
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
        self.subflows.push(Tracked {
            subflow: Subflow {
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
                data_acks: DataAcks::default(),
            },
            syn_ack_seen: false,
            initiator_key: None,
            responder_key: None,
            mappings: [MappingState::default(); 2],
            fallback: None,
            dss: [DssSide::default(), DssSide::default()],
            join_keys: (None, None),
        });
        self.by_tuple.insert(tuple, id);
        self.by_tuple.insert((segment.dst, segment.src), id);
        id
    }

    fn track(&mut self, frame: u64, id: usize, segment: &TcpSegment<'_>, options: &[MptcpOption]) {
        // A join's keys, for its data level: the connection whose key has the SYN's token.
        let join_keys = options.iter().find_map(|o| match o {
            MptcpOption::Join(MpJoin::Syn { token, .. }) => self.keys_for_token(*token),
            _ => None,
        });
        let tracked = &mut self.subflows[id];
        let subflow = &mut tracked.subflow;
        subflow.packets += 1;
        let from_initiator = segment.src == subflow.initiator;
        let is_syn_ack = segment.syn && segment.ack;
        let handshake_done = tracked.syn_ack_seen && !segment.syn;
        if is_syn_ack {
            tracked.syn_ack_seen = true;
        }
        if tracked.fallback.is_none() {
            let initial = subflow.kind == SubflowKind::MpCapable;
            let negotiated = initial || subflow.kind == SubflowKind::MpJoin;
            let facts = segment_facts(segment, options, initial, negotiated && handshake_done);
            let sender = usize::from(!from_initiator);
            if let Some(reason) = tracked.mappings[sender].on_segment(&facts) {
                tracked.fallback = Some((reason, frame));
            }
        }
        for option in options {
            match *option {
                MptcpOption::Capable(capable) => {
                    subflow.version = Some(capable.version);
                    // SYN-ACK: the responder's key; third ACK and first data: both, sender first.
                    let (own, peer) = (capable.sender_key, capable.receiver_key);
                    let (initiator_key, responder_key) =
                        if from_initiator { (own, peer) } else { (peer, own) };
                    tracked.initiator_key = tracked.initiator_key.or(initiator_key);
                    tracked.responder_key = tracked.responder_key.or(responder_key);
                }
                MptcpOption::Join(MpJoin::Syn { backup, addr_id, token, nonce }) => {
                    // The token is the responder's.
                    if let Some((version, responder, initiator)) = join_keys {
                        subflow.version = Some(version);
                        tracked.join_keys = (initiator, Some(responder));
                    }
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
                    self.hmacs.join_synacks.push((frame, id, truncated_hmac));
                }
                MptcpOption::Join(MpJoin::Ack { hmac }) => self.hmacs.join_acks.push((frame, id, hmac)),
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
        tracked.data_level(frame, id, segment, from_initiator, options, &mut self.finished_mappings);
    }

    /// The version and keys of the connection one of whose keys has `token`: (version, that
    /// key, the other).
    fn keys_for_token(&self, token: u32) -> Option<(u8, u64, Option<u64>)> {
        self.subflows.iter().filter(|t| t.subflow.kind == SubflowKind::MpCapable).find_map(|t| {
            let version = t.subflow.version.unwrap_or(1);
            let token_of = |key: Option<u64>| key.map(|key| token_and_idsn(version, key).0);
            if token_of(t.responder_key) == Some(token) {
                Some((version, t.responder_key?, t.initiator_key))
            } else if token_of(t.initiator_key) == Some(token) {
                Some((version, t.initiator_key?, t.responder_key))
            } else {
                None
            }
        })
    }

    /// The mappings whose verdict became final since the last call, in that order, counted
    /// in the summary.
    pub(super) fn take_finished_mappings(&mut self) -> std::vec::Drain<'_, MappingRecord> {
        for mapping in &self.finished_mappings {
            if let Some(check) = &mapping.checksum {
                self.checksums[match check.verdict {
                    Verdict::Verified => 0,
                    Verdict::Failed => 1,
                    Verdict::Unknown => 2,
                }] += 1;
            }
        }
        self.finished_mappings.drain(..)
    }

    /// At the end of the capture: every checksum still waiting for data is unknown; take them
    /// with `take_finished_mappings` before `finish`.
    pub(super) fn end_of_capture(&mut self) {
        for tracked in &mut self.subflows {
            for side in &mut tracked.dss {
                side.finish(&mut self.finished_mappings);
            }
        }
    }

    /// The report of everything but the mappings and packets, which were handed on as they
    /// became final.
    pub(super) fn finish(mut self, file: String) -> Report {
        for tracked in &mut self.subflows {
            tracked.subflow.data_acks =
                DataAcks { initiator: tracked.dss[0].data_ack, responder: tracked.dss[1].data_ack };
        }
        let connections = self.connections();
        let subflows: Vec<Subflow> = self
            .subflows
            .into_iter()
            .map(|tracked| Subflow { fallback: fallback_reason(&tracked), ..tracked.subflow })
            .collect();
        let checks: Vec<HmacCheck> = hmac::checks(&self.hmacs, &self.add_addrs, &subflows, &connections);
        let count = |verdict| checks.iter().filter(|c| c.verdict == verdict).count();
        let [checksum_verified, checksum_failed, checksum_unknown] = self.checksums;
        let summary = Summary {
            connections: connections.len(),
            subflows: subflows.len(),
            fallbacks: subflows.iter().filter(|s| s.fallback.is_some()).count(),
            hmac_verified: count(Verdict::Verified),
            hmac_failed: count(Verdict::Failed),
            hmac_unknown: count(Verdict::Unknown),
            checksum_verified,
            checksum_failed,
            checksum_unknown,
            ..self.summary
        };
        Report {
            file,
            read_error: None,
            summary,
            connections,
            subflows,
            add_addrs: self.add_addrs,
            hmac_checks: checks,
            mappings: Vec::new(),
            undecodable_frames: self.undecodable,
            malformed_options: self.malformed,
            packets: None,
        }
    }

    /// Groups subflows into connections: one per subflow with MP_CAPABLE keys (its SYN may be
    /// missing from the capture), joins by token.
    fn connections(&mut self) -> Vec<Connection> {
        let mut connections: Vec<Connection> = Vec::new();
        for tracked in &mut self.subflows {
            let (initiator_key, responder_key) = (tracked.initiator_key, tracked.responder_key);
            if initiator_key.is_none() && responder_key.is_none() {
                continue;
            }
            let subflow = &mut tracked.subflow;
            let version = subflow.version.unwrap_or(1);
            let derive = |key: Option<u64>| key.map(|key| token_and_idsn(version, key));
            let (initiator, responder) = (derive(initiator_key), derive(responder_key));
            let id = connections.len();
            subflow.connection = Some(id);
            connections.push(Connection {
                id,
                version,
                initiator_key,
                responder_key,
                initiator_token: initiator.map(|(token, _)| token),
                initiator_idsn: initiator.map(|(_, idsn)| idsn),
                responder_token: responder.map(|(token, _)| token),
                responder_idsn: responder.map(|(_, idsn)| idsn),
                subflows: vec![subflow.id],
            });
        }
        for subflow in self.subflows.iter_mut().map(|tracked| &mut tracked.subflow) {
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
}

impl Tracked {
    /// The data level of a segment: its sender's data ACK, mapping and mapped payload.
    fn data_level(
        &mut self,
        frame: u64,
        id: usize,
        segment: &TcpSegment<'_>,
        from_initiator: bool,
        options: &[MptcpOption],
        finished: &mut Vec<MappingRecord>,
    ) {
        let version = self.subflow.version.unwrap_or(1);
        let start = |key: Option<u64>| key.map_or(0, |key| token_and_idsn(version, key).1.wrapping_add(1));
        let (initiator_key, responder_key) = match self.subflow.kind {
            SubflowKind::MpJoin => self.join_keys,
            _ => (self.initiator_key, self.responder_key),
        };
        let (initiator_start, responder_start) = (start(initiator_key), start(responder_key));
        let sender = usize::from(!from_initiator);
        let (own_start, peer_start) = if from_initiator {
            (initiator_start, responder_start)
        } else {
            (responder_start, initiator_start)
        };
        let side = &mut self.dss[sender];
        side.data_start = own_start;
        side.acked_start = peer_start;
        let mut mapping = None;
        for option in options {
            match option {
                MptcpOption::Dss(dss) => {
                    if let Some(ack) = dss.data_ack {
                        side.data_ack(ack);
                    }
                    mapping = dss.mapping.map(|m| (m, dss.data_fin)).or(mapping);
                }
                // MP_CAPABLE with data maps it from the start of the sender's space, subflow
                // sequence 1 (RFC 8684 3.1).
                MptcpOption::Capable(capable) if !segment.syn && own_start != 0 => {
                    if let Some(data_len) = capable.data_len {
                        let implicit = DssMapping {
                            dsn: own_start,
                            dsn_wide: true,
                            subflow_seq: 1,
                            data_len,
                            checksum: capable.checksum,
                        };
                        mapping = Some((implicit, false));
                    }
                }
                _ => {}
            }
        }
        let state = &self.mappings[sender];
        let data = Data {
            frame,
            subflow: id,
            sender: segment.src,
            rel_seq: (state.isn_known && !segment.syn).then(|| segment.seq.wrapping_sub(state.isn)),
            payload_len: segment.payload_len,
            payload: segment.payload,
        };
        side.segment(mapping, &data, finished);
    }
}

/// What the shared fallback rule needs of a packet: the programs feed it the same.
fn segment_facts(
    segment: &TcpSegment<'_>,
    options: &[MptcpOption],
    initial: bool,
    established: bool,
) -> SegmentFacts {
    let dss_mapping = options.iter().find_map(|o| match o {
        MptcpOption::Dss(dss) => dss.mapping.map(|m| (m.subflow_seq, m.data_len)),
        _ => None,
    });
    // MP_CAPABLE with data maps it from subflow sequence 1.
    let capable_mapping = options.iter().find_map(|o| match o {
        MptcpOption::Capable(c) => c.data_len.map(|len| (1, len)),
        _ => None,
    });
    SegmentFacts {
        syn: segment.syn,
        ack: segment.ack,
        seq: segment.seq,
        payload_len: u32::try_from(segment.payload_len).unwrap_or(u32::MAX),
        initial,
        established,
        mp_capable: options.iter().any(|o| matches!(o, MptcpOption::Capable(_))),
        mapping: dss_mapping.or(capable_mapping),
        mp_fail: options.iter().any(|o| matches!(o, MptcpOption::Fail(_))),
    }
}

fn fallback_reason(tracked: &Tracked) -> Option<String> {
    let (reason, frame) = tracked.fallback?;
    Some(match reason {
        fallback_reason::NO_MP_CAPABLE_REPLY => {
            "the SYN-ACK carries no MP_CAPABLE: the responder does not do MPTCP".to_owned()
        }
        fallback_reason::INFINITE_MAPPING => format!("infinite mapping in frame {frame}"),
        fallback_reason::MP_FAIL => format!("MP_FAIL in frame {frame}"),
        _ => format!("data in frame {frame} not covered by a DSS mapping"),
    })
}
