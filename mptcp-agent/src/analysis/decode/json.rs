//! `decode --json` written as the records come, so that a capture of any length or with any
//! number of connections costs no memory per record: one JSON object with the same fields as
//! `Report`'s, in its order. The first array (`packets`, else `mappings`) goes out as it is
//! written; every later one waits in an unnamed temporary file (deleted when closed) until the
//! capture has been read and `read_error` and `summary`, which come before some of them, are
//! known.

use std::{
    fs::File,
    io::{self, BufWriter, Seek, SeekFrom, Write},
};

use super::{ConnectionItems, MappingRecord, PacketRecord, Problem, ProblemKind, RecordSink, Report};

/// Indentation of the top-level fields, and of the records in the arrays.
const FIELD_INDENT: &str = "  ";
const RECORD_INDENT: &str = "    ";

/// An array being written, one compact record a line.
struct Array<W> {
    out: W,
    written: u64,
}

impl<W: Write> Array<W> {
    fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    /// One record, after a comma unless it is the first.
    fn push(&mut self, value: &impl serde::Serialize) -> io::Result<()> {
        self.out.write_all(if self.written == 0 { b"\n" } else { b",\n" })?;
        self.out.write_all(RECORD_INDENT.as_bytes())?;
        serde_json::to_writer(&mut self.out, value)?;
        self.written += 1;
        Ok(())
    }
}

/// An array waiting in a temporary file.
type Spool = Array<BufWriter<File>>;

fn spool() -> io::Result<Spool> {
    Ok(Array::new(BufWriter::new(tempfile::tempfile()?)))
}

/// Writes the records of `spool` to `out`, and the array's end.
fn copy_spool(spool: Spool, out: &mut impl Write) -> io::Result<()> {
    let mut file = spool.out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.seek(SeekFrom::Start(0))?;
    io::copy(&mut file, out)?;
    write!(out, "\n{FIELD_INDENT}]")
}

/// Writes a report's JSON to `out` while `decode` runs.
pub struct JsonWriter<W: Write> {
    /// `packets` with packets, else `mappings`.
    first: Array<W>,
    /// With packets, the mappings wait while the packets array is written.
    mappings: Option<Spool>,
    connections: Spool,
    subflows: Spool,
    add_addrs: Spool,
    hmac_checks: Spool,
    undecodable_frames: Spool,
    malformed_options: Spool,
}

impl<W: Write> JsonWriter<W> {
    /// Starts the object: the file name and the first streamed array.
    pub fn new(mut out: W, file: &str, with_packets: bool) -> io::Result<Self> {
        let mappings = if with_packets { Some(spool()?) } else { None };
        let first_array = if with_packets { "packets" } else { "mappings" };
        write!(
            out,
            "{{\n{FIELD_INDENT}\"file\": {},\n{FIELD_INDENT}\"{first_array}\": [",
            serde_json::to_string(file)?
        )?;
        Ok(Self {
            first: Array::new(out),
            mappings,
            connections: spool()?,
            subflows: spool()?,
            add_addrs: spool()?,
            hmac_checks: spool()?,
            undecodable_frames: spool()?,
            malformed_options: spool()?,
        })
    }

    /// Closes the arrays and writes the fields known only at the end; gives `out` back.
    pub fn finish(self, report: &Report) -> io::Result<W> {
        let mut out = self.first.out;
        write!(out, "\n{FIELD_INDENT}]")?;
        if let Some(mappings) = self.mappings {
            write!(out, ",\n{FIELD_INDENT}\"mappings\": [")?;
            copy_spool(mappings, &mut out)?;
        }
        // Field by field (the test against `to_json` keeps this list whole): a
        // `serde_json::Value` of the report would double its memory.
        field(&mut out, "read_error", &report.read_error)?;
        field(&mut out, "summary", &report.summary)?;
        for (name, spool) in [
            ("connections", self.connections),
            ("subflows", self.subflows),
            ("add_addrs", self.add_addrs),
            ("hmac_checks", self.hmac_checks),
            ("undecodable_frames", self.undecodable_frames),
            ("malformed_options", self.malformed_options),
        ] {
            write!(out, ",\n{FIELD_INDENT}\"{name}\": [")?;
            copy_spool(spool, &mut out)?;
        }
        out.write_all(b"\n}\n")?;
        out.flush()?;
        Ok(out)
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

impl<W: Write> RecordSink for JsonWriter<W> {
    type Error = io::Error;

    fn packet(&mut self, packet: PacketRecord) -> io::Result<()> {
        self.first.push(&packet)
    }

    fn mapping(&mut self, mapping: MappingRecord) -> io::Result<()> {
        match self.mappings.as_mut() {
            Some(spool) => spool.push(&mapping),
            None => self.first.push(&mapping),
        }
    }

    fn problem(&mut self, kind: ProblemKind, problem: Problem) -> io::Result<()> {
        match kind {
            ProblemKind::UndecodableFrame => self.undecodable_frames.push(&problem),
            ProblemKind::MalformedOption => self.malformed_options.push(&problem),
        }
    }

    fn connection(&mut self, items: ConnectionItems) -> io::Result<()> {
        if let Some(connection) = &items.connection {
            self.connections.push(connection)?;
        }
        items.subflows.iter().try_for_each(|subflow| self.subflows.push(subflow))?;
        items.add_addrs.iter().try_for_each(|add| self.add_addrs.push(add))?;
        items.hmac_checks.iter().try_for_each(|check| self.hmac_checks.push(check))
    }
}
