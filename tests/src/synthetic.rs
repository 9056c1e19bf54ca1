//! Synthetic MPTCP captures of any size, written to disk as they are generated (one frame in
//! memory at a time), and the peak memory of a command that reads them: what the streaming of
//! `decode` and `replay` is measured and tested with.
//!
//! The traffic is what Linux sends for one MP_CAPABLE v1 connection (no DSS checksums): the
//! handshake with both keys, data segments each carrying one DSS mapping (8-byte DSN) and a data
//! ACK, the server's data ACKs, and the close. Addresses are documentation ranges.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader};
use sha2::{Digest as _, Sha256};

const CLIENT: [u8; 4] = [192, 0, 2, 1];
const SERVER: [u8; 4] = [198, 51, 100, 1];
const SERVER_PORT: u16 = 80;
/// Ethernet, what tcpdump writes on a veth or NIC.
const LINKTYPE_ETHERNET: u32 = 1;
/// Payload bytes of every data segment: a 1500-byte MTU's, less the IP, TCP and option headers.
pub const PAYLOAD: usize = 1420;

/// A pcap file written frame by frame.
struct PcapStream {
    out: BufWriter<File>,
    frame: Vec<u8>,
    bytes: u64,
}

impl PcapStream {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Magic, version 2.4, zone, sigfigs, snap length, link type.
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?;
        out.write_all(&262_144u32.to_le_bytes())?;
        out.write_all(&LINKTYPE_ETHERNET.to_le_bytes())?;
        Ok(Self { out, frame: Vec::with_capacity(2048), bytes: 24 })
    }

    /// One frame from `builder` with `payload`; `number` gives its timestamp (1 ms apart).
    fn write(&mut self, number: u64, builder: PacketBuilderStep<TcpHeader>, payload: &[u8]) -> Result<()> {
        self.frame.clear();
        builder.write(&mut self.frame, payload).context("building a frame")?;
        let len = u32::try_from(self.frame.len()).context("frame length")?;
        let (secs, micros) = (number / 1000, (number % 1000) * 1000);
        self.out.write_all(&u32::try_from(secs).unwrap_or(u32::MAX).to_le_bytes())?;
        self.out.write_all(&(micros as u32).to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&self.frame)?;
        self.bytes += 16 + u64::from(len);
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.out.flush()?;
        Ok(self.bytes)
    }
}

/// The IDSN of a key (RFC 8684: the low 64 bits of its SHA-256).
fn idsn(key: u64) -> u64 {
    let digest = Sha256::digest(key.to_be_bytes());
    let mut low = [0; 8];
    low.copy_from_slice(&digest[24..]);
    u64::from_be_bytes(low)
}

/// MP_CAPABLE v1 (flags: HMAC-SHA256 only) with the given keys.
fn mp_capable(keys: &[u64]) -> Vec<u8> {
    let mut option = vec![30, (4 + 8 * keys.len()) as u8, 0x01, 0x01];
    keys.iter().for_each(|key| option.extend_from_slice(&key.to_be_bytes()));
    option
}

/// DSS with an 8-byte data ACK and, when given, an 8-byte-DSN mapping (dsn, subflow seq, length).
fn dss(data_ack: u64, mapping: Option<(u64, u32, u16)>) -> Vec<u8> {
    let flags = 0x03 | mapping.map_or(0, |_| 0x0c);
    let mut option = vec![30, 0, 0x20, flags];
    option.extend_from_slice(&data_ack.to_be_bytes());
    if let Some((dsn, subflow_seq, len)) = mapping {
        option.extend_from_slice(&dsn.to_be_bytes());
        option.extend_from_slice(&subflow_seq.to_be_bytes());
        option.extend_from_slice(&len.to_be_bytes());
    }
    option[1] = option.len() as u8;
    option
}

/// Pads an option area to a multiple of 4 with NOPs.
fn padded(mut options: Vec<u8>) -> Vec<u8> {
    while !options.len().is_multiple_of(4) {
        options.push(1);
    }
    options
}

