//! Arbitrary bytes as a capture file through what `mptcp-agent decode` runs: the pcap/pcapng
//! reader, the decoder (connections, mappings, HMAC verdicts) and both renderings. Nothing
//! panics, and every report accounts for every frame read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_agent::analysis::capture_file;
use mptcp_agent_fuzz::decode::decode_checked;

fuzz_target!(|data: &[u8]| {
    // Not a capture file at all is an error, never a panic.
    if let Ok(capture) = capture_file::parse(data) {
        decode_checked(capture);
    }
});
