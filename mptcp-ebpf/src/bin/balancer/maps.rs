//! The balancer's BTF maps, shared with the agent (see mptcp_common::lb), and its per-packet
//! working memory.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use mptcp_common::{
    lb::{
        Backend, BackendCounters, JoinAddrKey, LB_SYNC_EVENTS_BYTES, LbCollision, LbCounters, LbFlow,
        LbSettings, LbSyncEvent, LbToken, MAGLEV_SIZE, MAX_BACKENDS, MAX_JOIN_ADDRS, MAX_LB_COLLISIONS,
        MAX_LB_FLOWS, MAX_LB_HALF_OPEN, MAX_LB_TOKENS, MAX_LEARN_SOURCES, MAX_UNKNOWN_TOKENS, MAX_VIPS, Vip,
        VipKey,
    },
    maps::{AddrKey, FlowKey, RateBucket},
};
use mptcp_ebpf::packet::{OptionBuffer, TcpSegment};

#[btf_map]
pub static LB_VIPS: HashMap<VipKey, Vip, MAX_VIPS> = HashMap::new();

#[btf_map]
pub static LB_BACKENDS: Array<Backend, MAX_BACKENDS> = Array::new();

/// One Maglev table per VIP, back to back: backend slot per entry.
#[btf_map]
pub static LB_MAGLEV: Array<u32, { MAX_VIPS * MAGLEV_SIZE }> = Array::new();

/// Flows the client confirmed (its first ACK after the SYN); the SYN path never inserts here.
#[btf_map]
pub static LB_FLOWS: LruHashMap<FlowKey, LbFlow, MAX_LB_FLOWS> = LruHashMap::new();

/// Flows seen only by their SYN: what a SYN flood fills.
#[btf_map]
pub static LB_HALF_OPEN: LruHashMap<FlowKey, LbFlow, MAX_LB_HALF_OPEN> = LruHashMap::new();

/// Server token -> owner, learned only when an MP_CAPABLE flow is confirmed, or from a peer.
#[btf_map]
pub static LB_TOKENS: LruHashMap<u32, LbToken, MAX_LB_TOKENS> = LruHashMap::new();

#[btf_map]
pub static LB_SETTINGS: Array<LbSettings, 1> = Array::new();

/// Backends' join addresses -> backend slot: forwarded from configuration alone.
#[btf_map]
pub static LB_JOIN_ADDRS: HashMap<JoinAddrKey, u32, MAX_JOIN_ADDRS> = HashMap::new();

/// Tokens refused for a second backend, for operators.
#[btf_map]
pub static LB_COLLISIONS: LruHashMap<u32, LbCollision, MAX_LB_COLLISIONS> = LruHashMap::new();

/// Per-source token buckets of token learning.
#[btf_map]
pub static LB_LEARN_RATE: LruHashMap<AddrKey, RateBucket, MAX_LEARN_SOURCES> = LruHashMap::new();

/// Tokens that joins named before this instance knew them -> when first named.
#[btf_map]
pub static LB_UNKNOWN_TOKENS: LruHashMap<u32, u64, MAX_UNKNOWN_TOKENS> = LruHashMap::new();

/// What this instance learned, for the sync daemon.
#[btf_map]
pub static LB_SYNC_EVENTS: RingBuf<LbSyncEvent, LB_SYNC_EVENTS_BYTES> = RingBuf::new();

#[btf_map]
pub static LB_COUNTERS: PerCpuArray<LbCounters, 1> = PerCpuArray::new();

#[btf_map]
pub static LB_BACKEND_COUNTERS: PerCpuArray<BackendCounters, MAX_BACKENDS> = PerCpuArray::new();

/// Per-packet working memory, kept off the 512-byte stack: the segment `classify` parsed and
/// its option area, which the global functions read, its flow key, and the sync event being
/// written.
pub struct Scratch {
    pub segment: TcpSegment,
    pub options: OptionBuffer,
    pub key: FlowKey,
    pub sync: LbSyncEvent,
}

#[btf_map]
pub static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Scratch space for the SHA-256 message schedule of a key digest.
#[btf_map]
pub static DIGEST_SCHEDULE: PerCpuArray<[u32; 16], 1> = PerCpuArray::new();

/// This CPU's balancer counters.
#[inline(always)]
pub fn lb_counters() -> Option<&'static mut LbCounters> {
    // SAFETY: a per-CPU slot is only touched by the program running on this CPU, and programs
    // are not preempted by one another on it, so the reference is exclusive while it lives.
    LB_COUNTERS.get_ptr_mut(0).map(|ptr| unsafe { &mut *ptr })
}

/// This CPU's counters of backend slot `index`.
#[inline(always)]
pub fn backend_counters(index: u32) -> Option<&'static mut BackendCounters> {
    // SAFETY: as for `lb_counters`.
    LB_BACKEND_COUNTERS.get_ptr_mut(index).map(|ptr| unsafe { &mut *ptr })
}

/// This CPU's scratch memory.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: as for `lb_counters`; one packet at a time uses a CPU's scratch memory.
    SCRATCH.get_ptr_mut(0).map(|ptr| unsafe { &mut *ptr })
}

/// The balancer's settings (defaults if the agent has not written them).
#[inline(always)]
pub fn settings() -> LbSettings {
    LB_SETTINGS.get(0).copied().unwrap_or_default()
}
