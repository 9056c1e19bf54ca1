//! Connection and subflow tracking: what each MPTCP option means for the tables, handshake
//! events for the agent, and join admission.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::null_mut,
};

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use mptcp_common::{
    fallback::{MappingState, SegmentFacts, falls_back_connection},
    keys::{KeyDigest, version_key_digest_in},
    maps::{
        AddrKey, Connection, Direction, Event, FlowKey, HalfOpen, PacketCounters, Subflow, addr_bytes,
        admission, connection_flags, direction_flags, event_flags, event_kind, fallback_reason, hmac_verdict,
        ipv4_mapped, subflow_kind, subflow_state,
    },
    mptcp::{
        AddAddr, Dss, DssMapping, MpCapable, MpExperimental, MpFail, MpFastClose, MpJoin, MpPrio, MpTcpRst,
        MptcpError, RemoveAddr, subtype, subtype_of, widening_base,
    },
    options::TCP_OPTION_SPACE,
    tcp,
};
use mptcp_ebpf::{
    packet::tcp_flags,
    tables::{admit_source, promote},
};

use crate::{
    maps::{
        CLIENT_TOKENS, CONNECTIONS, DIGEST_SCHEDULE, EVENTS, HALF_OPEN, HALF_OPEN_SUBFLOWS, HMAC_VERDICTS,
        JOIN_RATE, SUBFLOWS, config, counters, scratch,
    },
    state::PacketState,
};

/// What the XDP program does with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// A zeroed entry to insert before filling it in place: building a 168-byte value on the
/// 512-byte BPF stack would crowd out the option buffer.
static EMPTY_SUBFLOW: Subflow = zeroed_subflow();
static EMPTY_CONNECTION: Connection = zeroed_connection();

const fn zeroed_subflow() -> Subflow {
    // SAFETY: Subflow is plain integers and arrays of them; all zeroes is a valid value.
    unsafe { core::mem::zeroed() }
}

const fn zeroed_connection() -> Connection {
    // SAFETY: as above.
    unsafe { core::mem::zeroed() }
}

/// Token and IDSN of a key with the hash of MPTCP `version`, in a function of its own: the hash
/// state gets its own stack frame.
#[inline(never)]
fn digest(version: u8, key: u64, out: &mut KeyDigest) {
    if let Some(schedule) = DIGEST_SCHEDULE.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot, used by one packet at a time.
        *out = version_key_digest_in(version, key, unsafe { &mut *schedule });
    }
}

/// Time for first/last-seen stamps: the coarse clock, read only where a stamp is written.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// `BPF_NOEXIST`: create only.
const NOEXIST: u64 = 1;

/// An add other CPUs cannot lose (BPF_ATOMIC): the two hooks and several receive queues may
/// update one entry at once. core's atomic types lack `fetch_add` on the BPF target, which
/// declares no compare-and-swap, so this uses the intrinsic they are built on.
#[inline(always)]
fn atomic_add(target: &mut u64, value: u64) {
    // SAFETY: the reference is to 8-byte aligned map memory.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}

/// XDP/TC return values of the global functions below (they may only return scalars).
const PASS: u32 = 0;
const DROP: u32 = 1;

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Pass => PASS,
            Verdict::Drop => DROP,
        }
    }

    pub fn from_code(code: u32) -> Self {
        if code == DROP { Verdict::Drop } else { Verdict::Pass }
    }
}

/// Parses and handles MPTCP option `index` of the packet in this CPU's scratch memory, then,
/// when `finish` is set, does what [`mptcp_track_finish`] does, without looking the subflow up
/// again (most packets carry one MPTCP option).
///
/// A global BPF function: the verifier checks it once, on its own, instead of once per path
/// through its callers, which keeps verification linear in the number of options handled.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn mptcp_track_option(index: u32, finish: u32) -> u32 {
    let Some(mut tracker) = Tracker::resume() else {
        return PASS;
    };
    let index = index as usize;
    let (Some(&offset), Some(&length)) =
        (tracker.state.option_offsets.get(index), tracker.state.option_lengths.get(index))
    else {
        return PASS;
    };
    let Some(scratch) = scratch() else {
        return PASS;
    };
    let (start, length) = (usize::from(offset), usize::from(length));
    // Both bounds, separately: the verifier does not relate them.
    if start >= TCP_OPTION_SPACE || length > TCP_OPTION_SPACE {
        return PASS;
    }
    let Some(option) = scratch.options.0.get(start..start + length) else {
        return PASS;
    };
    match tracker.handle(option) {
        Verdict::Pass if finish != 0 => tracker.finish().code(),
        verdict => verdict.code(),
    }
}

/// Which table holds a subflow: what `observe` learned of a packet without MPTCP options, so
/// that [`mptcp_track_finish`] looks in that table only.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Held {
    Nowhere = 0,
    Established = 1,
    HalfOpen = 2,
}

