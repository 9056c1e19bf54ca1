//! The tracker's BTF maps, shared by its programs and with the agent; layouts live in
//! mptcp-common.

use aya_ebpf::{
    btf_maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use mptcp_common::maps::{
    AddrKey, Connection, ConnectionChecks, DataplaneConfig, Direction, EVENTS_BYTES, Event, FlowKey,
    HalfOpen, MAX_CONNECTIONS, MAX_HALF_OPEN, MAX_RATE_SOURCES, MAX_SUBFLOWS, PacketCounters, RateBucket,
    Subflow,
};

use mptcp_common::cc::{CC_EVENTS_BYTES, CcCongestion, CcDecision, CcEvent, CcSubflow, MAX_CC_SUBFLOWS};

use crate::state::Scratch;

/// Per-direction counters ([`mptcp_common::maps::COUNTERS_MAP`]).
#[btf_map]
pub static COUNTERS: PerCpuArray<PacketCounters, 2> = PerCpuArray::new();

/// Subflows whose handshake completed; the SYN path never inserts here.
#[btf_map]
pub static SUBFLOWS: LruHashMap<FlowKey, Subflow, MAX_SUBFLOWS> = LruHashMap::new();

/// Subflows between SYN and the client's ACK of the SYN-ACK: what a SYN flood fills.
#[btf_map]
pub static HALF_OPEN_SUBFLOWS: LruHashMap<FlowKey, Subflow, MAX_HALF_OPEN> = LruHashMap::new();

/// MP_CAPABLE SYN-ACK server keys until the third ACK; CONNECTIONS holds completed handshakes.
#[btf_map]
pub static HALF_OPEN: LruHashMap<FlowKey, HalfOpen, MAX_HALF_OPEN> = LruHashMap::new();

/// Connections by server token.
#[btf_map]
pub static CONNECTIONS: LruHashMap<u32, Connection, MAX_CONNECTIONS> = LruHashMap::new();

/// Client token -> server token.
#[btf_map]
pub static CLIENT_TOKENS: LruHashMap<u32, u32, MAX_CONNECTIONS> = LruHashMap::new();

#[btf_map]
pub static EVENTS: RingBuf<Event, EVENTS_BYTES> = RingBuf::new();

#[btf_map]
pub static CONFIG: Array<DataplaneConfig, 1> = Array::new();

#[btf_map]
pub static HMAC_VERDICTS: LruHashMap<FlowKey, u8, MAX_SUBFLOWS> = LruHashMap::new();

#[btf_map]
pub static CONNECTION_CHECKS: LruHashMap<u32, ConnectionChecks, MAX_CONNECTIONS> = LruHashMap::new();

#[btf_map]
pub static JOIN_RATE: LruHashMap<AddrKey, RateBucket, MAX_RATE_SOURCES> = LruHashMap::new();

#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Scratch space for the SHA-256 message schedule of a key digest.
#[btf_map]
pub static DIGEST_SCHEDULE: PerCpuArray<[u32; 16], 1> = PerCpuArray::new();

/// Coupled congestion control: what the sock_ops program sees per subflow, and the agent's
/// decisions (see mptcp_common::cc).
#[btf_map]
pub static CC_SUBFLOWS: LruHashMap<FlowKey, CcSubflow, MAX_CC_SUBFLOWS> = LruHashMap::new();

#[btf_map]
pub static CC_DECISIONS: LruHashMap<FlowKey, CcDecision, MAX_CC_SUBFLOWS> = LruHashMap::new();

/// Each connection's latest congestion event, by token. An entry outlives its connection
/// until the LRU needs the room: the closing subflow cannot tell whether it is the last.
#[btf_map]
pub static CC_CONGESTION: LruHashMap<u32, CcCongestion, MAX_CC_SUBFLOWS> = LruHashMap::new();

/// Changes of CC_SUBFLOWS for the controller, so that it never reads the table on a timer.
#[btf_map]
pub static CC_EVENTS: RingBuf<CcEvent, CC_EVENTS_BYTES> = RingBuf::new();

/// This CPU's counters of `direction`.
#[inline(always)]
pub fn counters(direction: Direction) -> Option<&'static mut PacketCounters> {
    // SAFETY: a per-CPU slot is only touched by the program running on this CPU, and programs
    // are not preempted by one another on it, so the reference is exclusive while it lives.
    COUNTERS.get_ptr_mut(direction.index()).map(|ptr| unsafe { &mut *ptr })
}

/// This CPU's scratch memory.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: as for `counters`; one packet at a time uses a CPU's scratch memory.
    SCRATCH.get_ptr_mut(0).map(|ptr| unsafe { &mut *ptr })
}

/// The agent's configuration (all zero, i.e. observe only, until it writes one).
#[inline(always)]
pub fn config() -> DataplaneConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}
