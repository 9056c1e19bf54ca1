//! `mptcp-agent decode` on a capture read from fuzz input, with what must hold of any report.

use mptcp_agent::{
    analysis::{capture_file::CaptureReader, decode},
    cli,
};

/// Decodes `capture` (with every packet's record) and renders the report both ways `decode`
/// prints it; panics if the report does not account for every frame or fails to render.
pub fn decode_checked(mut capture: CaptureReader<&[u8]>) -> decode::Report {
    let report = decode::decode("fuzz input".to_owned(), &mut capture, true);
    let frames = capture.frames_read();
    let summary = &report.summary;
    assert_eq!(summary.frames, frames, "every frame counted");
    assert_eq!(
        summary.tcp_packets + summary.non_tcp_frames + summary.undecodable_frames,
        frames,
        "every frame is TCP, not TCP or undecodable: {summary:?}"
    );
    assert!(summary.mptcp_packets <= summary.tcp_packets, "{summary:?}");
    assert!(
        summary.hmac_verified + summary.hmac_failed + summary.hmac_unknown == report.hmac_checks.len(),
        "every HMAC check has one verdict: {summary:?}"
    );
    decode::to_json(&report).expect("the report serialises to JSON");
    cli::decode::to_text(&report).expect("the report renders as text");
    report
}
