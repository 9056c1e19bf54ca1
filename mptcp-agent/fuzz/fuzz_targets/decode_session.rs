//! A crafted MPTCP session with arbitrary edits (options, payloads, flags, sequence numbers,
//! order, snap length), written as a pcap file and decoded: the decoder's connection, mapping
//! and HMAC state machines, from valid handshakes on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_agent::{analysis::capture_file, dataplane::testrun::frames};
use mptcp_agent_fuzz::{
    decode::decode_checked,
    session::{Packet, Session},
};

fuzz_target!(|session: Session| {
    let frames: Vec<(Vec<u8>, u32)> = session.packets().iter().map(Packet::frame).collect();
    let pcap = frames::to_pcap(frames.iter().map(|(frame, len)| (frame.as_slice(), *len)))
        .expect("frames of at most 1514 bytes make a pcap file");
    let capture = capture_file::parse(&pcap).expect("a pcap file just written reads back");
    let report = decode_checked(capture);
    assert_eq!(report.read_error, None);
    assert_eq!(report.summary.frames, frames.len() as u64);
});
