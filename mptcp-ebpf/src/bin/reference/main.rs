//! Reference programs for `cargo xtask bench`, never attached: an XDP program that only
//! passes, and one that parses to TCP and does a single 4-tuple hash lookup, the floor any
//! flow-aware program pays. The tracker and the balancer are measured against them in the same
//! run (the agent loads this object beside theirs).
#![no_std]
#![no_main]
// Map keys and values go by reference: by value they would be copied onto the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{bindings::xdp_action, btf_maps::HashMap, macros::btf_map, macros::xdp, programs::XdpContext};
use mptcp_common::maps::FlowKey;
use mptcp_ebpf::packet::{TcpSegment, parse_tcp};

mptcp_ebpf::program_object!();

#[btf_map]
static BASELINE_FLOWS: HashMap<FlowKey, u64, 1024> = HashMap::new();

#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn baseline_flow_lookup(ctx: XdpContext) -> u32 {
    // SAFETY: TcpSegment is plain data; parse_tcp fills it before any read.
    let mut segment: TcpSegment = unsafe { core::mem::zeroed() };
    if parse_tcp(&ctx, &mut segment).is_some() {
        let (key, _) = FlowKey::new(segment.family, segment.src, segment.sport, segment.dst, segment.dport);
        if let Some(count) = BASELINE_FLOWS.get_ptr_mut(&key) {
            // SAFETY: map value pointer from a successful lookup.
            unsafe { *count += 1 };
        }
    }
    xdp_action::XDP_PASS
}
