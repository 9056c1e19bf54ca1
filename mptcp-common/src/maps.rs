//! Layouts of the maps the eBPF programs and the agent share.
//!
//! Every struct here is `#[repr(C)]` with its size checked at compile time; the programs declare
//! BTF maps of these types, so `bpftool map dump` prints their field names.

use crate::mptcp::subtype;

/// Per-CPU array of [`PacketCounters`], indexed by [`Direction`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// LRU hash [`FlowKey`] -> [`Subflow`].
pub const SUBFLOWS_MAP: &str = "SUBFLOWS";
/// LRU hash server token -> [`Connection`].
pub const CONNECTIONS_MAP: &str = "CONNECTIONS";
/// Hash client token -> server token, to find a connection from a join the server initiates.
pub const CLIENT_TOKENS_MAP: &str = "CLIENT_TOKENS";
/// Ring buffer of [`Event`]s handed up to the agent.
pub const EVENTS_MAP: &str = "EVENTS";
/// Array of one [`DataplaneConfig`], written by the agent.
pub const CONFIG_MAP: &str = "CONFIG";
/// LRU hash source address ([`AddrKey`]) -> [`RateBucket`] for the join rate limit.
pub const JOIN_RATE_MAP: &str = "JOIN_RATE";
/// LRU hash [`FlowKey`] -> [`hmac_verdict`]: the agent's MP_JOIN verdicts. The programs copy a
/// verdict into the subflow on its next packet; the agent never writes the tables the programs
/// update, so no update of theirs is lost.
pub const HMAC_VERDICTS_MAP: &str = "HMAC_VERDICTS";
/// LRU hash server token -> [`ConnectionChecks`], written by the agent only.
pub const CONNECTION_CHECKS_MAP: &str = "CONNECTION_CHECKS";
/// LRU hash [`FlowKey`] -> [`HalfOpen`]: the server key of an MP_CAPABLE SYN-ACK whose third
/// ACK has not been seen. Only completed handshakes enter [`CONNECTIONS_MAP`] and
/// [`CLIENT_TOKENS_MAP`], so a SYN flood evicts only other half-open entries.
pub const HALF_OPEN_MAP: &str = "HALF_OPEN";
/// LRU hash [`FlowKey`] -> [`Subflow`]: subflows whose handshake has not completed (the SYN
/// path inserts only here). The client's ACK of the SYN-ACK moves the entry to
/// [`SUBFLOWS_MAP`].
pub const HALF_OPEN_SUBFLOWS_MAP: &str = "HALF_OPEN_SUBFLOWS";

/// Maps one instance shares across all its interfaces (an MPTCP connection spans interfaces);
/// the agent pins each under its name. [`COUNTERS_MAP`] is per interface.
pub const SHARED_MAP_NAMES: [&str; 14] = [
    SUBFLOWS_MAP,
    HALF_OPEN_SUBFLOWS_MAP,
    HALF_OPEN_MAP,
    CONNECTIONS_MAP,
    CLIENT_TOKENS_MAP,
    EVENTS_MAP,
    CONFIG_MAP,
    JOIN_RATE_MAP,
    HMAC_VERDICTS_MAP,
    CONNECTION_CHECKS_MAP,
    crate::cc::CC_SUBFLOWS_MAP,
    crate::cc::CC_DECISIONS_MAP,
    crate::cc::CC_EVENTS_MAP,
    crate::cc::CC_CONGESTION_MAP,
];

/// Capacities of the tables.
pub const MAX_SUBFLOWS: usize = 65536;
pub const MAX_CONNECTIONS: usize = 16384;
pub const MAX_RATE_SOURCES: usize = 16384;
pub const MAX_HALF_OPEN: usize = 65536;
pub const EVENTS_BYTES: usize = 1 << 20;

/// Which hook saw a packet: the index into [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// XDP, packets arriving on the interface.
    Ingress = 0,
    /// TC (tcx) egress, packets leaving the interface.
    Egress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

