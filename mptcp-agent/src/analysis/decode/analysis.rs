//! The analysis proper: packets to subflows (oriented from the SYN's sender), subflows to
//! connections (MP_CAPABLE keys, MP_JOIN tokens), and why a subflow fell back. A subflow's
//! state lives until it ends (see [`Analysis::end`]); a connection's items wait until all its
//! subflows have ended and are handed on then, so memory follows the live connections.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Duration,
};

use mptcp_common::{
    fallback::{MappingState, SegmentFacts},
    maps::fallback_reason,
    mptcp::{AddAddr, DssMapping, MpJoin, MptcpOption},
    options::{OptionWalker, TcpOption},
};

use super::{
    RecordSink,
    dss::{Data, DssSide},
    hmac::{self, HmacInputs},
    report::{
        AddAddrRecord, Connection, ConnectionItems, DataAcks, JoinHandshake, MappingRecord, OptionRecord,
        PacketRecord, Problem, ProblemKind, Report, Subflow, SubflowKind, Summary, Verdict, token_and_idsn,
    },
};
use crate::analysis::capture_file::{Frame, FrameError, TcpSegment};

/// Capture time without a packet after which a subflow that never closed in the capture is
/// ended: longer than any retransmission backoff Linux gives up after short of its own
/// timeouts, short enough that a capture of many abandoned subflows does not pile them up.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How often, in capture time, the live subflows are looked over for idle ones: a subflow ends
/// between `IDLE_TIMEOUT` and `IDLE_TIMEOUT + IDLE_SWEEP` after its last packet.
const IDLE_SWEEP: Duration = Duration::from_secs(30);

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
    /// The MP_JOIN HMACs and ADD_ADDRs it carried, checked once its connection is finished.
    hmacs: HmacInputs,
    add_addrs: Vec<AddAddrRecord>,
    /// Each sender's FIN (initiator, responder), once seen.
    fins: [Option<Fin>; 2],
    /// The capture time of its latest packet that had one.
    last_time: Option<Duration>,
}

/// A FIN: the sequence number that acknowledges it, and whether the other side sent that.
#[derive(Debug, Clone, Copy)]
struct Fin {
    acked_by: u32,
    acked: bool,
}

/// A subflow that has ended, in what its connection's items will say of it.
struct Ended {
    subflow: Subflow,
    hmacs: HmacInputs,
    add_addrs: Vec<AddAddrRecord>,
}

/// A connection some of whose subflows are still live.
struct LiveConnection {
    connection: Connection,
    /// The subflow whose MP_CAPABLE keys make the connection.
    capable: usize,
    live_subflows: usize,
    ended: Vec<Ended>,
}

#[derive(Default)]
pub(super) struct Analysis {
    summary: Summary,
    /// The live subflows by id (ids count every subflow seen); ordered, so that the end of the
    /// capture ends them in the order they began.
    subflows: BTreeMap<usize, Tracked>,
    next_subflow: usize,
    /// Both orientations of every live subflow's 4-tuple.
    by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    connections: HashMap<usize, LiveConnection>,
    next_connection: usize,
    /// The tokens of the live connections' keys, for the MP_JOINs that name them.
    tokens: HashMap<u32, usize>,
    /// What became final since the caller last took it (`hand_on`).
    finished_mappings: Vec<MappingRecord>,
    problems: Vec<(ProblemKind, Problem)>,
    finished: Vec<ConnectionItems>,
    /// DSS checksum verdicts of the mappings handed on: verified, failed, unknown.
    checksums: [usize; 3],
    /// The latest capture time seen, and when the live subflows are next looked over.
    now: Option<Duration>,
    next_sweep: Option<Duration>,
}