/// Where the subflow of a segment with TCP flags `flags` from `key` is: SUBFLOWS or
/// HALF_OPEN_SUBFLOWS (which a fallback third ACK, without MP_CAPABLE, confirms), the latter first
/// for a handshake segment (see [`Tracker::resume`]).
#[inline(always)]
pub fn held_in(key: &FlowKey, flags: u8) -> Held {
    let syn = flags & tcp_flags::SYN != 0;
    if syn && HALF_OPEN_SUBFLOWS.get_ptr(key).is_some() {
        Held::HalfOpen
    } else if SUBFLOWS.get_ptr(key).is_some() {
        Held::Established
    } else if !syn && HALF_OPEN_SUBFLOWS.get_ptr(key).is_some() {
        Held::HalfOpen
    } else {
        Held::Nowhere
    }
}

/// Per-subflow accounting and the `verified` policy (see [`Tracker::finish`]) for a packet
/// without MPTCP options whose subflow `observe` found in table `held` (a [`Held`]). A global BPF
/// function for the same reason as [`mptcp_track_option`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn mptcp_track_finish(held: u32) -> u32 {
    let held = if held == Held::HalfOpen as u32 { Held::HalfOpen } else { Held::Established };
    match Tracker::resume_from(held) {
        Some(mut tracker) => tracker.finish().code(),
        None => PASS,
    }
}

/// One packet's walk through the tables. The map value pointers stay here, on the stack: the
/// verifier forgets what a pointer is once it is stored in map memory.
pub struct Tracker {
    state: &'static mut PacketState,
    counters: &'static mut PacketCounters,
    /// Null until found or created.
    subflow: *mut Subflow,
    /// Null until looked up.
    connection: *mut Connection,
}

impl Tracker {
    /// Picks up the packet [`start`] prepared in this CPU's scratch memory.
    #[inline(always)]
    fn resume() -> Option<Self> {
        let state = &mut scratch()?.packet;
        let counters = counters(state.hook)?;
        let mut tracker = Self { state, counters, subflow: null_mut(), connection: null_mut() };
        // At most one table holds a subflow: a handshake segment's is most likely half-open.
        let syn = tracker.state.segment.has(tcp_flags::SYN);
        if syn {
            tracker.resume_half_open();
        }
        if tracker.subflow.is_null() {
            tracker.subflow = SUBFLOWS.get_ptr_mut(&tracker.state.key).unwrap_or(null_mut());
        }
        if !syn && tracker.subflow.is_null() {
            tracker.resume_half_open();
        }
        Some(tracker)
    }

    /// As [`Tracker::resume`], looking only in the table `held` says holds the subflow.
    #[inline(always)]
    fn resume_from(held: Held) -> Option<Self> {
        let state = &mut scratch()?.packet;
        let counters = counters(state.hook)?;
        let mut tracker = Self { state, counters, subflow: null_mut(), connection: null_mut() };
        if held == Held::HalfOpen {
            tracker.resume_half_open();
        }
        // Also when another CPU promoted the half-open subflow since `observe` looked.
        if tracker.subflow.is_null() {
            tracker.subflow = SUBFLOWS.get_ptr_mut(&tracker.state.key).unwrap_or(null_mut());
        }
        Some(tracker)
    }

    #[inline(always)]
    fn resume_half_open(&mut self) {
        if let Some(subflow) = HALF_OPEN_SUBFLOWS.get_ptr_mut(&self.state.key) {
            self.subflow = subflow;
            self.establish();
        }
    }

    /// Moves the half-open subflow to SUBFLOWS on the client's ACK after the server answered
    /// (conntrack's SYN_RECV -> ESTABLISHED): only then may it push out established subflows.
    #[inline(always)]
    fn establish(&mut self) {
        let Some(subflow) = self.subflow() else {
            return;
        };
        if !tcp::confirms(self.state.segment.flags)
            || subflow.dir[1].packets == 0
            || !self.sent_by_client(subflow)
        {
            return;
        }
        if promote(&HALF_OPEN_SUBFLOWS, &SUBFLOWS, &self.state.key, subflow).is_err() {
            self.counters().table_errors += 1;
            return;
        }
        self.subflow = SUBFLOWS.get_ptr_mut(&self.state.key).unwrap_or(null_mut());
        self.counters().subflows_established += 1;
    }

    #[inline(always)]
    fn counters(&mut self) -> &mut PacketCounters {
        self.counters
    }

    /// The XDP hook enforces admission; the TC hook only observes.
    fn enforce(&self) -> bool {
        self.state.hook == Direction::Ingress
    }

    /// True when the packet opens a subflow (SYN without ACK).
    fn is_syn(&self) -> bool {
        tcp::opens(self.state.segment.flags)
    }

    fn is_syn_ack(&self) -> bool {
        self.state.segment.has(tcp_flags::SYN) && self.state.segment.has(tcp_flags::ACK)
    }

    /// Whether the packet's sender is the side that opened the subflow.
    #[inline(always)]
    fn sent_by_client(&self, subflow: &Subflow) -> bool {
        self.state.from_a == (subflow.client_is_b == 0)
    }

