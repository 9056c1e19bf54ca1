//! The BTF maps the programs share with each other and the agent; layouts live in mptcp-common.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use mptcp_common::maps::{
    AddrKey, Connection, ConnectionChecks, DataplaneConfig, Direction, EVENTS_BYTES, Event, FlowKey,
    MAX_CONNECTIONS, MAX_RATE_SOURCES, MAX_SUBFLOWS, PacketCounters, RateBucket, Subflow,
};

use mptcp_common::lb::{
    Backend, BackendCounters, LbCounters, LbFlow, MAGLEV_SIZE, MAX_BACKENDS, MAX_LB_FLOWS, MAX_LB_TOKENS,
    MAX_VIPS, Vip, VipKey,
};

use mptcp_common::cc::{CcDecision, CcSubflow, MAX_CC_SUBFLOWS};

use crate::{packet::OptionBuffer, track::PacketState};

/// Per-direction counters ([`mptcp_common::maps::COUNTERS_MAP`]).
#[btf_map]
pub static COUNTERS: PerCpuArray<PacketCounters, 2> = PerCpuArray::new();

#[btf_map]
pub static SUBFLOWS: LruHashMap<FlowKey, Subflow, MAX_SUBFLOWS> = LruHashMap::new();

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

/// Per-packet working memory, kept off the 512-byte stack.
pub struct Scratch {
    pub options: OptionBuffer,
    pub packet: PacketState,
}

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

// The load balancer's maps (see mptcp_common::lb).

#[btf_map]
pub static LB_VIPS: HashMap<VipKey, Vip, MAX_VIPS> = HashMap::new();

#[btf_map]
pub static LB_BACKENDS: Array<Backend, MAX_BACKENDS> = Array::new();

/// One Maglev table per VIP, back to back: backend slot per entry.
#[btf_map]
pub static LB_MAGLEV: Array<u32, { MAX_VIPS * MAGLEV_SIZE }> = Array::new();

#[btf_map]
pub static LB_FLOWS: LruHashMap<FlowKey, LbFlow, MAX_LB_FLOWS> = LruHashMap::new();

/// Server token -> backend slot.
#[btf_map]
pub static LB_TOKENS: LruHashMap<u32, u32, MAX_LB_TOKENS> = LruHashMap::new();

#[btf_map]
pub static LB_COUNTERS: PerCpuArray<LbCounters, 1> = PerCpuArray::new();

#[btf_map]
pub static LB_BACKEND_COUNTERS: PerCpuArray<BackendCounters, MAX_BACKENDS> = PerCpuArray::new();

/// This CPU's balancer counters.
#[inline(always)]
pub fn lb_counters() -> Option<&'static mut LbCounters> {
    // SAFETY: as for `counters`.
    LB_COUNTERS.get_ptr_mut(0).map(|ptr| unsafe { &mut *ptr })
}

/// This CPU's counters of backend slot `index`.
#[inline(always)]
pub fn backend_counters(index: u32) -> Option<&'static mut BackendCounters> {
    // SAFETY: as for `counters`.
    LB_BACKEND_COUNTERS.get_ptr_mut(index).map(|ptr| unsafe { &mut *ptr })
}

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
