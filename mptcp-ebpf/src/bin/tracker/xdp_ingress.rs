//! XDP attach point: every frame arriving on the interface.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use mptcp_common::maps::Direction;

use crate::{observe::observe, track::Verdict};

#[xdp]
pub fn mptcp_xdp_ingress(ctx: XdpContext) -> u32 {
    match observe(&ctx, Direction::Ingress) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}
