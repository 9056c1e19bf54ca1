//! `mptcp-agent decode` as text.

use std::io::{self, Write};

use crate::analysis::decode::{
    AddAddrRecord, Connection, ConnectionItems, HmacCheck, MappingRecord, PacketRecord, Problem, ProblemKind,
    RecordSink, Report, Subflow, Verdict,
};

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn hex_opt<T: std::fmt::LowerHex>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| format!("{v:#x}"))
}

/// `decode` without `--json`: a summary for people; `--packets` lists each packet's options as
/// compact JSON, the shape `--json` gives them.
pub fn to_text(report: &Report) -> serde_json::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = &report.summary;
    let _ = writeln!(
        out,
        "{}: {} frames, {} TCP packets, {} with MPTCP options, {} not TCP, {} undecodable, {} malformed options",
        report.file,
        s.frames,
        s.tcp_packets,
        s.mptcp_packets,
        s.non_tcp_frames,
        s.undecodable_frames,
        s.malformed_options
    );
    if let Some(error) = &report.read_error {
        let _ = writeln!(out, "reading stopped early: {error}");
    }
    // The lists are in the order things finished, not by id.
    let by_id: std::collections::HashMap<usize, &Subflow> =
        report.subflows.iter().map(|s| (s.id, s)).collect();
    for connection in &report.connections {
        out.push_str(&connection_line(connection));
        for subflow in connection.subflows.iter().filter_map(|id| by_id.get(id)) {
            out.push_str(&subflow_line(subflow));
        }
    }
    let loose: Vec<&Subflow> = report.subflows.iter().filter(|s| s.connection.is_none()).collect();
    if !loose.is_empty() {
        out.push_str(LOOSE_HEADING);
        loose.into_iter().for_each(|subflow| out.push_str(&subflow_line(subflow)));
    }
    report.add_addrs.iter().for_each(|add| out.push_str(&add_addr_line(add)));
    report.hmac_checks.iter().for_each(|check| out.push_str(&hmac_line(check)));
    let _ = writeln!(
        out,
        "HMACs: {} verified, {} failed, {} unknown; {} connections, {} subflows, {} fell back",
        s.hmac_verified, s.hmac_failed, s.hmac_unknown, s.connections, s.subflows, s.fallbacks
    );
    for line in report.mappings.iter().filter_map(checksum_line) {
        out.push_str(&line);
    }
    let _ = writeln!(
        out,
        "DSS checksums: {} verified, {} failed, {} unknown",
        s.checksum_verified, s.checksum_failed, s.checksum_unknown
    );
    for problem in report.undecodable_frames.iter().chain(&report.malformed_options) {
        out.push_str(&problem_line(problem));
    }
    if let Some(packets) = &report.packets {
        for packet in packets {
            out.push_str(&packet_line(packet)?);
        }
    }
    Ok(out)
}

const LOOSE_HEADING: &str = "subflows of no known connection:\n";

fn connection_line(connection: &Connection) -> String {
    format!(
        "connection {} (MPTCP v{}): initiator key {} token {} IDSN {}; responder key {} token {} IDSN {}\n",
        connection.id,
        connection.version,
        hex_opt(connection.initiator_key),
        hex_opt(connection.initiator_token),
        opt(connection.initiator_idsn),
        hex_opt(connection.responder_key),
        hex_opt(connection.responder_token),
        opt(connection.responder_idsn),
    )
}

fn subflow_line(subflow: &Subflow) -> String {
    let mut line = format!(
        "  subflow {}: {} -> {}, {:?}, {} packets from frame {}",
        subflow.id, subflow.initiator, subflow.responder, subflow.kind, subflow.packets, subflow.first_frame
    );
    if let Some(join) = &subflow.join {
        line.push_str(&format!(
            ", token {:#010x}, address IDs {} -> {}, backup {} / {}",
            join.token,
            join.initiator_addr_id,
            opt(join.responder_addr_id),
            join.initiator_backup,
            opt(join.responder_backup)
        ));
    }
    if let Some(reason) = &subflow.fallback {
        line.push_str(&format!(", FELL BACK: {reason}"));
    }
    line.push('\n');
    line
}

fn add_addr_line(add: &AddAddrRecord) -> String {
    format!(
        "ADD_ADDR frame {} from {}: id {} {}{}{}\n",
        add.frame,
        add.sender,
        add.addr_id,
        add.addr,
        add.port.map(|p| format!(" port {p}")).unwrap_or_default(),
        if add.echo { " (echo)" } else { "" }
    )
}

