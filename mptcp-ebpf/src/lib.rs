//! What the MPTCP dataplane's eBPF objects share, none of it a map: header parsing and the
//! [`packet::Packet`] view of the XDP and TC contexts, the option area copy and search, the move
//! of a confirmed handshake out of its half-open table ([`tables`]), and [`program_object!`],
//! the panic handler and license every object needs.
//!
//! Each product is a binary target of its own, so that loading one creates only its maps:
//!
//! * `tracker` (`src/bin/tracker/`): XDP (or tcx) ingress and tcx egress programs on each
//!   interface and the cgroup sock_ops program of coupled congestion control, sharing the
//!   tracking tables.
//! * `balancer` (`src/bin/balancer/`): the token-steering load balancer.
//! * `reference` (`src/bin/reference/`): the benchmarks' reference programs.
//!
//! mptcp-agent build-depends on this crate so that cargo rebuilds the agent (and with it the
//! embedded objects) whenever this crate or mptcp-common changes; its build script builds the
//! binary targets.
#![no_std]

pub mod packet;
pub mod tables;

/// The items every object needs besides its programs: a panic handler and the license.
#[macro_export]
macro_rules! program_object {
    () => {
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            // The code is written not to panic (mptcp-common denies panicking constructs); should
            // a panic path survive, the verifier rejects the program at load time rather than it
            // looping here.
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
