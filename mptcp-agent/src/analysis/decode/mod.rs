//! `mptcp-agent decode`: every MPTCP option of a capture file, decoded with the shared codec,
//! grouped into connections by token, with derived tokens and IDSNs and a verdict on every
//! MP_JOIN and ADD_ADDR HMAC whose keys the capture holds.

mod analysis;
mod dss;
mod hmac;
mod json;
mod report;
#[cfg(test)]
mod tests;

use std::{convert::Infallible, io::Read, path::Path, sync::atomic::AtomicBool};

pub use json::JsonWriter;
pub use report::*;

use crate::analysis::{
    capture_file::{self, CaptureFileError, CaptureReader},
    follow::Follow,
};

/// Where `decode` hands the records it lists one by one, so that it keeps none of them: each
/// packet as it is decoded, each mapping once its checksum verdict is final (at the segment
/// that sent it when it has no checksum), each problem as it is found, and each connection's
/// items once all its subflows have ended.
pub trait RecordSink {
    type Error;
    fn packet(&mut self, packet: PacketRecord) -> Result<(), Self::Error>;
    fn mapping(&mut self, mapping: MappingRecord) -> Result<(), Self::Error>;
    fn problem(&mut self, kind: ProblemKind, problem: Problem) -> Result<(), Self::Error>;
    fn connection(&mut self, items: ConnectionItems) -> Result<(), Self::Error>;
}

/// Keeps every record, for a report whole in memory.
#[derive(Debug, Default)]
struct Collect {
    packets: Vec<PacketRecord>,
    mappings: Vec<MappingRecord>,
    undecodable_frames: Vec<Problem>,
    malformed_options: Vec<Problem>,
    connections: Vec<Connection>,
    subflows: Vec<Subflow>,
    add_addrs: Vec<AddAddrRecord>,
    hmac_checks: Vec<HmacCheck>,
}

impl RecordSink for Collect {
    type Error = Infallible;

    fn packet(&mut self, packet: PacketRecord) -> Result<(), Infallible> {
        self.packets.push(packet);
        Ok(())
    }

    fn mapping(&mut self, mapping: MappingRecord) -> Result<(), Infallible> {
        self.mappings.push(mapping);
        Ok(())
    }

    fn problem(&mut self, kind: ProblemKind, problem: Problem) -> Result<(), Infallible> {
        match kind {
            ProblemKind::UndecodableFrame => self.undecodable_frames.push(problem),
            ProblemKind::MalformedOption => self.malformed_options.push(problem),
        }
        Ok(())
    }

    fn connection(&mut self, items: ConnectionItems) -> Result<(), Infallible> {
        self.connections.extend(items.connection);
        self.subflows.extend(items.subflows);
        self.add_addrs.extend(items.add_addrs);
        self.hmac_checks.extend(items.hmac_checks);
        Ok(())
    }
}

/// A streamed decode that failed: the capture could not be opened, or the records not written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Capture(#[from] CaptureFileError),
    #[error("writing the report")]
    Output(#[source] E),
}

/// Decodes a capture file, frame by frame, into a report that holds every record (its memory
/// grows with the mappings, the connections and, `with_packets`, the packets; `stream_file`'s
/// does not).
pub fn decode_file(path: &Path, with_packets: bool) -> Result<Report, CaptureFileError> {
    Ok(decode(path.display().to_string(), &mut capture_file::open(path)?, with_packets))
}

/// Decodes a capture file, handing its records to `sink` as they become final; the report
/// returned has only the file, `read_error` and the summary.
pub fn stream_file<S>(path: &Path, with_packets: bool, sink: &mut S) -> Result<Report, StreamError<S::Error>>
where
    S: RecordSink,
    S::Error: std::error::Error + 'static,
{
    stream(path, capture_file::open(path)?, with_packets, sink)
}

/// `stream_file` of a capture file still being written (`decode --follow`), read as it grows
/// until its writer closes it or `stop` is set (see `follow::Follow`).
pub fn follow_file<S>(
    path: &Path,
    with_packets: bool,
    stop: &AtomicBool,
    sink: &mut S,
) -> Result<Report, StreamError<S::Error>>
where
    S: RecordSink,
    S::Error: std::error::Error + 'static,
{
    let follow = Follow::open(path, stop)
        .map_err(|source| CaptureFileError::Io { path: path.display().to_string(), source })?;
    stream(path, capture_file::start(path, follow)?, with_packets, sink)
}

fn stream<R: Read, S>(
    path: &Path,
    mut capture: CaptureReader<R>,
    with_packets: bool,
    sink: &mut S,
) -> Result<Report, StreamError<S::Error>>
where
    S: RecordSink,
    S::Error: std::error::Error + 'static,
{
    decode_into(path.display().to_string(), &mut capture, with_packets, sink).map_err(StreamError::Output)
}

/// Decodes the frames `capture` gives, one at a time; `file` names it in the report.
pub fn decode<R: Read>(file: String, capture: &mut CaptureReader<R>, with_packets: bool) -> Report {
    let mut collect = Collect::default();
    let mut report = match decode_into(file, capture, with_packets, &mut collect) {
        Ok(report) => report,
        Err(never) => match never {},
    };
    report.mappings = collect.mappings;
    report.packets = with_packets.then_some(collect.packets);
    report.undecodable_frames = collect.undecodable_frames;
    report.malformed_options = collect.malformed_options;
    report.connections = collect.connections;
    report.subflows = collect.subflows;
    report.add_addrs = collect.add_addrs;
    report.hmac_checks = collect.hmac_checks;
    report
}

/// Decodes the frames `capture` gives into `sink`. Only the live subflows' state is kept from
/// frame to frame (per side, the mappings whose checksum still waits for data and the latest
/// ones sent, to recognise repeats), and the items of the connections not finished yet.
pub fn decode_into<R: Read, S: RecordSink>(
    file: String,
    capture: &mut CaptureReader<R>,
    with_packets: bool,
    sink: &mut S,
) -> Result<Report, S::Error> {
    let mut analysis = analysis::Analysis::default();
    for frame in capture.by_ref() {
        let packet = analysis.frame(&frame);
        if let Some(packet) = packet
            && with_packets
        {
            sink.packet(packet)?;
        }
        analysis.hand_on(sink)?;
    }
    analysis.end_of_capture();
    analysis.hand_on(sink)?;
    let mut report = analysis.finish(file);
    report.read_error = capture.read_error().map(str::to_owned);
    Ok(report)
}

/// `decode --json`: the report as pretty JSON.
pub fn to_json(report: &Report) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}