counters! {
    /// Packet, option and dataplane counters of one direction on one CPU.
    ///
    /// A packet counts once in `tcp_packets`; each MPTCP option it carries counts once under its
    /// subtype, so a packet with DSS and ADD_ADDR moves both counters.
    pub struct PacketCounters, PACKET_COUNTER_NAMES {
        /// Every TCP segment over IPv4 or IPv6.
        tcp_packets,
        /// TCP segments without any MPTCP option.
        tcp_without_mptcp,
        mp_capable,
        mp_join,
        dss,
        add_addr,
        remove_addr,
        mp_prio,
        mp_fail,
        mp_fastclose,
        mp_tcprst,
        mp_experimental,
        /// MPTCP options with a subtype RFC 8684 leaves unassigned.
        mp_unknown,
        /// Malformed option framing, or an MPTCP option whose length its subtype does not allow.
        malformed,
        /// Subflow and connection entries created.
        subflows_created,
        connections_created,
        /// Table inserts the kernel refused.
        table_errors,
        /// Events lost because the ring buffer was full.
        events_dropped,
        /// MP_JOIN SYNs let through by the admission policy.
        joins_admitted,
        /// MP_JOIN SYNs dropped: their token matches no tracked connection (`known-token`).
        joins_dropped_unknown_token,
        /// MP_JOIN SYNs dropped by the per-source rate limit.
        joins_dropped_rate_limit,
        /// Packets dropped because their subflow failed the HMAC check (`verified`).
        packets_dropped_hmac,
        /// SYN-ACK server keys recorded in HALF_OPEN (handshakes not yet completed).
        half_open_created,
        /// Third ACKs of handshakes whose SYN-ACK was seen but whose HALF_OPEN entry was gone:
        /// evicted by other half-open entries (the connection is still created from the keys).
        half_open_evicted,
        /// Third ACKs whose server key differs from the SYN-ACK's: no connection created.
        half_open_key_mismatch,
        /// Subflow entries created by a SYN or SYN-ACK, in HALF_OPEN_SUBFLOWS.
        half_open_subflows_created,
        /// Subflows moved to SUBFLOWS by the client's ACK of the SYN-ACK.
        subflows_established,
        /// Packets whose subflow names a connection CONNECTIONS no longer holds (evicted).
        connections_missing,
    }
}

/// Option counters only, in [`PACKET_COUNTER_NAMES`] order: what a capture can be compared with.
pub const OPTION_COUNTER_NAMES: &[&str] = {
    let (options, _) = PACKET_COUNTER_NAMES.split_at(14);
    options
};

impl PacketCounters {
    /// The counter of MPTCP options of `subtype`.
    #[inline(always)]
    pub fn subtype_counter(&mut self, subtype: u8) -> &mut u64 {
        match subtype {
            subtype::MP_CAPABLE => &mut self.mp_capable,
            subtype::MP_JOIN => &mut self.mp_join,
            subtype::DSS => &mut self.dss,
            subtype::ADD_ADDR => &mut self.add_addr,
            subtype::REMOVE_ADDR => &mut self.remove_addr,
            subtype::MP_PRIO => &mut self.mp_prio,
            subtype::MP_FAIL => &mut self.mp_fail,
            subtype::MP_FASTCLOSE => &mut self.mp_fastclose,
            subtype::MP_TCPRST => &mut self.mp_tcprst,
            subtype::MP_EXPERIMENTAL => &mut self.mp_experimental,
            _ => &mut self.mp_unknown,
        }
    }
}

/// Both ends of a TCP connection in canonical order, so the two directions of a subflow find the
/// same entry. IPv4 addresses are IPv4-mapped IPv6. Aligned so the programs fill the addresses
/// with two 8-byte stores each.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    pub port_a: u16,
    pub port_b: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<FlowKey>() == 40);

/// A 16-byte address as two native-endian words of its bytes in wire order: how the programs
/// carry addresses (as bytes, LLVM's BPF backend spreads them over 16 stack slots).
pub type AddrWords = [u64; 2];

/// The address bytes of [`AddrWords`].
#[inline(always)]
pub fn addr_bytes(words: AddrWords) -> [u8; 16] {
    // SAFETY: two u64 and sixteen u8 have the same size, and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<AddrWords, [u8; 16]>(words) }
}

/// The [`AddrWords`] of address bytes.
#[inline(always)]
pub fn addr_words(bytes: [u8; 16]) -> AddrWords {
    // SAFETY: as above.
    unsafe { core::mem::transmute::<[u8; 16], AddrWords>(bytes) }
}

/// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address given as its wire bytes.
#[inline(always)]
pub fn ipv4_mapped(v4: [u8; 4]) -> AddrWords {
    let [a, b, c, d] = v4;
    [0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d])]
}

