//! TC attach point (tcx ingress): the ingress program where XDP does not pay, such as veth,
//! on which a native XDP program makes the kernel turn off the peer's segmentation offload.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, tcx_action_base::TCX_NEXT},
    macros::classifier,
    programs::TcContext,
};
use mptcp_common::maps::Direction;

use crate::{observe::observe, track::Verdict};

#[classifier]
pub fn mptcp_tc_ingress(ctx: TcContext) -> i32 {
    match observe(&ctx, Direction::Ingress) {
        Verdict::Pass => TCX_NEXT,
        Verdict::Drop => TC_ACT_SHOT,
    }
}
