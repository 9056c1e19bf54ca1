//! The analysis proper: packets to subflows (oriented from the SYN's sender), subflows to
//! connections (MP_CAPABLE keys, MP_JOIN tokens), and why a subflow fell back.

use std::{collections::HashMap, net::SocketAddr};

use mptcp_common::{
    fallback::{MappingState, SegmentFacts},
    maps::fallback_reason,
    mptcp::{AddAddr, MpJoin, MptcpOption},
    options::{OptionWalker, TcpOption},
};

use super::{
    hmac::{self, HmacInputs},
    report::{
        AddAddrRecord, Connection, HmacCheck, JoinHandshake, OptionRecord, PacketRecord, Problem, Report,
        Subflow, SubflowKind, Summary, Verdict, token_and_idsn,
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
}

#[derive(Default)]
pub(super) struct Analysis {
    summary: Summary,
    subflows: Vec<Tracked>,
    /// Both orientations of every 4-tuple, to the latest subflow on it.
    by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    add_addrs: Vec<AddAddrRecord>,
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
            },
            syn_ack_seen: false,
            initiator_key: None,
            responder_key: None,
            mappings: [MappingState::default(); 2],
            fallback: None,
        });
        self.by_tuple.insert(tuple, id);
        self.by_tuple.insert((segment.dst, segment.src), id);
        id
    }

    fn track(&mut self, frame: u64, id: usize, segment: &TcpSegment<'_>, options: &[MptcpOption]) {
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
    }

    pub(super) fn finish(mut self, file: String) -> Report {
        let connections = self.connections();
        let subflows: Vec<Subflow> = self
            .subflows
            .into_iter()
            .map(|tracked| Subflow { fallback: fallback_reason(&tracked), ..tracked.subflow })
            .collect();
        let checks: Vec<HmacCheck> = hmac::checks(&self.hmacs, &self.add_addrs, &subflows, &connections);
        let count = |verdict| checks.iter().filter(|c| c.verdict == verdict).count();
        let summary = Summary {
            connections: connections.len(),
            subflows: subflows.len(),
            fallbacks: subflows.iter().filter(|s| s.fallback.is_some()).count(),
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
            subflows,
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