    /// The packet's subflow, created if `client_sent_it` says who the client is.
    #[inline(always)]
    fn subflow_or_create(&mut self, kind: u8, sender_is_client: bool) -> Option<&'static mut Subflow> {
        if self.subflow.is_null() {
            // A handshake packet's subflow starts half-open; one first met later (the tracker
            // started mid-stream) is taken as established, as conntrack picks up connections.
            let half_open = self.is_syn() || self.is_syn_ack();
            let table = if half_open { &HALF_OPEN_SUBFLOWS } else { &SUBFLOWS };
            if table.insert(&self.state.key, &EMPTY_SUBFLOW, NOEXIST).is_err() {
                self.counters().table_errors += 1;
            }
            self.subflow = table.get_ptr_mut(&self.state.key).unwrap_or(null_mut());
            if half_open {
                self.counters().half_open_subflows_created += 1;
            }
            // SAFETY: null or a map value pointer from a successful lookup.
            let subflow = unsafe { self.subflow.as_mut()? };
            subflow.kind = kind;
            subflow.client_is_b = u8::from(self.state.from_a != sender_is_client);
            subflow.first_seen_ns = now();
            self.counters().subflows_created += 1;
        }
        self.subflow()
    }

    /// Before a SYN opens a subflow: an entry past the handshake belongs to an earlier subflow
    /// on the same 4-tuple (reused after it closed, or first met mid-stream), whose connection,
    /// keys and counts are not the new subflow's. It goes; the SYN creates a fresh one. A
    /// retransmitted SYN finds SYN_SENT or SYN_RECEIVED and keeps its entry.
    #[inline(always)]
    fn reopen(&mut self) {
        if let Some(subflow) = self.subflow()
            && !matches!(subflow.state, subflow_state::SYN_SENT | subflow_state::SYN_RECEIVED)
        {
            // The entry is in one of the two tables.
            let _ = SUBFLOWS.remove(&self.state.key);
            let _ = HALF_OPEN_SUBFLOWS.remove(&self.state.key);
            // Volatile: LLVM would merge the two stores into a byte-wise memset, after which
            // the verifier no longer sees a pointer-or-null in the slots.
            // SAFETY: plain stores to fields of `self`.
            unsafe {
                core::ptr::write_volatile(&mut self.subflow, null_mut());
                core::ptr::write_volatile(&mut self.connection, null_mut());
            }
        }
    }

    #[inline(always)]
    fn subflow(&self) -> Option<&'static mut Subflow> {
        // SAFETY: null or a map value pointer from a successful lookup.
        unsafe { self.subflow.as_mut() }
    }

    /// The connection of the packet's subflow, once its token is known.
    #[inline(always)]
    fn connection(&mut self) -> Option<&'static mut Connection> {
        if self.connection.is_null() {
            let token = self.subflow()?.conn_token;
            if token != 0 {
                match CONNECTIONS.get_ptr_mut(&token) {
                    Some(connection) => self.connection = connection,
                    None => self.counters().connections_missing += 1,
                }
            }
        }
        // SAFETY: null or a map value pointer from a successful lookup.
        unsafe { self.connection.as_mut() }
    }

    /// Parses and handles one MPTCP option.
    #[inline(always)]
    fn handle(&mut self, option: &[u8]) -> Verdict {
        // Dispatch on the subtype, then parse into that subtype's own type: see MptcpOption.
        let result = match subtype_of(option) {
            Some(subtype::MP_CAPABLE) => {
                MpCapable::parse(option).map(|c| self.capable(&c)).map(|()| Verdict::Pass)
            }
            Some(subtype::MP_JOIN) => MpJoin::parse(option).map(|j| self.join(&j)),
            Some(subtype::DSS) => Dss::parse(option).map(|d| self.dss(&d)).map(|()| Verdict::Pass),
            Some(subtype::ADD_ADDR) => {
                AddAddr::parse(option).map(|a| self.add_addr(&a)).map(|()| Verdict::Pass)
            }
            Some(subtype::REMOVE_ADDR) => RemoveAddr::parse(option).map(|r| self.remove_addr(&r)),
            Some(subtype::MP_PRIO) => MpPrio::parse(option).map(|p| self.prio(&p)),
            Some(subtype::MP_FAIL) => MpFail::parse(option).map(|f| self.fail(&f)),
            Some(subtype::MP_FASTCLOSE) => MpFastClose::parse(option).map(|f| self.fastclose(&f)),
            Some(subtype::MP_TCPRST) => MpTcpRst::parse(option).map(|r| self.tcprst(&r)),
            Some(subtype::MP_EXPERIMENTAL) => MpExperimental::parse(option).map(|_| Verdict::Pass),
            Some(_) => return Verdict::Pass,
            None => Err(MptcpError::NotMptcp),
        };
        result.unwrap_or_else(|_| {
            self.counters().malformed += 1;
            Verdict::Pass
        })
    }

    #[inline(always)]
    fn remove_addr(&mut self, remove: &RemoveAddr) -> Verdict {
        if let Some(event) = self.event(event_kind::REMOVE_ADDR) {
            let ids = remove.ids.as_slice();
            let n = ids.len().min(event.addr.len());
            event.count = n as u8;
            if let (Some(dst), Some(src)) = (event.addr.get_mut(..n), ids.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.submit(event);
        }
        Verdict::Pass
    }

    #[inline(always)]
    fn prio(&mut self, prio: &MpPrio) -> Verdict {
        if let Some(subflow) = self.subflow() {
            let from_client = self.sent_by_client(subflow);
            let flags = &mut subflow.dir[usize::from(!from_client)].flags;
            if prio.backup {
                *flags |= direction_flags::BACKUP;
            } else {
                *flags &= !direction_flags::BACKUP;
            }
        }
        if let Some(event) = self.event(event_kind::MP_PRIO) {
            event.flags = if prio.backup { event_flags::BACKUP } else { 0 };
            self.submit(event);
        }
        Verdict::Pass
    }

    #[inline(always)]
    fn fail(&mut self, fail: &MpFail) -> Verdict {
        self.state.saw_fail = true;
        if let Some(event) = self.event(event_kind::MP_FAIL) {
            event.keys[0] = fail.dsn;
            self.submit(event);
        }
        Verdict::Pass
    }

    #[inline(always)]
    fn fastclose(&mut self, fastclose: &MpFastClose) -> Verdict {
        if let Some(connection) = self.connection() {
            connection.flags |= connection_flags::FASTCLOSE;
        }
        if let Some(event) = self.event(event_kind::MP_FASTCLOSE) {
            event.keys[0] = fastclose.receiver_key;
            self.submit(event);
        }
        Verdict::Pass
    }

    #[inline(always)]
    fn tcprst(&mut self, rst: &MpTcpRst) -> Verdict {
        if let Some(connection) = self.connection() {
            connection.flags |= connection_flags::TCPRST;
        }
        if let Some(event) = self.event(event_kind::MP_TCPRST) {
            event.flags = rst.flags;
            event.reason = rst.reason;
            self.submit(event);
        }
        Verdict::Pass
    }

    #[inline(always)]
    fn capable(&mut self, capable: &MpCapable) {
        self.state.saw_capable = true;
        if self.is_syn() {
            self.reopen();
            if let Some(subflow) = self.subflow_or_create(subflow_kind::INITIAL, true) {
                if subflow.state < subflow_state::SYN_SENT {
                    subflow.state = subflow_state::SYN_SENT;
                }
                subflow.dir[0].flags |= direction_flags::MPTCP;
            }
            return;
        }
        let syn_ack = self.is_syn_ack();
        let (server_key, client_key) = match (syn_ack, capable.sender_key, capable.receiver_key) {
            (true, Some(server), _) => (server, None),
            (false, Some(client), Some(server)) => (server, Some(client)),
            _ => return,
        };
        // The SYN-ACK comes from the server, the later packets with both keys from the client.
        let Some(subflow) = self.subflow_or_create(subflow_kind::INITIAL, !syn_ack) else {
            return;
        };
        let sender = usize::from(!self.sent_by_client(subflow));
        subflow.dir[sender].flags |= direction_flags::MPTCP;
        let reached = if syn_ack { subflow_state::SYN_RECEIVED } else { subflow_state::ESTABLISHED };
        if subflow.state < reached {
            subflow.state = reached;
        }
        if self.link_connection(server_key, client_key, capable)
            && let Some(event) = self.event(event_kind::MP_CAPABLE)
        {
            event.keys = [capable.sender_key.unwrap_or(0), capable.receiver_key.unwrap_or(0)];
            self.submit(event);
        }
        // The client's first data may ride on MP_CAPABLE: an implicit mapping of its data
        // sequence space, which starts right after its IDSN, from subflow sequence 1.
        if let Some(data_len) = capable.data_len {
            self.saw_mapping(1, data_len);
        }
        if let (Some(data_len), Some(idsn)) = (capable.data_len, self.connection().map(|c| c.client_idsn)) {
            let mapping = DssMapping {
                dsn: idsn.wrapping_add(1),
                dsn_wide: true,
                subflow_seq: 1,
                data_len,
                checksum: None,
            };
            self.account_mapping(0, &mapping, false);
        }
    }

    /// Records the SYN-ACK's server key as half-open, or creates the connection once the
    /// handshake completed (both keys, from the client), or completes it; true when this packet
    /// taught the connection table a key it did not know. A half-open key is not news for the
    /// agent: every spoofed SYN gets a SYN-ACK, and an event each would flood the ring buffer
    /// the verdicts come through; the key is reported when the handshake completes.
    #[inline(always)]
    fn link_connection(&mut self, server_key: u64, client_key: Option<u64>, capable: &MpCapable) -> bool {
        let Some(subflow) = self.subflow() else {
            return false;
        };
        let mut learned = false;
        if subflow.conn_token == 0 {
            let checksum = capable.flags & mptcp_common::mptcp::capable_flags::CHECKSUM_REQUIRED != 0;
            if client_key.is_none() {
                let no_join = capable.flags & mptcp_common::mptcp::capable_flags::NO_MORE_SUBFLOWS_TO_SOURCE;
                // Only the SYN-ACK: a spoofed SYN gets one too, so nothing enters CONNECTIONS yet.
                let half_open = HalfOpen {
                    server_key,
                    first_seen_ns: now(),
                    version: capable.version,
                    checksum: u8::from(checksum),
                    no_join_to_source: u8::from(no_join != 0),
                    _pad: [0; 5],
                };
                if HALF_OPEN.insert(&self.state.key, &half_open, NOEXIST).is_ok() {
                    self.counters().half_open_created += 1;
                }
                return false;
            }
            let (mut version, mut first_seen_ns) = (capable.version, now());
            let mut checksum = checksum;
            let mut no_join_to_source = false;
            match HALF_OPEN.get_ptr(&self.state.key) {
                Some(half_open) => {
                    // SAFETY: map value pointer from a successful lookup.
                    let half_open = unsafe { &*half_open };
                    if half_open.server_key != server_key {
                        self.counters().half_open_key_mismatch += 1;
                        return false;
                    }
                    version = half_open.version;
                    first_seen_ns = half_open.first_seen_ns;
                    checksum |= half_open.checksum != 0;
                    no_join_to_source = half_open.no_join_to_source != 0;
                }
                // The server's MP_CAPABLE was seen, its key is gone: pushed out by other
                // half-open entries.
                None if subflow.dir[1].flags & direction_flags::MPTCP != 0 => {
                    self.counters().half_open_evicted += 1;
                }
                None => {}
            }
            let mut server = KeyDigest { token: 0, idsn: 0 };
            digest(version, server_key, &mut server);
            if CONNECTIONS.insert(server.token, &EMPTY_CONNECTION, NOEXIST).is_ok() {
                self.counters().connections_created += 1;
                if let Some(connection) = CONNECTIONS.get_ptr_mut(server.token) {
                    // SAFETY: map value pointer from a successful lookup.
                    let connection = unsafe { &mut *connection };
                    connection.server_key = server_key;
                    connection.server_token = server.token;
                    connection.server_idsn = server.idsn;
                    // The server's data sequence space starts right after its IDSN.
                    connection.data_start[1] = server.idsn.wrapping_add(1);
                    connection.mapped_end[1] = connection.data_start[1];
                    connection.flags = connection_flags::SERVER_KEY;
                    if checksum {
                        connection.flags |= connection_flags::CHECKSUM;
                    }
                    if no_join_to_source {
                        connection.flags |= connection_flags::SERVER_NO_JOIN_TO_SOURCE;
                    }
                    connection.version = version;
                    connection.subflows = 1;
                    connection.first_seen_ns = first_seen_ns;
                    learned = true;
                }
            }
            let _ = HALF_OPEN.remove(&self.state.key);
            subflow.conn_token = server.token;
        }
        let Some(connection) = self.connection() else {
            return learned;
        };
        if capable.flags & mptcp_common::mptcp::capable_flags::CHECKSUM_REQUIRED != 0 {
            connection.flags |= connection_flags::CHECKSUM;
        }
        if let Some(client_key) = client_key
            && connection.flags & connection_flags::CLIENT_KEY == 0
        {
            let mut client = KeyDigest { token: 0, idsn: 0 };
            digest(connection.version, client_key, &mut client);
            connection.client_key = client_key;
            connection.client_token = client.token;
            connection.client_idsn = client.idsn;
            // Mappings may arrive out of order across subflows: start from the IDSN, not from
            // whichever mapping shows up first.
            if connection.data_start[0] == 0 {
                connection.data_start[0] = client.idsn.wrapping_add(1);
                connection.mapped_end[0] = connection.data_start[0];
            }
            connection.flags |= connection_flags::CLIENT_KEY;
            if CLIENT_TOKENS.insert(client.token, connection.server_token, 0).is_err() {
                self.counters().table_errors += 1;
            }
            learned = true;
        }
        learned
    }

    #[inline(always)]
    fn join(&mut self, join: &MpJoin) -> Verdict {
        match *join {
            MpJoin::Syn { backup, addr_id, token, nonce } => {
                if !self.is_syn() {
                    return Verdict::Pass;
                }
                let (conn_token, server_initiated) = match CONNECTIONS.get_ptr(token) {
                    Some(_) => (token, false),
                    None => match CLIENT_TOKENS.get_ptr(token) {
                        // SAFETY: map value pointer from a successful lookup.
                        Some(server_token) => (unsafe { *server_token }, true),
                        None => (0, false),
                    },
                };
                if self.enforce() {
                    if self.admit_join(conn_token != 0) == Verdict::Drop {
                        return Verdict::Drop;
                    }
                    self.counters().joins_admitted += 1;
                }
                self.reopen();
                if let Some(subflow) = self.subflow_or_create(subflow_kind::JOIN, true) {
                    if subflow.state < subflow_state::SYN_SENT {
                        subflow.state = subflow_state::SYN_SENT;
                    }
                    subflow.join_token = token;
                    subflow.join_nonce_client = nonce;
                    subflow.server_initiated = u8::from(server_initiated);
                    subflow.dir[0].addr_id = addr_id;
                    subflow.dir[0].flags |=
                        direction_flags::MPTCP | if backup { direction_flags::BACKUP } else { 0 };
                    if subflow.conn_token == 0 && conn_token != 0 {
                        subflow.conn_token = conn_token;
                        if let Some(connection) = self.connection() {
                            connection.subflows += 1;
                        }
                    }
                }
                if let Some(event) = self.event(event_kind::JOIN_SYN) {
                    event.token = token;
                    event.nonce = nonce;
                    event.addr_id = addr_id;
                    event.flags = if backup { event_flags::BACKUP } else { 0 };
                    self.submit(event);
                }
            }
            MpJoin::SynAck { backup, addr_id, truncated_hmac, nonce } => {
                if !self.is_syn_ack() {
                    return Verdict::Pass;
                }
                if let Some(subflow) = self.subflow() {
                    if subflow.state < subflow_state::SYN_RECEIVED {
                        subflow.state = subflow_state::SYN_RECEIVED;
                    }
                    subflow.join_nonce_server = nonce;
                    subflow.join_synack_hmac = truncated_hmac;
                    subflow.dir[1].addr_id = addr_id;
                    subflow.dir[1].flags |=
                        direction_flags::MPTCP | if backup { direction_flags::BACKUP } else { 0 };
                }
                if let Some(event) = self.event(event_kind::JOIN_SYNACK) {
                    event.nonce = nonce;
                    event.addr_id = addr_id;
                    event.flags = if backup { event_flags::BACKUP } else { 0 };
                    if let Some(hmac) = event.hmac.get_mut(..8) {
                        hmac.copy_from_slice(&truncated_hmac.to_be_bytes());
                    }
                    self.submit(event);
                }
            }
            MpJoin::Ack { hmac } => {
                if let Some(subflow) = self.subflow()
                    && subflow.kind == subflow_kind::JOIN
                    && subflow.hmac == hmac_verdict::UNKNOWN
                {
                    subflow.join_ack_hmac = hmac;
                    subflow.hmac = hmac_verdict::PENDING;
                    if subflow.state < subflow_state::ESTABLISHED {
                        subflow.state = subflow_state::ESTABLISHED;
                    }
                    if let Some(event) = self.event(event_kind::JOIN_ACK) {
                        event.hmac = hmac;
                        self.submit(event);
                    }
                }
            }
        }
        Verdict::Pass
    }

    /// Join admission at XDP: the token must be known (unless the policy is `allow`) and the
    /// source within its rate.
    #[inline(always)]
    fn admit_join(&mut self, token_known: bool) -> Verdict {
        let config = config();
        if config.admission != admission::ALLOW && !token_known {
            self.counters().joins_dropped_unknown_token += 1;
            return Verdict::Drop;
        }
        if config.join_rate_per_sec == 0 {
            return Verdict::Pass;
        }
        let source = AddrKey { addr: addr_bytes(self.state.segment.src) };
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        match admit_source(&JOIN_RATE, &source, now, config.join_rate_per_sec, config.join_burst) {
            Ok(true) => Verdict::Pass,
            Ok(false) => {
                self.counters().joins_dropped_rate_limit += 1;
                Verdict::Drop
            }
            // A source whose bucket cannot be stored is not held back.
            Err(_) => {
                self.counters().table_errors += 1;
                Verdict::Pass
            }
        }
    }

    #[inline(always)]
    fn dss(&mut self, dss: &Dss) {
        let Some(subflow) = self
            .subflow_or_create(subflow_kind::UNKNOWN, self.state.segment.sport > self.state.segment.dport)
        else {
            return;
        };
        let from_client = self.sent_by_client(subflow);
        let index = usize::from(!from_client);
        let direction = &mut subflow.dir[index];
        direction.flags |= direction_flags::MPTCP;
        // A repeated 8-byte data ACK (a bulk sender's every segment) changes nothing: the
        // connection already holds at least what this subflow acknowledged, so its lookup is
        // skipped.
        if let Some(ack) = dss.data_ack
            && !(ack.wide && ack.value <= direction.data_ack)
        {
            // This side acknowledges the other side's data. A 4-byte data ACK carries the low
            // bits; the high ones come from the connection's ACKs seen, else from where the
            // other side's data starts.
            let acked_side = usize::from(from_client);
            let connection = self.connection();
            let base = match connection.as_ref() {
                Some(c) => widening_base(c.data_ack[acked_side], c.data_start[acked_side]),
                None => direction.data_ack,
            };
            let value = ack.wide_value(widening_base(base, direction.data_ack));
            if value > direction.data_ack {
                direction.data_ack = value;
            }
            if let Some(connection) = connection {
                let acked = &mut connection.data_ack[acked_side];
                if value > *acked {
                    *acked = value;
                }
            }
        }
        if dss.data_fin {
            direction.flags |= direction_flags::DATA_FIN;
            if let Some(connection) = self.connection() {
                connection.flags |=
                    if from_client { connection_flags::DATA_FIN_C2S } else { connection_flags::DATA_FIN_S2C };
            }
        }
        let Some(mapping) = dss.mapping else {
            return;
        };
        self.saw_mapping(mapping.subflow_seq, mapping.data_len);
        // An infinite mapping maps nothing; `finish` falls back.
        if mapping.is_infinite() {
            return;
        }
        // Every segment a mapping covers repeats it: skip the accounting for the repeats.
        let repeat = direction.ssn_end != 0
            && (mapping.dsn, mapping.subflow_seq, mapping.data_len)
                == (direction.map_dsn, direction.map_ssn, direction.map_len);
        if !repeat {
            self.account_mapping(index, &mapping, dss.data_fin);
        }
    }

    /// Records a mapping the side `index` sent (DSS, or MP_CAPABLE carrying the first data) and
    /// counts its new data and reinjections on the connection. Out of line: a BPF subprogram of
    /// its own keeps LLVM's register use simple enough for the verifier.
    #[inline(never)]
    fn account_mapping(&mut self, index: usize, mapping: &DssMapping, data_fin: bool) {
        let DssMapping { subflow_seq: ssn, data_len, .. } = *mapping;
        let Some(subflow) = self.subflow() else {
            return;
        };
        let Some(direction) = subflow.dir.get_mut(index) else {
            return;
        };
        direction.map_dsn = mapping.dsn;
        direction.map_ssn = ssn;
        direction.map_len = data_len;
        // Every segment a mapping covers repeats it: only a range beyond what this side already
        // mapped on the subflow is new (serial arithmetic, RFC 1982).
        let ssn_end = ssn.wrapping_add(u32::from(data_len));
        let fresh_ssn = ssn_end.wrapping_sub(direction.ssn_end) as i32;
        if fresh_ssn <= 0 && direction.ssn_end != 0 {
            return;
        }
        direction.ssn_end = ssn_end;
        // A 4-byte DSN takes its high bits from what this side mapped before on the connection,
        // which starts right after its IDSN.
        let connection_end = self.connection().and_then(|c| c.mapped_end.get(index).copied()).unwrap_or(0);
        let dsn = mapping.wide_dsn(widening_base(connection_end, direction.dsn_end));
        // The DATA_FIN occupies one data sequence number of the mapping but carries no byte.
        let end = dsn + u64::from(data_len) - u64::from(data_fin);
        let went_back = dsn < direction.dsn_end;
        if end > direction.dsn_end {
            direction.dsn_end = end;
        }
        let Some(connection) = self.connection() else {
            return;
        };
        let (Some(start), Some(mapped_end), Some(mapped_bytes), Some(data_bytes)) = (
            connection.data_start.get_mut(index),
            connection.mapped_end.get_mut(index),
            connection.mapped_bytes.get_mut(index),
            connection.data_bytes.get_mut(index),
        ) else {
            return;
        };
        // A connection seen without its keys starts at its first mapping.
        if *start == 0 {
            *start = dsn;
            *mapped_end = dsn;
        }
        atomic_add(mapped_bytes, end - dsn);
        if end > *mapped_end {
            *mapped_end = end;
            *data_bytes = end - *start;
        }
        if went_back {
            atomic_add(&mut connection.reinjections, 1);
        }
    }

    /// The packet's mapping, for the fallback rule in `finish`.
    #[inline(always)]
    fn saw_mapping(&mut self, ssn: u32, len: u16) {
        self.state.saw_mapping = true;
        self.state.map_ssn = ssn;
        self.state.map_len = len;
    }

    /// Out of line for the same reason as `account_mapping`.
    #[inline(never)]
    fn add_addr(&mut self, add: &AddAddr) {
        if let Some(event) = self.event(event_kind::ADD_ADDR) {
            event.addr_id = add.addr_id;
            event.flags = if add.echo { event_flags::ECHO } else { 0 };
            event.port = add.port.unwrap_or(0);
            match add.addr {
                core::net::IpAddr::V4(v4) => {
                    event.addr = addr_bytes(ipv4_mapped(v4.octets()));
                    event.count = 4;
                }
                core::net::IpAddr::V6(v6) => {
                    event.addr = v6.octets();
                    event.count = 6;
                }
            }
            if let (Some(hmac), Some(slot)) = (add.hmac, event.hmac.get_mut(..8)) {
                slot.copy_from_slice(&hmac.to_be_bytes());
            }
            self.submit(event);
        }
    }

    /// Marks the subflow, and its connection, as fallen back to TCP, once.
    #[inline(always)]
    fn fall_back(&mut self, reason: u8) {
        let Some(subflow) = self.subflow() else {
            return;
        };
        if subflow.fallback != fallback_reason::NONE {
            return;
        }
        subflow.fallback = reason;
        if let Some(connection) = self.connection()
            && falls_back_connection(reason, connection.subflows > 1)
        {
            connection.flags |= connection_flags::FALLBACK;
            if connection.fallback == fallback_reason::NONE {
                connection.fallback = reason;
            }
        }
        if let Some(event) = self.event(event_kind::FALLBACK) {
            event.reason = reason;
            self.submit(event);
        }
    }

    /// After the options: per-subflow accounting, TCP state, the fallback rule, and the
    /// `verified` admission policy.
    #[inline(always)]
    fn finish(&mut self) -> Verdict {
        let Some(subflow) = self.subflow() else {
            return Verdict::Pass;
        };
        let from_client = self.sent_by_client(subflow);
        let direction = &mut subflow.dir[usize::from(!from_client)];
        atomic_add(&mut direction.packets, 1);
        atomic_add(&mut direction.bytes, u64::from(self.state.segment.payload_len));
        if self.state.segment.has(tcp_flags::FIN) {
            direction.flags |= direction_flags::FIN;
            if subflow.state < subflow_state::CLOSING {
                subflow.state = subflow_state::CLOSING;
            }
        }
        if self.state.segment.has(tcp_flags::RST) {
            direction.flags |= direction_flags::RST;
            subflow.state = subflow_state::CLOSED;
        }
        subflow.last_seen_ns = now();
        if subflow.hmac == hmac_verdict::PENDING
            && let Some(verdict) = HMAC_VERDICTS.get_ptr(&self.state.key)
        {
            // SAFETY: map value pointer from a successful lookup.
            subflow.hmac = unsafe { *verdict };
        }

        let segment = &self.state.segment;
        let mapping = self.state.saw_mapping.then_some((self.state.map_ssn, self.state.map_len));
        if subflow.fallback == fallback_reason::NONE
            && !MappingState::unchanged_by(
                direction.map_ssn,
                direction.map_len,
                segment.has(tcp_flags::SYN) || self.state.saw_fail,
                segment.payload_len,
                mapping,
            )
            && let Some(reason) = self.fallback_rule()
        {
            self.fall_back(reason);
        }
        if self.enforce() && subflow.hmac == hmac_verdict::FAILED && config().admission == admission::VERIFIED
        {
            self.counters().packets_dropped_hmac += 1;
            return Verdict::Drop;
        }
        Verdict::Pass
    }

    /// The shared fallback rule on this packet, against the sender's mapping state. Out of line
    /// for the same reason as `account_mapping`.
    #[inline(never)]
    fn fallback_rule(&mut self) -> Option<u8> {
        let subflow = self.subflow()?;
        let from_client = self.sent_by_client(subflow);
        let facts = SegmentFacts {
            syn: self.state.segment.has(tcp_flags::SYN),
            ack: self.state.segment.has(tcp_flags::ACK),
            seq: self.state.segment.seq,
            payload_len: self.state.segment.payload_len,
            initial: subflow.kind == subflow_kind::INITIAL,
            // A subflow met mid-stream: its first data is not in sight.
            established: subflow.kind != subflow_kind::UNKNOWN && subflow.state >= subflow_state::ESTABLISHED,
            mp_capable: self.state.saw_capable,
            mapping: self.state.saw_mapping.then_some((self.state.map_ssn, self.state.map_len)),
            mp_fail: self.state.saw_fail,
        };
        // A branch, not an index from `from_client`: the verifier sees a bool loaded from map
        // memory as any byte.
        let direction = if from_client { &mut subflow.dir[0] } else { &mut subflow.dir[1] };
        let mut mapping = MappingState {
            isn: direction.isn,
            isn_known: direction.flags & direction_flags::ISN_KNOWN != 0,
            map_ssn: direction.map_ssn,
            map_len: direction.map_len,
        };
        let reason = mapping.on_segment(&facts);
        direction.isn = mapping.isn;
        if mapping.isn_known {
            direction.flags |= direction_flags::ISN_KNOWN;
        }
        direction.map_ssn = mapping.map_ssn;
        direction.map_len = mapping.map_len;
        reason
    }

    /// Reserves an event with the packet's addressing filled in and everything else zero;
    /// `None` (counted) when the ring buffer is full.
    #[inline(never)]
    fn event(&mut self, kind: u8) -> Option<&'static mut Event> {
        let Some(entry) = EVENTS.reserve(0) else {
            self.counters().events_dropped += 1;
            return None;
        };
        // The entry is submitted through this pointer (see `submit`); it has no Drop.
        let event: *mut Event = entry.as_ptr().cast_mut().cast();
        // SAFETY: reserved ring buffer memory the size of an Event; an Event is valid when zero,
        // and zeroing goes field-wide so no 120-byte temporary lands on the stack.
        let event = unsafe {
            let words = event.cast::<u64>();
            for i in 0..size_of::<Event>() / 8 {
                words.add(i).write(0);
            }
            &mut *event
        };
        let from_client = self.subflow().map(|subflow| self.sent_by_client(subflow)).unwrap_or(true);
        // SAFETY: helper without arguments.
        event.timestamp_ns = unsafe { bpf_ktime_get_ns() };
        event.kind = kind;
        event.hook = self.state.hook.index() as u8;
        event.from_client = u8::from(from_client);
        event.family = self.state.segment.family;
        event.src = addr_bytes(self.state.segment.src);
        event.dst = addr_bytes(self.state.segment.dst);
        event.sport = self.state.segment.sport;
        event.dport = self.state.segment.dport;
        event.token = self.subflow().map(|subflow| subflow.conn_token).unwrap_or(0);
        Some(event)
    }

    #[inline(always)]
    fn submit(&self, event: &mut Event) {
        // SAFETY: `event` came from `bpf_ringbuf_reserve` in `event` and is submitted once.
        unsafe { aya_ebpf::helpers::generated::bpf_ringbuf_submit((event as *mut Event).cast(), 0) };
    }
}
