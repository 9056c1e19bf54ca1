//! `mptcp-agent decode`: every MPTCP option of a capture file, decoded with the shared codec,
//! grouped into connections by token, with derived tokens and IDSNs and a verdict on every
//! MP_JOIN and ADD_ADDR HMAC whose keys the capture holds.

mod analysis;
mod dss;
mod hmac;
mod report;
#[cfg(test)]
mod tests;

use std::{io::Read, path::Path};

pub use report::*;

use crate::analysis::capture_file::{self, CaptureFileError, CaptureReader};

/// Decodes a capture file, frame by frame.
pub fn decode_file(path: &Path, with_packets: bool) -> Result<Report, CaptureFileError> {
    Ok(decode(path.display().to_string(), &mut capture_file::open(path)?, with_packets))
}

/// Decodes the frames `capture` gives, one at a time; `file` names it in the report. Only the
/// subflows' state is kept from frame to frame, and the packet records only `with_packets`.
pub fn decode<R: Read>(file: String, capture: &mut CaptureReader<R>, with_packets: bool) -> Report {
    let mut analysis = analysis::Analysis::default();
    let mut packets = Vec::new();
    for frame in capture.by_ref() {
        if let Some(packet) = analysis.frame(&frame)
            && with_packets
        {
            packets.push(packet);
        }
    }
    let mut report = analysis.finish(file);
    report.read_error = capture.read_error().map(str::to_owned);
    report.packets = with_packets.then_some(packets);
    report
}

/// `decode --json`: the report as pretty JSON.
pub fn to_json(report: &Report) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}
