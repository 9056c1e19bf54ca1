//! `mptcp-agent decode`: every MPTCP option of a capture file, decoded with the shared codec,
//! grouped into connections by token, with derived tokens and IDSNs and a verdict on every
//! MP_JOIN and ADD_ADDR HMAC whose keys the capture holds.

mod analysis;
mod dss;
mod hmac;
mod report;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use report::*;

use crate::analysis::capture_file::{self, CaptureFile, CaptureFileError};

/// Decodes a capture file.
pub fn decode_file(path: &Path, with_packets: bool) -> Result<Report, CaptureFileError> {
    Ok(decode(path.display().to_string(), capture_file::read(path)?, with_packets))
}

/// Decodes the frames of a capture read already; `file` names it in the report.
pub fn decode(file: String, capture: CaptureFile, with_packets: bool) -> Report {
    let mut analysis = analysis::Analysis::default();
    let packets: Vec<PacketRecord> =
        capture.frames.iter().filter_map(|frame| analysis.frame(frame)).collect();
    let mut report = analysis.finish(file);
    report.read_error = capture.read_error;
    report.packets = with_packets.then_some(packets);
    report
}

/// `decode --json`: the report as pretty JSON.
pub fn to_json(report: &Report) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}
