//! Arbitrary bytes as one Ethernet frame through every program under BPF_PROG_TEST_RUN: the
//! tracker's XDP, tcx ingress and tcx egress programs and the balancer's XDP and tcx programs
//! (see `mptcp_agent_fuzz::programs` for what is checked). Needs root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_agent_fuzz::{session::MAX_FRAME, with_programs};

fuzz_target!(|data: &[u8]| {
    // Test-run takes larger frames only as multi-buffer XDP, which the programs do not declare.
    let frame = &data[..data.len().min(MAX_FRAME)];
    with_programs(|programs| programs.run_everywhere(frame));
});
