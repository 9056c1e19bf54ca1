//! The BTF maps the programs share; their layouts live in mptcp-common.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use mptcp_common::maps::{Direction, PacketCounters};

/// Per-direction packet and option counters (see [`mptcp_common::maps::COUNTERS_MAP`]).
#[btf_map]
pub static COUNTERS: PerCpuArray<PacketCounters, 2> = PerCpuArray::new();

/// This CPU's counters of `direction`.
#[inline(always)]
pub fn counters(direction: Direction) -> Option<&'static mut PacketCounters> {
    // SAFETY: a per-CPU slot is only touched by the program running on this CPU, and programs
    // are not preempted by one another on it, so the reference is exclusive while it lives.
    COUNTERS.get_ptr_mut(direction.index()).map(|ptr| unsafe { &mut *ptr })
}