impl FlowKey {
    /// The key of the subflow a packet from (`src`, `sport`) to (`dst`, `dport`) belongs to, and
    /// whether the sender is side a. The order only has to be the same for both directions.
    #[inline(always)]
    pub fn new(family: u8, src: AddrWords, sport: u16, dst: AddrWords, dport: u16) -> (Self, bool) {
        let src_first = (src, sport) <= (dst, dport);
        let (a, port_a, b, port_b) =
            if src_first { (src, sport, dst, dport) } else { (dst, dport, src, sport) };
        let key = Self { addr_a: addr_bytes(a), addr_b: addr_bytes(b), port_a, port_b, family, _pad: [0; 3] };
        (key, src_first)
    }
}

/// An address as a map key (IPv4-mapped for IPv4).
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<AddrKey>() == 16);

/// Subflow kinds.
pub mod subflow_kind {
    /// First seen after its handshake: no MP_CAPABLE or MP_JOIN observed.
    pub const UNKNOWN: u8 = 0;
    /// Opened with MP_CAPABLE.
    pub const INITIAL: u8 = 1;
    /// Opened with MP_JOIN.
    pub const JOIN: u8 = 2;
}

/// Subflow states, in the order they are reached.
pub mod subflow_state {
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECEIVED: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    /// A FIN was seen.
    pub const CLOSING: u8 = 4;
    /// A RST was seen.
    pub const CLOSED: u8 = 5;
}

/// Verdicts of the agent's HMAC checks.
pub mod hmac_verdict {
    /// No HMAC to check (initial subflow) or not all of its inputs seen yet.
    pub const UNKNOWN: u8 = 0;
    /// The join handshake is complete and waits for the agent.
    pub const PENDING: u8 = 1;
    pub const VERIFIED: u8 = 2;
    pub const FAILED: u8 = 3;
}

/// Why a subflow or connection fell back to plain TCP.
pub mod fallback_reason {
    pub const NONE: u8 = 0;
    /// The SYN carried MP_CAPABLE, the SYN-ACK did not.
    pub const NO_MP_CAPABLE_REPLY: u8 = 1;
    /// Data outside any mapping: the first data segment without DSS mapping or MP_CAPABLE
    /// data, or a later one beyond the last mapping (RFC 8684 3.3.1, 3.7).
    pub const OPTIONS_VANISHED: u8 = 2;
    /// A DSS infinite mapping (data-level length 0).
    pub const INFINITE_MAPPING: u8 = 3;
    /// MP_FAIL.
    pub const MP_FAIL: u8 = 4;
}

/// Flags of one direction of a subflow ([`SubflowDirection::flags`]).
pub mod direction_flags {
    pub const FIN: u16 = 1 << 0;
    pub const RST: u16 = 1 << 1;
    pub const DATA_FIN: u16 = 1 << 2;
    /// This side asked for the subflow to be a backup (MP_JOIN or MP_PRIO B flag).
    pub const BACKUP: u16 = 1 << 3;
    /// This side sent MPTCP options on the subflow.
    pub const MPTCP: u16 = 1 << 4;
    /// [`SubflowDirection::isn`] is this side's SYN or SYN-ACK sequence number.
    pub const ISN_KNOWN: u16 = 1 << 5;
}

/// What one side of a subflow sent.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubflowDirection {
    pub packets: u64,
    /// TCP payload bytes.
    pub bytes: u64,
    /// Highest DSS data ACK this side sent.
    pub data_ack: u64,
    /// The last DSS mapping this side sent.
    pub map_dsn: u64,
    pub map_ssn: u32,
    pub map_len: u16,
    /// See [`direction_flags`].
    pub flags: u16,
    /// End (relative subflow sequence) of the highest range this side mapped; tells new
    /// mappings from repeats of one mapping on every segment it covers.
    pub ssn_end: u32,
    /// Address ID this side announced in MP_JOIN.
    pub addr_id: u8,
    pub _pad: [u8; 3],
    /// End of the highest data range this side mapped on the subflow: a scheduler hands each
    /// subflow increasing data sequence numbers, so a mapping below it sends data again.
    pub dsn_end: u64,
    /// This side's initial sequence number: relates segments to mappings' subflow sequence.
    pub isn: u32,
    pub _pad2: [u8; 4],
}

const _: () = assert!(size_of::<SubflowDirection>() == 64);

/// What an MP_CAPABLE SYN-ACK taught, kept until the third ACK completes the handshake.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HalfOpen {
    pub server_key: u64,
    pub first_seen_ns: u64,
    pub version: u8,
    /// The SYN-ACK asked for DSS checksums.
    pub checksum: u8,
    /// The SYN-ACK's C flag: no join to the server's initial address and port.
    pub no_join_to_source: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(size_of::<HalfOpen>() == 24);

