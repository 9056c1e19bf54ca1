//! The balancer's BTF maps, shared with the agent (see mptcp_common::lb), and its per-packet
//! working memory.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use mptcp_common::{
    lb::{
        Backend, BackendCounters, LbCounters, LbFlow, MAGLEV_SIZE, MAX_BACKENDS, MAX_LB_FLOWS,
        MAX_LB_HALF_OPEN, MAX_LB_TOKENS, MAX_VIPS, Vip, VipKey,
    },
    maps::FlowKey,
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

/// Server token -> backend slot, learned only when an MP_CAPABLE flow is confirmed.
#[btf_map]
pub static LB_TOKENS: LruHashMap<u32, u32, MAX_LB_TOKENS> = LruHashMap::new();

#[btf_map]
pub static LB_COUNTERS: PerCpuArray<LbCounters, 1> = PerCpuArray::new();

#[btf_map]
pub static LB_BACKEND_COUNTERS: PerCpuArray<BackendCounters, MAX_BACKENDS> = PerCpuArray::new();

/// Per-packet working memory, kept off the 512-byte stack: the segment `classify` parsed and
/// its option area, which the global functions read.
pub struct Scratch {
    pub segment: TcpSegment,
    pub options: OptionBuffer,
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
