//! A crafted MPTCP session with arbitrary edits, frame by frame through the tracker (into its
//! host at XDP or tcx ingress, out of it at tcx egress) and the balancer, under an arbitrary
//! admission policy: the programs' connection, subflow, mapping, admission and token-steering
//! state from valid handshakes on. Needs root.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mptcp_agent_fuzz::{programs::Hook, session::Session, with_programs};

#[derive(Debug, Arbitrary)]
struct Input {
    /// allow, known-token or verified (modulo 3).
    admission: u8,
    /// The tracker's ingress at tcx instead of XDP (and the balancer's with it).
    tc_ingress: bool,
    session: Session,
}

fuzz_target!(|input: Input| {
    let packets = input.session.packets();
    // The tracker runs on the host the first packet goes to.
    let host = packets.first().map(|packet| packet.dst.ip());
    with_programs(|programs| {
        programs.set_admission(input.admission)?;
        for packet in &packets {
            let hook = if Some(packet.dst.ip()) == host {
                Hook::Ingress { tc: input.tc_ingress }
            } else {
                Hook::Egress
            };
            programs.run_at(hook, &packet.frame().0)?;
        }
        Ok(())
    });
});