/// One TCP subflow, keyed by [`FlowKey`]. The "client" of a subflow is the side that sent its
/// SYN; `dir[0]` is what it sent, `dir[1]` what the other side sent.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subflow {
    /// Server token of the connection, 0 until known: the key into the connection table.
    pub conn_token: u32,
    /// The token an MP_JOIN SYN carried.
    pub join_token: u32,
    /// See [`subflow_kind`].
    pub kind: u8,
    /// See [`subflow_state`].
    pub state: u8,
    /// 0: `addr_a`/`port_a` of the key sent the SYN; 1: `addr_b`/`port_b` did.
    pub client_is_b: u8,
    /// See [`hmac_verdict`].
    pub hmac: u8,
    /// See [`fallback_reason`].
    pub fallback: u8,
    /// The subflow's SYN came from the connection's server (a join towards the client).
    pub server_initiated: u8,
    pub _pad: [u8; 2],
    /// MP_JOIN nonces of the SYN sender and of the SYN-ACK sender.
    pub join_nonce_client: u32,
    pub join_nonce_server: u32,
    /// MP_JOIN SYN-ACK truncated HMAC and third-ACK HMAC, for the agent to verify.
    pub join_synack_hmac: u64,
    pub join_ack_hmac: [u8; 20],
    pub _pad2: [u8; 4],
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub dir: [SubflowDirection; 2],
}

const _: () = assert!(size_of::<Subflow>() == 200);

/// Connection flags ([`Connection::flags`]).
pub mod connection_flags {
    pub const CLIENT_KEY: u32 = 1 << 0;
    pub const SERVER_KEY: u32 = 1 << 1;
    pub const FALLBACK: u32 = 1 << 2;
    pub const DATA_FIN_C2S: u32 = 1 << 3;
    pub const DATA_FIN_S2C: u32 = 1 << 4;
    pub const FASTCLOSE: u32 = 1 << 5;
    pub const TCPRST: u32 = 1 << 6;
    pub const CHECKSUM: u32 = 1 << 7;
    /// The server's MP_CAPABLE SYN-ACK set the C flag: clients must not join its initial
    /// address and port (`net.mptcp.allow_join_initial_addr_port = 0` on Linux).
    pub const SERVER_NO_JOIN_TO_SOURCE: u32 = 1 << 8;
}

/// One MPTCP connection, keyed by the server's token. Direction index 0 is client to server.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connection {
    pub client_key: u64,
    pub server_key: u64,
    pub client_idsn: u64,
    pub server_idsn: u64,
    pub client_token: u32,
    pub server_token: u32,
    /// See [`connection_flags`].
    pub flags: u32,
    /// Subflows linked to the connection, the initial one included.
    pub subflows: u32,
    /// Data bytes per direction: the span of the data sequence space mapped so far.
    pub data_bytes: [u64; 2],
    /// Highest data ACK per direction of the data acknowledged (index 0: the client's data).
    pub data_ack: [u64; 2],
    /// Where each direction's data sequence space starts (after the IDSN) and how far it was
    /// mapped (a DATA_FIN excluded).
    pub data_start: [u64; 2],
    pub mapped_end: [u64; 2],
    /// Bytes mapped per direction, every subflow's new ranges summed: what exceeds
    /// `data_bytes` was sent more than once.
    pub mapped_bytes: [u64; 2],
    /// Mappings that went back in data sequence on their subflow: data sent again.
    pub reinjections: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub version: u8,
    /// Reason of the first fallback (see [`fallback_reason`]).
    pub fallback: u8,
    pub _pad: [u8; 6],
}

const _: () = assert!(size_of::<Connection>() == 160);

/// What the agent checked of a connection, with its own SHA-256 and HMAC code.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionChecks {
    /// Keys whose token and IDSN the agent recomputed: matching and differing from the programs'.
    pub keys_matched: u32,
    pub keys_mismatched: u32,
    pub add_addr_verified: u32,
    pub add_addr_failed: u32,
}

const _: () = assert!(size_of::<ConnectionChecks>() == 16);

