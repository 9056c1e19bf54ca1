//! The MPTCP dataplane's kernel side: an XDP program on ingress and a TC (tcx) program on egress
//! of the same interface, sharing the maps in [`maps`].
#![no_std]
#![no_main]

mod maps;
mod observe;
mod packet;
mod tc_egress;
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
