//! The token-steering load balancer: map layouts shared by its XDP program and the agent, the
//! flow hash and the Maglev lookup table's shape.
//!
//! New flows (plain TCP SYN, MP_CAPABLE SYN) pick a backend through a Maglev table; a flow then
//! follows the half-open table until the client confirms it (its first ACK), then the flow
//! table; an MPTCP connection is also indexed by the server's token, which the program computes
//! from the MP_CAPABLE third ACK that confirms the flow, so every MP_JOIN SYN (which carries that
//! token) reaches the backend that owns the connection.

use crate::maps::{AddrKey, FlowKey};

/// VIPs, backends and Maglev table size (a prime, as Maglev needs).
pub const MAX_VIPS: usize = 8;
pub const MAX_BACKENDS: usize = 64;
pub const MAGLEV_SIZE: usize = 65537;
pub const MAX_LB_FLOWS: usize = 131072;
/// Flows between their SYN and the client's first ACK: what a SYN flood fills.
pub const MAX_LB_HALF_OPEN: usize = 65536;
pub const MAX_LB_TOKENS: usize = 65536;
/// Join addresses: one IPv4 and one IPv6 per backend.
pub const MAX_JOIN_ADDRS: usize = 2 * MAX_BACKENDS;
/// Sources whose token learning is rate-limited at once (least recently seen pushed out).
pub const MAX_LEARN_SOURCES: usize = 16384;
/// Tokens refused for a second backend, kept for operators.
pub const MAX_LB_COLLISIONS: usize = 1024;
/// Tokens that MP_JOIN SYNs named before this instance knew them.
pub const MAX_UNKNOWN_TOKENS: usize = 16384;
/// The ring of what this instance learned, for the sync daemon to send to its peers.
pub const LB_SYNC_EVENTS_BYTES: usize = 1 << 18;
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
pub const LB_SETTINGS_MAP: &str = "LB_SETTINGS";
pub const LB_JOIN_ADDRS_MAP: &str = "LB_JOIN_ADDRS";
pub const LB_COLLISIONS_MAP: &str = "LB_COLLISIONS";
pub const LB_LEARN_RATE_MAP: &str = "LB_LEARN_RATE";
pub const LB_UNKNOWN_TOKENS_MAP: &str = "LB_UNKNOWN_TOKENS";
pub const LB_SYNC_EVENTS_MAP: &str = "LB_SYNC_EVENTS";

/// Every map of a balancer; the agent pins each under its name.
pub const LB_MAP_NAMES: [&str; 14] = [
    LB_VIPS_MAP,
    LB_BACKENDS_MAP,
    LB_MAGLEV_MAP,
    LB_FLOWS_MAP,
    LB_HALF_OPEN_MAP,
    LB_TOKENS_MAP,
    LB_COUNTERS_MAP,
    LB_BACKEND_COUNTERS_MAP,
    LB_SETTINGS_MAP,
    LB_JOIN_ADDRS_MAP,
    LB_COLLISIONS_MAP,
    LB_LEARN_RATE_MAP,
    LB_UNKNOWN_TOKENS_MAP,
    LB_SYNC_EVENTS_MAP,
];

/// The address map key of a join address (IPv4-mapped for IPv4): every TCP packet to it goes
/// to its backend, whatever the port.
pub type JoinAddrKey = AddrKey;

/// What a join SYN naming a token this instance does not know gets.
pub mod unknown_token {
    /// Placed by the Maglev table like any SYN (and refused by a backend that does not own it).
    pub const HASH: u32 = 0;
    /// Its first SYN dropped, so that the client's retransmission (a second later) finds the
    /// token synced from a peer; a SYN naming a token already deferred is hashed.
    pub const RETRY_ONCE: u32 = 1;
}

/// Settings of the running balancer (one entry), from `lb.toml`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbSettings {
    /// Tokens learned per second from one source (an IPv4 address, an IPv6 /64); 0: no limit.
    pub learn_rate: u32,
    pub learn_burst: u32,
    /// See [`unknown_token`].
    pub unknown_token: u32,
    /// 1: what the instance learns goes to the sync ring for its peers.
    pub sync: u32,
}