/// Kinds of [`Event`]s.
pub mod event_kind {
    /// MP_CAPABLE with keys: `keys` = [sender's, receiver's] (receiver's 0 on a SYN-ACK).
    pub const MP_CAPABLE: u8 = 1;
    /// MP_JOIN SYN: `token`, `nonce`, `addr_id`, `flags` bit 0 backup.
    pub const JOIN_SYN: u8 = 2;
    /// MP_JOIN SYN-ACK: `hmac[..8]` truncated HMAC, `nonce`, `addr_id`, backup.
    pub const JOIN_SYNACK: u8 = 3;
    /// MP_JOIN third ACK: `hmac`; the subflow is ready for the agent's check.
    pub const JOIN_ACK: u8 = 4;
    /// ADD_ADDR: `addr`, `port` (0: none), `addr_id`, `hmac[..8]`, `flags` bit 1 echo.
    pub const ADD_ADDR: u8 = 5;
    /// REMOVE_ADDR: `count` IDs in `addr`.
    pub const REMOVE_ADDR: u8 = 6;
    /// MP_PRIO: `flags` bit 0 backup.
    pub const MP_PRIO: u8 = 7;
    /// MP_FAIL: `keys[0]` the DSN.
    pub const MP_FAIL: u8 = 8;
    /// MP_FASTCLOSE: `keys[0]` the receiver's key.
    pub const MP_FASTCLOSE: u8 = 9;
    /// MP_TCPRST: `reason`, `flags` the four flag bits.
    pub const MP_TCPRST: u8 = 10;
    /// The subflow fell back: `reason` (see [`super::fallback_reason`]).
    pub const FALLBACK: u8 = 11;
}

/// Event flag bits.
pub mod event_flags {
    pub const BACKUP: u8 = 1 << 0;
    pub const ECHO: u8 = 1 << 1;
}

/// A handshake or signalling event, with the packet's 4-tuple as sent.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    pub timestamp_ns: u64,
    /// See [`event_kind`].
    pub kind: u8,
    /// [`Direction`] index of the hook that saw the packet.
    pub hook: u8,
    /// The packet came from the side that opened the subflow.
    pub from_client: u8,
    /// See [`event_flags`].
    pub flags: u8,
    pub addr_id: u8,
    pub reason: u8,
    /// 4 or 6.
    pub family: u8,
    pub count: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub token: u32,
    pub nonce: u32,
    pub port: u16,
    pub _pad: [u8; 2],
    pub keys: [u64; 2],
    pub hmac: [u8; 20],
    pub _pad2: [u8; 4],
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<Event>() == 120);

/// Join admission policies ([`DataplaneConfig::admission`]).
pub mod admission {
    /// Observe only.
    pub const ALLOW: u32 = 0;
    /// Drop MP_JOIN SYNs whose token matches no tracked connection.
    pub const KNOWN_TOKEN: u32 = 1;
    /// As `KNOWN_TOKEN`, and drop every packet of a subflow that failed its HMAC check.
    pub const VERIFIED: u32 = 2;
}

/// What the agent tells the programs; one entry in [`CONFIG_MAP`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// See [`admission`].
    pub admission: u32,
    /// MP_JOIN SYNs per second allowed from one source address; 0: no limit.
    pub join_rate_per_sec: u32,
    /// Burst size of the join rate limit.
    pub join_burst: u32,
    /// Coupled congestion control ([`crate::cc::algorithm`]): other than none, the sock_ops
    /// program runs each MPTCP subflow on Reno, which the coupled window then caps.
    pub cc_algorithm: u32,
}

/// A token bucket of the join rate limit.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateBucket {
    /// Tokens available, in thousandths of a join.
    pub millitokens: u64,
    pub last_ns: u64,
}

impl RateBucket {
    /// Millitokens one join takes.
    pub const JOIN: u64 = 1000;

    /// The bucket's capacity in millitokens: `burst` joins, at least one.
    #[inline(always)]
    pub fn capacity(burst: u32) -> u64 {
        // Cannot wrap: under 2^42. Not a checked multiply, which the BPF target lowers to a
        // 128-bit library call it does not have.
        u64::from(burst.max(1)).wrapping_mul(Self::JOIN)
    }

    /// The bucket of a source's first join at `now_ns`: full, less that join.
    #[inline(always)]
    pub fn first_join(now_ns: u64, burst: u32) -> Self {
        Self { millitokens: Self::capacity(burst).saturating_sub(Self::JOIN), last_ns: now_ns }
    }

