//! The token-steering load balancer: map layouts shared by its XDP program and the agent, the
//! flow hash and the Maglev lookup table's shape.
//!
//! New flows (plain TCP SYN, MP_CAPABLE SYN) pick a backend through a Maglev table; a flow then
//! follows the half-open table until the client confirms it (its first ACK), then the flow
//! table; an MPTCP connection is also indexed by the server's token, which the program computes
//! from the MP_CAPABLE third ACK that confirms the flow, so every MP_JOIN SYN (which carries that
//! token) reaches the backend that owns the connection.

use crate::maps::FlowKey;

/// VIPs, backends and Maglev table size (a prime, as Maglev needs).
pub const MAX_VIPS: usize = 8;
pub const MAX_BACKENDS: usize = 64;
pub const MAGLEV_SIZE: usize = 65537;
pub const MAX_LB_FLOWS: usize = 131072;
/// Flows between their SYN and the client's first ACK: what a SYN flood fills.
pub const MAX_LB_HALF_OPEN: usize = 65536;
pub const MAX_LB_TOKENS: usize = 65536;
/// A Maglev slot with no backend.
pub const NO_BACKEND: u32 = u32::MAX;

pub const LB_VIPS_MAP: &str = "LB_VIPS";
pub const LB_BACKENDS_MAP: &str = "LB_BACKENDS";
pub const LB_MAGLEV_MAP: &str = "LB_MAGLEV";
pub const LB_FLOWS_MAP: &str = "LB_FLOWS";
pub const LB_HALF_OPEN_MAP: &str = "LB_HALF_OPEN";
pub const LB_TOKENS_MAP: &str = "LB_TOKENS";
pub const LB_COUNTERS_MAP: &str = "LB_COUNTERS";
pub const LB_BACKEND_COUNTERS_MAP: &str = "LB_BACKEND_COUNTERS";

/// Every map of a balancer; the agent pins each under its name.
pub const LB_MAP_NAMES: [&str; 8] = [
    LB_VIPS_MAP,
    LB_BACKENDS_MAP,
    LB_MAGLEV_MAP,
    LB_FLOWS_MAP,
    LB_HALF_OPEN_MAP,
    LB_TOKENS_MAP,
    LB_COUNTERS_MAP,
    LB_BACKEND_COUNTERS_MAP,
];

/// A virtual service: address (IPv4-mapped for IPv4) and TCP port.
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 5],
}

const _: () = assert!(size_of::<VipKey>() == 24);

/// How a VIP steers MP_JOIN SYNs.
pub mod steering {
    /// By the token in the join: to the backend that owns the connection.
    pub const TOKEN: u32 = 0;
    /// By the 5-tuple like every other SYN: what L4 balancers do, the baseline.
    pub const HASH_ONLY: u32 = 1;
}

/// A VIP's settings.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vip {
    /// Which slice of the Maglev map is this VIP's (0..MAX_VIPS).
    pub index: u32,
    /// See [`steering`].
    pub steering: u32,
}

const _: () = assert!(size_of::<Vip>() == 8);

/// Backend states.
pub mod backend_state {
    pub const UNUSED: u32 = 0;
    /// Gets new flows.
    pub const ACTIVE: u32 = 1;
    /// Keeps its flows and MPTCP connections (joins still reach it), gets no new flow.
    pub const DRAINING: u32 = 2;
}

/// A backend slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backend {
    /// The interface towards the backend, and the MAC addresses to rewrite to (direct server
    /// return at L2: the IP packet is left alone).
    pub ifindex: u32,
    /// See [`backend_state`].
    pub state: u32,
    /// Bit i set: the backend serves VIP slot i.
    pub vip_mask: u32,
    /// Maglev weight (entries per round).
    pub weight: u32,
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub _pad: [u8; 4],
    /// The backend's name (NUL-padded): Maglev permutes by it, so it must stay stable.
    pub name: [u8; 16],
    /// The backend's address (IPv4-mapped for IPv4), for operators.
    pub addr: [u8; 16],
}

const _: () = assert!(size_of::<Backend>() == 64);

/// What kind of flow a flow-table entry is.
pub mod flow_kind {
    pub const PLAIN: u32 = 0;
    /// Opened with MP_CAPABLE: its token is learned from the third ACK.
    pub const INITIAL: u32 = 1;
    pub const JOIN: u32 = 2;
}

/// A flow pinned to a backend: in the half-open table from its SYN, in the flow table once the
/// client confirmed it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbFlow {
    pub backend: u32,
    /// See [`flow_kind`].
    pub kind: u32,
    /// The token of an initial subflow was learned, from the ACK that confirmed it.
    pub token_learned: u32,
    pub _pad: u32,
    pub packets: u64,
}

const _: () = assert!(size_of::<LbFlow>() == 24);

counters! {
    /// The balancer's counters on one CPU.
    pub struct LbCounters, LB_COUNTER_NAMES {
        packets,
        /// Packets not for a VIP, handed to the stack.
        not_vip,
        forwarded,
        /// New flows placed by the Maglev table (plain TCP and MP_CAPABLE SYNs; a retransmitted
        /// SYN keeps its placement).
        flows_hashed,
        /// MP_JOIN SYNs sent to the backend owning their token.
        joins_steered_by_token,
        /// MP_JOIN SYNs whose token is not known here: hashed like any SYN.
        joins_unknown_token,
        /// MP_JOIN SYNs hashed because the VIP steers by hash only.
        joins_hashed,
        /// Server tokens learned from MP_CAPABLE third ACKs, each when it confirmed its flow.
        tokens_learned,
        /// Packets for a VIP without any active backend: dropped.
        no_backend,
        /// SYNs (initial, join, plain) recorded in the half-open table.
        half_open_created,
        /// Half-open flows the client confirmed, moved to the flow table: the only way in.
        half_open_promoted,
        /// Third ACKs (MP_CAPABLE with the server's key, or MP_JOIN) neither table holds: their
        /// SYN was pushed out of the half-open table by other SYNs, never seen, or never sent
        /// (forged). No token is learned from them.
        half_open_missing,
        /// Packets of flows neither table holds (met mid-stream, pushed out, or forged): sent by
        /// the Maglev table and recorded nowhere, so they evict nothing.
        midstream_hashed,
        /// Inserts into the half-open, flow or token table that failed.
        table_errors,
    }
}

counters! {
    /// Flows one backend got, on one CPU.
    pub struct BackendCounters, BACKEND_COUNTER_NAMES {
        /// Plain TCP flows.
        plain_flows,
        /// MPTCP connections (MP_CAPABLE SYNs).
        connections,
        /// MPTCP subflows joined (MP_JOIN SYNs).
        subflows,
        packets,
    }
}

/// The Maglev slot of a flow in its VIP's table (the flow hash modulo the table size).
#[inline(always)]
pub fn maglev_slot(key: &FlowKey) -> u32 {
    let hash = flow_hash(key);
    hash.checked_rem(MAGLEV_SIZE as u64).unwrap_or(0) as u32
}

/// A hash of a flow's key (both directions alike): 64-bit words mixed by multiply-xorshift.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u64 {
    let a = crate::maps::addr_words(key.addr_a);
    let b = crate::maps::addr_words(key.addr_b);
    let ports = (u64::from(key.port_a) << 16) | u64::from(key.port_b);
    let mut hash = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(key.family);
    for word in [a[0], a[1], b[0], b[1], ports] {
        hash = (hash ^ word).wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
    }
    hash
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers, no padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::Vip {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::LbFlow {}
    unsafe impl aya::Pod for super::LbCounters {}
    unsafe impl aya::Pod for super::BackendCounters {}
}