const _: () = assert!(size_of::<LbSettings>() == 16);

/// Where a token entry came from.
pub mod token_origin {
    /// This instance computed it from a third ACK.
    pub const LEARNED: u32 = 0;
    /// A peer instance sent it.
    pub const SYNCED: u32 = 1;
}

/// A server token's owner.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbToken {
    pub backend: u32,
    /// See [`token_origin`].
    pub origin: u32,
    /// CLOCK_MONOTONIC when this instance stored it.
    pub stored_ns: u64,
}

const _: () = assert!(size_of::<LbToken>() == 16);

/// A token refused for a second backend while a live entry gave it to another.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbCollision {
    /// The backend slot that keeps the token.
    pub kept: u32,
    /// The backend slot last refused.
    pub refused: u32,
    /// [`token_origin`] of the refused learn.
    pub refused_origin: u32,
    /// Refusals of this token.
    pub count: u32,
    pub last_ns: u64,
}

const _: () = assert!(size_of::<LbCollision>() == 24);

/// What learning a token for a backend does to the token table: one rule for the program's own
/// learns and the sync daemon's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLearn {
    /// No entry: stored.
    Store,
    /// An entry for the same backend: refreshed.
    Refresh,
    /// An entry for a backend slot no longer in use: replaced.
    Replace,
    /// An entry for another live backend: kept, the learn refused and reported. A learn never
    /// moves a live token (a forged third ACK whose key hashes to a victim's token cannot
    /// steal its joins); the cost is that a stale entry wins over a new connection that drew
    /// the same token, until the LRU pushes it out.
    Collision,
}

/// The rule: `existing` is the entry's backend slot and whether that slot is still in use.
#[inline(always)]
pub fn token_learn(existing: Option<(u32, bool)>, backend: u32) -> TokenLearn {
    match existing {
        None => TokenLearn::Store,
        Some((owner, _)) if owner == backend => TokenLearn::Refresh,
        Some((_, false)) => TokenLearn::Replace,
        Some(_) => TokenLearn::Collision,
    }
}

/// What a sync event carries.
pub mod sync_kind {
    /// A token learned here: `token` -> `backend`.
    pub const TOKEN: u32 = 1;
    /// A flow confirmed here: `flow` -> `backend`, of `flow_kind`.
    pub const FLOW: u32 = 2;
}

/// One thing this instance learned, for its peers (the sync ring's records).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbSyncEvent {
    /// See [`sync_kind`].
    pub kind: u32,
    pub backend: u32,
    pub token: u32,
    /// The flow's [`flow_kind`].
    pub flow_kind: u32,
    /// CLOCK_MONOTONIC when it was learned: the sync latency's start.
    pub learned_ns: u64,
    pub flow: FlowKey,
}

const _: () = assert!(size_of::<LbSyncEvent>() == 64);

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
        /// Server tokens learned from MP_CAPABLE third ACKs, each when it confirmed its flow (a
        /// token learned again for the same backend is not counted).
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
        /// Packets to a backend's join address, forwarded to it from the configuration alone.
        join_address_packets,
        /// MP_JOIN SYNs among them.
        join_address_joins,
        /// Learns refused because a live entry gives the token to another backend.
        token_collisions,
        /// Learns refused by the per-source learning rate.
        learn_rate_limited,
        /// Join SYNs with an unknown token dropped once, for the retransmission to find it.
        joins_deferred,
        /// Sync events lost because the ring was full (no sync daemon, or a slow one).
        sync_events_lost,
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
    unsafe impl aya::Pod for super::LbSettings {}
    unsafe impl aya::Pod for super::LbToken {}
    unsafe impl aya::Pod for super::LbCollision {}
    unsafe impl aya::Pod for super::LbSyncEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learn_never_moves_a_live_token() {
        assert_eq!(token_learn(None, 3), TokenLearn::Store);
        assert_eq!(token_learn(Some((3, true)), 3), TokenLearn::Refresh);
        assert_eq!(token_learn(Some((1, true)), 3), TokenLearn::Collision);
        assert_eq!(token_learn(Some((1, false)), 3), TokenLearn::Replace);
    }
}
