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

use std::{convert::Infallible, io::Read, path::Path};

pub use json::JsonWriter;
pub use report::*;

use crate::analysis::capture_file::{self, CaptureFileError, CaptureReader};

/// Where `decode` hands the records it lists one by one, so that it keeps none of them: each
/// packet as it is decoded, each mapping once its checksum verdict is final (at the segment
/// that sent it when it has no checksum).
pub trait RecordSink {
    type Error;
    fn packet(&mut self, packet: PacketRecord) -> Result<(), Self::Error>;
    fn mapping(&mut self, mapping: MappingRecord) -> Result<(), Self::Error>;
}

/// Keeps every record, for a report whole in memory.
#[derive(Debug, Default)]
struct Collect {
    packets: Vec<PacketRecord>,
    mappings: Vec<MappingRecord>,
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
/// grows with the mappings and, `with_packets`, the packets; `stream_file` does not).
pub fn decode_file(path: &Path, with_packets: bool) -> Result<Report, CaptureFileError> {
    Ok(decode(path.display().to_string(), &mut capture_file::open(path)?, with_packets))
}

/// Decodes a capture file, handing its records to `sink` as they become final; the report
/// returned has no mappings or packets.
pub fn stream_file<S>(path: &Path, with_packets: bool, sink: &mut S) -> Result<Report, StreamError<S::Error>>
where
    S: RecordSink,
    S::Error: std::error::Error + 'static,
{
    let mut capture = capture_file::open(path)?;
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
    report
}

/// Decodes the frames `capture` gives into `sink`. Only the subflows' state is kept from frame
/// to frame: per side, the mappings whose checksum still waits for data and the latest ones
/// sent, to recognise repeats.
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
        for mapping in analysis.take_finished_mappings() {
            sink.mapping(mapping)?;
        }
    }
    analysis.end_of_capture();
    for mapping in analysis.take_finished_mappings() {
        sink.mapping(mapping)?;
    }
    let mut report = analysis.finish(file);
    report.read_error = capture.read_error().map(str::to_owned);
    Ok(report)
}

/// `decode --json`: the report as pretty JSON.
pub fn to_json(report: &Report) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}