    /// Refills the bucket for the whole milliseconds since it was last refilled, at
    /// `rate_per_sec` joins per second (= millitokens per millisecond) up to `burst` joins, then
    /// takes one join from it. False, with nothing taken, when less than one join is left.
    #[inline(always)]
    pub fn admit(&mut self, now_ns: u64, rate_per_sec: u32, burst: u32) -> bool {
        // Capped at 2^32 - 1 ms (49 days), so that the product cannot wrap (see `capacity`).
        let elapsed_ms = (now_ns.saturating_sub(self.last_ns) / 1_000_000).min(u64::from(u32::MAX));
        let refill = elapsed_ms.wrapping_mul(u64::from(rate_per_sec));
        let tokens = self.millitokens.saturating_add(refill).min(Self::capacity(burst));
        // The part of a millisecond not refilled yet stays owed: the stamp only moves on a refill.
        if refill > 0 {
            self.last_ns = now_ns;
        }
        match tokens.checked_sub(Self::JOIN) {
            Some(left) => {
                self.millitokens = left;
                true
            }
            None => {
                self.millitokens = tokens;
                false
            }
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers, no padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::PacketCounters {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::Subflow {}
    unsafe impl aya::Pod for super::Connection {}
    unsafe impl aya::Pod for super::HalfOpen {}
    unsafe impl aya::Pod for super::ConnectionChecks {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::DataplaneConfig {}
    unsafe impl aya::Pod for super::RateBucket {}
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_declaration_order() {
        let mut counters = PacketCounters::default();
        for (i, subtype) in (0u8..16).enumerate() {
            *counters.subtype_counter(subtype) += i as u64 + 1;
        }
        let values = counters.values();
        assert_eq!(values[PACKET_COUNTER_NAMES.iter().position(|n| *n == "dss").unwrap()], 3);
        assert_eq!(values[PACKET_COUNTER_NAMES.iter().position(|n| *n == "mp_experimental").unwrap()], 16);
        // Subtypes 9..=14 are unassigned.
        assert_eq!(counters.mp_unknown, (10..=15).sum::<u64>());
        let mut sum = counters;
        sum.accumulate(&counters);
        assert_eq!(sum.values().map(|v| v / 2), counters.values());
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_first_join_leaves_the_rest_of_the_burst() {
        assert_eq!(RateBucket::first_join(7, 3), RateBucket { millitokens: 2000, last_ns: 7 });
        // A burst of 0 still lets one join through.
        assert_eq!(RateBucket::first_join(7, 0).millitokens, 0);
    }

    #[test]
    fn an_empty_bucket_drops_until_refilled() {
        // One join per second, burst 1: the first join empties the bucket.
        let mut bucket = RateBucket::first_join(0, 1);
        assert!(!bucket.admit(500 * MS, 1, 1));
        assert_eq!(bucket.millitokens, 500);
        assert_eq!(bucket.last_ns, 500 * MS);
        assert!(!bucket.admit(999 * MS, 1, 1));
        assert!(bucket.admit(1000 * MS, 1, 1));
        assert_eq!(bucket.millitokens, 0);
    }

    #[test]
    fn refill_counts_whole_milliseconds_only() {
        let mut bucket = RateBucket { millitokens: 0, last_ns: 0 };
        // 10 joins/s = 10 millitokens per ms; under a millisecond nothing is refilled and the
        // stamp stays, so the fraction is not lost.
        assert!(!bucket.admit(MS - 1, 10, 5));
        assert_eq!(bucket, RateBucket { millitokens: 0, last_ns: 0 });
        assert!(!bucket.admit(99 * MS + MS / 2, 10, 5));
        assert_eq!(bucket.millitokens, 990);
        assert!(bucket.admit(100 * MS + MS / 2, 10, 5));
        assert_eq!(bucket.millitokens, 0);
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let mut bucket = RateBucket::first_join(0, 3);
        // An hour idle refills three joins, no more.
        assert!(bucket.admit(3_600_000 * MS, 100, 3));
        assert_eq!(bucket.millitokens, 2000);
        assert!(bucket.admit(3_600_000 * MS, 100, 3));
        assert!(bucket.admit(3_600_000 * MS, 100, 3));
        assert!(!bucket.admit(3_600_000 * MS, 100, 3));
    }

    #[test]
    fn time_going_backwards_or_huge_rates_do_not_overflow() {
        let mut bucket = RateBucket { millitokens: u64::MAX - 1, last_ns: u64::MAX };
        assert!(bucket.admit(0, u32::MAX, u32::MAX));
        let mut bucket = RateBucket { millitokens: 0, last_ns: 0 };
        assert!(bucket.admit(u64::MAX, u32::MAX, u32::MAX));
        assert_eq!(bucket.millitokens, RateBucket::capacity(u32::MAX) - 1000);
    }
}
