//! XDP attach point: every frame arriving on the interface.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use mptcp_common::maps::Direction;

use crate::{observe::observe, packet::Packet, track::Verdict};

#[xdp]
pub fn mptcp_xdp_ingress(ctx: XdpContext) -> u32 {
    match observe(&ctx, Direction::Ingress) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: the caller provides `len` writable bytes at dst.
        unsafe {
            aya_ebpf::helpers::generated::bpf_xdp_load_bytes(self.ctx, offset as u32, dst.cast(), len as u32)
                == 0
        }
    }

    #[inline(always)]
    fn store_bytes(&self, offset: usize, src: &[u8]) -> bool {
        // SAFETY: the helper reads src.len() bytes from src.
        unsafe {
            aya_ebpf::helpers::generated::bpf_xdp_store_bytes(
                self.ctx,
                offset as u32,
                src.as_ptr() as *mut _,
                src.len() as u32,
            ) == 0
        }
    }
}