/// `a` at or after `b` in sequence space (serial arithmetic).
fn seq_at_or_after(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

impl Analysis {
    /// Counts a frame; a TCP packet with MPTCP options or malformed options gives its record.
    pub(super) fn frame(&mut self, frame: &Frame) -> Option<PacketRecord> {
        self.summary.frames += 1;
        if let Some(time) = frame.time {
            self.advance(time);
        }
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
                let problem = Problem { frame: frame.number, error: error.to_string() };
                self.problems.push((ProblemKind::UndecodableFrame, problem));
                None
            }
        }
    }

    /// Moves the capture clock on (never back: merged captures need not be in time order) and
    /// ends the subflows idle for `IDLE_TIMEOUT`.
    fn advance(&mut self, time: Duration) {
        let now = self.now.map_or(time, |now| now.max(time));
        self.now = Some(now);
        let next_sweep = *self.next_sweep.get_or_insert(now + IDLE_SWEEP);
        if now < next_sweep {
            return;
        }
        self.next_sweep = Some(now + IDLE_SWEEP);
        let idle: Vec<usize> = self
            .subflows
            .iter()
            .filter(|(_, tracked)| tracked.last_time.is_some_and(|last| now - last >= IDLE_TIMEOUT))
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            self.end(id);
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
            self.problems.push((ProblemKind::MalformedOption, Problem { frame, error: error.clone() }));
            record.errors.push(error);
        }
        self.summary.malformed_options += record.errors.len() as u64;
        if !parsed.is_empty() {
            self.summary.mptcp_packets += 1;
        }
        let subflow = self.subflow_for(frame, segment, &parsed);
        if self.track(frame, subflow, segment, &parsed) {
            self.end(subflow);
        }
        record
    }

    /// The subflow of a packet; a SYN opens a new one unless it retransmits the current SYN
    /// (a new SYN on the 4-tuple of a live subflow ends that one).
    fn subflow_for(&mut self, frame: u64, segment: &TcpSegment<'_>, options: &[MptcpOption]) -> usize {
        let tuple = (segment.src, segment.dst);
        let is_syn = segment.syn && !segment.ack;
        if let Some(&id) = self.by_tuple.get(&tuple) {
            if !(is_syn && self.subflows.get(&id).is_some_and(|tracked| tracked.syn_ack_seen)) {
                return id;
            }
            self.end(id);
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
        let id = self.next_subflow;
        self.next_subflow += 1;
        self.subflows.insert(
            id,
            Tracked {
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
                hmacs: HmacInputs::default(),
                add_addrs: Vec::new(),
                fins: [None; 2],
                last_time: None,
            },
        );
        self.by_tuple.insert(tuple, id);
        self.by_tuple.insert((segment.dst, segment.src), id);
        id
    }

    /// Tracks a packet of live subflow `id`; true when the subflow has ended with it.
    fn track(&mut self, frame: u64, id: usize, segment: &TcpSegment<'_>, options: &[MptcpOption]) -> bool {
        // A join's connection and keys, for its data level: the live connection whose key has
        // the SYN's token.
        let join_target = options.iter().find_map(|o| match o {
            MptcpOption::Join(MpJoin::Syn { token, .. }) => self.join_target(*token),
            _ => None,
        });
        let Some(tracked) = self.subflows.get_mut(&id) else {
            return false;
        };
        let subflow = &mut tracked.subflow;
        subflow.packets += 1;
        tracked.last_time = self.now;
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
        let mut keys_seen = false;
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
                    keys_seen = true;
                }
                MptcpOption::Join(MpJoin::Syn { backup, addr_id, token, nonce }) => {
                    // The token is the responder's.
                    if let Some((connection_id, version, responder, initiator)) = join_target {
                        subflow.version = Some(version);
                        tracked.join_keys = (initiator, Some(responder));
                        if subflow.connection.is_none()
                            && let Some(live) = self.connections.get_mut(&connection_id)
                        {
                            subflow.connection = Some(connection_id);
                            live.connection.subflows.push(id);
                            live.live_subflows += 1;
                        }
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
                    tracked.hmacs.join_synacks.push((frame, truncated_hmac));
                }
                MptcpOption::Join(MpJoin::Ack { hmac }) => tracked.hmacs.join_acks.push((frame, hmac)),
                MptcpOption::AddAddr(AddAddr { echo, addr_id, addr, port, hmac }) => {
                    tracked.add_addrs.push(AddAddrRecord {
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
        let ended = tracked.closes(segment, from_initiator);
        if keys_seen {
            self.note_keys(id);
        }
        ended
    }

    /// The live connection one of whose keys has `token`: (its id, version, that key, the
    /// other key).
    fn join_target(&self, token: u32) -> Option<(usize, u8, u64, Option<u64>)> {
        let &id = self.tokens.get(&token)?;
        let connection = &self.connections.get(&id)?.connection;
        let (key, other) = connection.keys_for_token(token)?;
        Some((id, connection.version, key?, other))
    }

    /// Subflow `id` carried MP_CAPABLE keys: its connection, made on the first key, takes them.
    fn note_keys(&mut self, id: usize) {
        let Some(tracked) = self.subflows.get_mut(&id) else { return };
        let (initiator_key, responder_key) = (tracked.initiator_key, tracked.responder_key);
        if initiator_key.is_none() && responder_key.is_none() {
            return;
        }
        let subflow = &mut tracked.subflow;
        let version = subflow.version.unwrap_or(1);
        let connection_id = match subflow.connection {
            // A join carrying MP_CAPABLE keys does not make them its connection's.
            Some(connection_id) if self.connections.get(&connection_id).is_some_and(|c| c.capable == id) => {
                connection_id
            }
            Some(_) => return,
            None => {
                let connection_id = self.next_connection;
                self.next_connection += 1;
                self.summary.connections += 1;
                subflow.connection = Some(connection_id);
                let connection = Connection {
                    id: connection_id,
                    version,
                    initiator_key: None,
                    responder_key: None,
                    initiator_token: None,
                    initiator_idsn: None,
                    responder_token: None,
                    responder_idsn: None,
                    subflows: vec![id],
                };
                let live = LiveConnection { connection, capable: id, live_subflows: 1, ended: Vec::new() };
                self.connections.insert(connection_id, live);
                connection_id
            }
        };
        let Some(live) = self.connections.get_mut(&connection_id) else { return };
        let derive = |key: Option<u64>| key.map(|key| token_and_idsn(version, key));
        let (initiator, responder) = (derive(initiator_key), derive(responder_key));
        let connection = &mut live.connection;
        connection.version = version;
        connection.initiator_key = initiator_key;
        connection.responder_key = responder_key;
        connection.initiator_token = initiator.map(|(token, _)| token);
        connection.initiator_idsn = initiator.map(|(_, idsn)| idsn);
        connection.responder_token = responder.map(|(token, _)| token);
        connection.responder_idsn = responder.map(|(_, idsn)| idsn);
        for token in [connection.initiator_token, connection.responder_token].into_iter().flatten() {
            // The first connection with a token keeps it, as a join names one.
            self.tokens.entry(token).or_insert(connection_id);
        }
    }

    /// Ends live subflow `id`: its checksums still waiting for data are unknown, its state is
    /// freed, and its items go to its connection, handed on with it once that has no live
    /// subflow left (at once for a subflow of no known connection). A later packet on its
    /// 4-tuple starts a new subflow, and a later join naming its finished connection's token
    /// finds no connection.
    fn end(&mut self, id: usize) {
        let Some(mut tracked) = self.subflows.remove(&id) else { return };
        let (initiator, responder) = (tracked.subflow.initiator, tracked.subflow.responder);
        for tuple in [(initiator, responder), (responder, initiator)] {
            if self.by_tuple.get(&tuple) == Some(&id) {
                self.by_tuple.remove(&tuple);
            }
        }
        for side in &mut tracked.dss {
            side.finish(&mut self.finished_mappings);
        }
        let ended = Ended {
            subflow: Subflow {
                fallback: fallback_reason(&tracked),
                data_acks: DataAcks {
                    initiator: tracked.dss[0].data_ack,
                    responder: tracked.dss[1].data_ack,
                },
                ..tracked.subflow
            },
            hmacs: tracked.hmacs,
            add_addrs: tracked.add_addrs,
        };
        let Some(connection_id) = ended.subflow.connection else {
            self.hand_over(None, vec![ended]);
            return;
        };
        let Some(live) = self.connections.get_mut(&connection_id) else {
            self.hand_over(None, vec![ended]);
            return;
        };
        live.ended.push(ended);
        live.live_subflows -= 1;
        if live.live_subflows > 0 {
            return;
        }
        if let Some(live) = self.connections.remove(&connection_id) {
            let connection = live.connection;
            for token in [connection.initiator_token, connection.responder_token].into_iter().flatten() {
                if self.tokens.get(&token) == Some(&connection_id) {
                    self.tokens.remove(&token);
                }
            }
            self.hand_over(Some(connection), live.ended);
        }
    }

    /// Checks the HMACs of ended subflows, counts them, and queues their items.
    fn hand_over(&mut self, connection: Option<Connection>, mut ended: Vec<Ended>) {
        ended.sort_by_key(|ended| ended.subflow.id);
        let mut hmac_checks = Vec::new();
        for ended in &ended {
            hmac_checks.extend(hmac::checks(
                &ended.hmacs,
                &ended.add_addrs,
                &ended.subflow,
                connection.as_ref(),
            ));
        }
        hmac_checks.sort_by_key(|check| check.frame);
        let mut add_addrs = Vec::new();
        let mut subflows = Vec::with_capacity(ended.len());
        for ended in ended {
            add_addrs.extend(ended.add_addrs);
            subflows.push(ended.subflow);
        }
        add_addrs.sort_by_key(|add| add.frame);
        let summary = &mut self.summary;
        summary.subflows += subflows.len();
        summary.fallbacks += subflows.iter().filter(|s| s.fallback.is_some()).count();
        for check in &hmac_checks {
            match check.verdict {
                Verdict::Verified => summary.hmac_verified += 1,
                Verdict::Failed => summary.hmac_failed += 1,
                Verdict::Unknown => summary.hmac_unknown += 1,
            }
        }
        self.finished.push(ConnectionItems { connection, subflows, add_addrs, hmac_checks });
    }

    /// Hands `sink` what became final since the last call (mappings, counted in the summary,
    /// then problems, then finished connections), each in the order it became final.
    pub(super) fn hand_on<S: RecordSink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        for mapping in self.finished_mappings.drain(..) {
            if let Some(check) = &mapping.checksum {
                self.checksums[match check.verdict {
                    Verdict::Verified => 0,
                    Verdict::Failed => 1,
                    Verdict::Unknown => 2,
                }] += 1;
            }
            sink.mapping(mapping)?;
        }
        for (kind, problem) in self.problems.drain(..) {
            sink.problem(kind, problem)?;
        }
        for items in self.finished.drain(..) {
            sink.connection(items)?;
        }
        Ok(())
    }

    /// At the end of the capture every live subflow ends; hand on what that gives with
    /// `hand_on` before `finish`.
    pub(super) fn end_of_capture(&mut self) {
        let live: Vec<usize> = self.subflows.keys().copied().collect();
        for id in live {
            self.end(id);
        }
    }

    /// The subflows still live (tests: what a closed subflow frees).
    #[cfg(test)]
    pub(super) fn live_subflows(&self) -> usize {
        self.subflows.len()
    }

    /// The live connections and the tokens they are found by (tests).
    #[cfg(test)]
    pub(super) fn live_connections(&self) -> (usize, usize) {
        (self.connections.len(), self.tokens.len())
    }

    /// The report's summary; its lists were handed on as they became final.
    pub(super) fn finish(self, file: String) -> Report {
        let [checksum_verified, checksum_failed, checksum_unknown] = self.checksums;
        Report {
            file,
            read_error: None,
            summary: Summary { checksum_verified, checksum_failed, checksum_unknown, ..self.summary },
            connections: Vec::new(),
            subflows: Vec::new(),
            add_addrs: Vec::new(),
            hmac_checks: Vec::new(),
            mappings: Vec::new(),
            undecodable_frames: Vec::new(),
            malformed_options: Vec::new(),
            packets: None,
        }
    }
}

impl Tracked {
    /// Notes a segment's FIN and what it acknowledges of the other side's; true once the
    /// subflow has ended: a RST, or both FINs sent and each acknowledged.
    fn closes(&mut self, segment: &TcpSegment<'_>, from_initiator: bool) -> bool {
        let (own, peer) = if from_initiator { (0, 1) } else { (1, 0) };
        if segment.fin && self.fins[own].is_none() {
            // The FIN takes the sequence number after the payload (and the SYN's, on a SYN).
            let length = u32::try_from(segment.payload_len).unwrap_or(u32::MAX);
            let end = segment.seq.wrapping_add(length).wrapping_add(u32::from(segment.syn));
            self.fins[own] = Some(Fin { acked_by: end.wrapping_add(1), acked: false });
        }
        if segment.ack
            && let Some(fin) = self.fins[peer].as_mut()
            && seq_at_or_after(segment.ack_number, fin.acked_by)
        {
            fin.acked = true;
        }
        segment.rst || self.fins.iter().all(|fin| fin.is_some_and(|fin| fin.acked))
    }

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
