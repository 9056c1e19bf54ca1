//! The MPTCP dataplane's kernel side: XDP (or tcx) ingress and tcx egress programs on each
//! interface, a cgroup sock_ops program for coupled congestion control and the load balancer,
//! sharing the maps in [`maps`].
#![no_std]
#![no_main]
// atomic_xadd: see track::atomic_add. The crate is built by the nightly toolchain anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values go by reference: by value they would be copied onto the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod baseline;
mod lb;
mod maps;
mod observe;
mod packet;
mod sock_ops;
mod tc_egress;
mod tc_ingress;
mod track;
mod xdp_ingress;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The code is written not to panic (mptcp-common denies panicking constructs); should a panic
    // path survive, the verifier rejects the program at load time rather than it looping here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