fn hmac_line(check: &HmacCheck) -> String {
    format!(
        "HMAC {:?} frame {} (subflow {}): {:?}{}\n",
        check.option,
        check.frame,
        check.subflow,
        check.verdict,
        check.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
    )
}

fn problem_line(problem: &Problem) -> String {
    format!("frame {}: {}\n", problem.frame, problem.error)
}

/// A finished connection (or subflow of no known connection) as `to_text` shows its items.
fn items_text(items: &ConnectionItems) -> String {
    let mut out = match &items.connection {
        Some(connection) => connection_line(connection),
        None => LOOSE_HEADING.to_owned(),
    };
    items.subflows.iter().for_each(|subflow| out.push_str(&subflow_line(subflow)));
    items.add_addrs.iter().for_each(|add| out.push_str(&add_addr_line(add)));
    items.hmac_checks.iter().for_each(|check| out.push_str(&hmac_line(check)));
    out
}

/// A packet's options as compact JSON, the shape `--json` gives them.
fn packet_line(packet: &PacketRecord) -> serde_json::Result<String> {
    Ok(format!(
        "frame {} {} -> {} [{}] {}{}\n",
        packet.frame,
        packet.src,
        packet.dst,
        packet.flags,
        serde_json::to_string(&packet.options)?,
        if packet.errors.is_empty() { String::new() } else { format!(" errors {:?}", packet.errors) }
    ))
}

/// A DSS checksum that is not verified; a verified one, or none, shows only in the counts.
fn checksum_line(mapping: &MappingRecord) -> Option<String> {
    let check = mapping.checksum.as_ref().filter(|check| check.verdict != Verdict::Verified)?;
    Some(format!(
        "DSS checksum frame {} (subflow {}, DSN {}): {:?}, received {:#06x}, expected {}{}\n",
        mapping.frame,
        mapping.subflow,
        mapping.dsn,
        check.verdict,
        check.received,
        hex_opt(check.expected),
        check.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
    ))
}

/// `decode` as text while it runs: each packet's line (`--packets`) as it is decoded, each DSS
/// checksum not verified once its verdict is final, each problem as it is found and each
/// connection's lines once it has finished, in that order as the capture is read; then the
/// summary.
pub struct TextWriter<W: Write> {
    out: W,
}

impl<W: Write> TextWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// The summary, once the capture has been read; gives `out` back.
    pub fn finish(mut self, report: &Report) -> io::Result<W> {
        self.out.write_all(to_text(report)?.as_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> RecordSink for TextWriter<W> {
    type Error = io::Error;

    fn packet(&mut self, packet: PacketRecord) -> io::Result<()> {
        self.out.write_all(packet_line(&packet)?.as_bytes())
    }

    fn mapping(&mut self, mapping: MappingRecord) -> io::Result<()> {
        match checksum_line(&mapping) {
            Some(line) => self.out.write_all(line.as_bytes()),
            None => Ok(()),
        }
    }

    fn problem(&mut self, _kind: ProblemKind, problem: Problem) -> io::Result<()> {
        self.out.write_all(problem_line(&problem).as_bytes())
    }

    fn connection(&mut self, items: ConnectionItems) -> io::Result<()> {
        self.out.write_all(items_text(&items).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::decode::{Subflow, SubflowKind, Summary};

    #[test]
    fn a_fallback_is_shown() {
        let subflow = Subflow {
            id: 0,
            connection: None,
            initiator: "192.0.2.1:40000".parse().unwrap(),
            responder: "192.0.2.2:80".parse().unwrap(),
            kind: SubflowKind::MpCapable,
            first_frame: 1,
            packets: 3,
            version: Some(1),
            join: None,
            fallback: Some("the SYN-ACK carries no MP_CAPABLE".to_owned()),
            data_acks: Default::default(),
        };
        let report = Report {
            file: "capture.pcap".to_owned(),
            read_error: None,
            summary: Summary { subflows: 1, fallbacks: 1, ..Summary::default() },
            connections: Vec::new(),
            subflows: vec![subflow],
            add_addrs: Vec::new(),
            hmac_checks: Vec::new(),
            mappings: Vec::new(),
            undecodable_frames: Vec::new(),
            malformed_options: Vec::new(),
            packets: None,
        };
        let text = to_text(&report).unwrap();
        assert!(
            text.contains(
                "subflow 0: 192.0.2.1:40000 -> 192.0.2.2:80, MpCapable, 3 packets from frame 1, FELL BACK"
            ),
            "{text}"
        );
        assert!(text.contains("1 subflows, 1 fell back"), "{text}");
    }
}