/// Writes the frames of one MPTCP connection between `client:port` and the server, with
/// `segments` data segments from the client, numbering frames from `first`; returns the next
/// frame number.
fn connection(out: &mut PcapStream, port: u16, keys: (u64, u64), segments: u64, first: u64) -> Result<u64> {
    let (client_key, server_key) = keys;
    let (client_isn, server_isn) = (1_000_000u32, 2_000_000u32);
    let (client_data, server_data) = (idsn(client_key).wrapping_add(1), idsn(server_key).wrapping_add(1));
    let payload = [0x5a; PAYLOAD];
    let mut number = first;
    let to_server = |seq: u32, ack: u32| {
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(CLIENT, SERVER, 64)
            .tcp(port, SERVER_PORT, seq, 64_000)
            .ack(ack)
    };
    let to_client = |seq: u32, ack: u32| {
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(SERVER, CLIENT, 64)
            .tcp(SERVER_PORT, port, seq, 64_000)
            .ack(ack)
    };
    let mut next = |out: &mut PcapStream, builder, options: Vec<u8>, payload: &[u8]| -> Result<()> {
        let builder: PacketBuilderStep<TcpHeader> = builder;
        let builder = builder.options_raw(&padded(options)).context("option area")?;
        number += 1;
        out.write(number - 1, builder, payload)
    };
    let syn = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(CLIENT, SERVER, 64)
        .tcp(port, SERVER_PORT, client_isn, 64_000)
        .syn();
    next(out, syn, mp_capable(&[]), &[])?;
    let syn_ack = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(SERVER, CLIENT, 64)
        .tcp(SERVER_PORT, port, server_isn, 64_000)
        .syn()
        .ack(client_isn.wrapping_add(1));
    next(out, syn_ack, mp_capable(&[server_key]), &[])?;
    let (mut client_seq, server_seq) = (client_isn.wrapping_add(1), server_isn.wrapping_add(1));
    next(out, to_server(client_seq, server_seq), mp_capable(&[client_key, server_key]), &[])?;
    let mut sent = 0u64;
    for segment in 0..segments {
        let mapping = (client_data.wrapping_add(sent), client_seq.wrapping_sub(client_isn), PAYLOAD as u16);
        next(out, to_server(client_seq, server_seq), dss(server_data, Some(mapping)), &payload)?;
        client_seq = client_seq.wrapping_add(PAYLOAD as u32);
        sent += PAYLOAD as u64;
        // The server acknowledges every second segment, as delayed ACKs do.
        if segment % 2 == 1 || segment + 1 == segments {
            next(out, to_client(server_seq, client_seq), dss(client_data.wrapping_add(sent), None), &[])?;
        }
    }
    next(out, to_server(client_seq, server_seq).fin(), dss(server_data, None), &[])?;
    next(
        out,
        to_client(server_seq, client_seq.wrapping_add(1)).fin(),
        dss(client_data.wrapping_add(sent), None),
        &[],
    )?;
    next(
        out,
        to_server(client_seq.wrapping_add(1), server_seq.wrapping_add(1)),
        dss(server_data, None),
        &[],
    )?;
    Ok(number)
}

/// Writes one connection with `segments` full-sized data segments to `path`; returns the
/// file's size in bytes.
pub fn write_long_connection(path: &Path, segments: u64) -> Result<u64> {
    let mut out = PcapStream::create(path)?;
    connection(&mut out, 40_000, (0x0102_0304_0506_0708, 0x1112_1314_1516_1718), segments, 1)?;
    out.finish()
}

/// Writes `connections` short connections (handshake, one data segment, close), one after the
/// other on distinct client ports, to `path`; returns the file's size in bytes.
pub fn write_handshakes(path: &Path, connections: u32) -> Result<u64> {
    let mut out = PcapStream::create(path)?;
    let mut number = 1;
    for i in 0..connections {
        let port = 1024 + (i % 64_000) as u16;
        let seed = u64::from(i) << 20;
        number = connection(&mut out, port, (seed | 0x0a, seed | 0x0b), 1, number)?;
    }
    out.finish()
}

/// How a command ran: its exit status, wall time and peak resident memory.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub status: ExitStatus,
    pub wall: Duration,
    /// Peak RSS in KiB (getrusage's `ru_maxrss` of the child).
    pub max_rss_kib: u64,
}

/// Runs `command` (stdout to the file `stdout`, stderr inherited) and measures it; `None` if it
/// was still running after `limit` (it is killed then).
pub fn measure(command: &mut Command, stdout: &Path, limit: Duration) -> Result<Option<Usage>> {
    let out = File::create(stdout).with_context(|| format!("creating {}", stdout.display()))?;
    let start = Instant::now();
    let mut child = command.stdout(out).stdin(Stdio::null()).spawn().context("spawning")?;
    let pid = i32::try_from(child.id()).context("pid")?;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, with valid pointers; the Child is not waited on after
        // it is reaped here.
        let waited = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if waited == pid {
            break;
        }
        if waited != 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if start.elapsed() > limit {
            child.kill().context("killing the command past its limit")?;
            child.wait().context("reaping the killed command")?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(Usage {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        wall: start.elapsed(),
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    }))
}
