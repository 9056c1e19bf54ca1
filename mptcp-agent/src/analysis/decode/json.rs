//! `decode --json` written as the records come, so that a capture of any length costs no
//! memory per record: one JSON object with the same fields as `Report`'s, `packets` and
//! `mappings` first (as they stream), the rest once the capture has been read.

use std::{
    fs::File,
    io::{self, BufWriter, Seek, SeekFrom, Write},
};

use super::{MappingRecord, PacketRecord, RecordSink, Report};

/// Indentation of the top-level fields, and of the records in the two arrays.
const FIELD_INDENT: &str = "  ";
const RECORD_INDENT: &str = "    ";

/// Writes a report's JSON to `out` while `decode` runs.
pub struct JsonWriter<W: Write> {
    out: W,
    /// With packets, the mappings wait in an unnamed temporary file (deleted when closed)
    /// while the packets array is written.
    spool: Option<BufWriter<File>>,
    packets_written: u64,
    mappings_written: u64,
}

impl<W: Write> JsonWriter<W> {
    /// Starts the object: the file name and the first streamed array.
    pub fn new(mut out: W, file: &str, with_packets: bool) -> io::Result<Self> {
        let spool = if with_packets { Some(BufWriter::new(tempfile::tempfile()?)) } else { None };
        let first_array = if with_packets { "packets" } else { "mappings" };
        write!(
            out,
            "{{\n{FIELD_INDENT}\"file\": {},\n{FIELD_INDENT}\"{first_array}\": [",
            serde_json::to_string(file)?
        )?;
        Ok(Self { out, spool, packets_written: 0, mappings_written: 0 })
    }

    /// Closes the arrays and writes the fields known only at the end; gives `out` back.
    pub fn finish(mut self, report: &Report) -> io::Result<W> {
        if let Some(spool) = self.spool.take() {
            write!(self.out, "\n{FIELD_INDENT}],\n{FIELD_INDENT}\"mappings\": [")?;
            let mut spool = spool.into_inner().map_err(io::IntoInnerError::into_error)?;
            spool.seek(SeekFrom::Start(0))?;
            io::copy(&mut spool, &mut self.out)?;
        }
        write!(self.out, "\n{FIELD_INDENT}]")?;
        // Written field by field (the test against `to_json` keeps this list whole): a
        // `serde_json::Value` of the report would double the memory of many connections.
        let out = &mut self.out;
        field(out, "read_error", &report.read_error)?;
        field(out, "summary", &report.summary)?;
        field(out, "connections", &report.connections)?;
        field(out, "subflows", &report.subflows)?;
        field(out, "add_addrs", &report.add_addrs)?;
        field(out, "hmac_checks", &report.hmac_checks)?;
        field(out, "undecodable_frames", &report.undecodable_frames)?;
        field(out, "malformed_options", &report.malformed_options)?;
        self.out.write_all(b"\n}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// `,\n  "name": value`, the value pretty and indented as a top-level field, written as it is
/// serialized.
fn field(out: &mut impl Write, name: &str, value: &impl serde::Serialize) -> io::Result<()> {
    write!(out, ",\n{FIELD_INDENT}{}: ", serde_json::to_string(name)?)?;
    serde_json::to_writer_pretty(Indented(out), value)?;
    Ok(())
}

/// Indents every line after the first by `FIELD_INDENT`.
struct Indented<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Indented<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for (index, line) in buf.split(|&byte| byte == b'\n').enumerate() {
            if index > 0 {
                self.0.write_all(b"\n")?;
                self.0.write_all(FIELD_INDENT.as_bytes())?;
            }
            self.0.write_all(line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// One record of an array, after a comma unless it is the first.
fn record(out: &mut impl Write, first: bool, value: &impl serde::Serialize) -> io::Result<()> {
    out.write_all(if first { b"\n" } else { b",\n" })?;
    out.write_all(RECORD_INDENT.as_bytes())?;
    serde_json::to_writer(&mut *out, value)?;
    Ok(())
}

impl<W: Write> RecordSink for JsonWriter<W> {
    type Error = io::Error;

    fn packet(&mut self, packet: PacketRecord) -> io::Result<()> {
        record(&mut self.out, self.packets_written == 0, &packet)?;
        self.packets_written += 1;
        Ok(())
    }

    fn mapping(&mut self, mapping: MappingRecord) -> io::Result<()> {
        let first = self.mappings_written == 0;
        match self.spool.as_mut() {
            Some(spool) => record(spool, first, &mapping)?,
            None => record(&mut self.out, first, &mapping)?,
        }
        self.mappings_written += 1;
        Ok(())
    }
}
