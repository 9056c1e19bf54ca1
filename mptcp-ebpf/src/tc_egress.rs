//! TC attach point (tcx egress): every packet leaving the interface.

use aya_ebpf::{bindings::tcx_action_base::TCX_NEXT, macros::classifier, programs::TcContext};
use mptcp_common::maps::Direction;

use crate::{observe::observe, packet::Packet};

#[classifier]
pub fn mptcp_tc_egress(ctx: TcContext) -> i32 {
    // Admission happens at XDP; egress only observes. The verdict is always Pass here.
    let _ = observe(&ctx, Direction::Egress);
    // Observe only: hand the packet on to the next program or the stack.
    TCX_NEXT
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: the caller provides `len` writable bytes at dst.
        unsafe {
            aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                self.skb.skb.cast(),
                offset as u32,
                dst.cast(),
                len as u32,
            ) == 0
        }
    }

    #[inline(always)]
    fn store_bytes(&self, offset: usize, src: &[u8]) -> bool {
        // SAFETY: the helper reads src.len() bytes from src.
        unsafe {
            aya_ebpf::helpers::generated::bpf_skb_store_bytes(
                self.skb.skb.cast(),
                offset as u32,
                src.as_ptr().cast(),
                src.len() as u32,
                0,
            ) == 0
        }
    }
}
