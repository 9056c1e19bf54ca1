//! TC attach point (tcx egress): every packet leaving the interface.

use aya_ebpf::{bindings::tcx_action_base::TCX_NEXT, macros::classifier, programs::TcContext};
use mptcp_common::maps::Direction;

use crate::observe::observe;

#[classifier]
pub fn mptcp_tc_egress(ctx: TcContext) -> i32 {
    // Admission happens at XDP; egress only observes. The verdict is always Pass here.
    let _ = observe(&ctx, Direction::Egress);
    // Observe only: hand the packet on to the next program or the stack.
    TCX_NEXT
}
