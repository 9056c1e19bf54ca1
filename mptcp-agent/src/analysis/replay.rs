//! `mptcp-agent replay FILE.pcap`: a capture fed frame by frame through a private copy of the
//! XDP program (BPF_PROG_TEST_RUN), with the daemon's event processing, then the resulting
//! connection table.

use std::{io::Read, net::SocketAddr, path::Path};

use anyhow::Result;
use mptcp_common::maps::{
    Connection, FlowKey, Subflow, connection_flags, fallback_reason, hmac_verdict, subflow_kind,
};
use serde::Serialize;

use crate::{
    analysis::capture_file::{self, CaptureReader},
    bpf::XDP_PROGRAM,
    dataplane::stats,
    dataplane::tables::{DataBytes, Hex64, Snapshot, TableError, Tables, Token, endpoints, state_name},
    dataplane::testrun::{TestHarness, TrackerHarness},
};

// Fields are in alphabetical order, the order the JSON had when it was built as a
// `serde_json::Map`.

/// `mptcp-agent replay --json` (see the README for the format).
#[derive(Debug, Serialize)]
pub struct Replay {
    pub connections: Vec<TableConnection>,
    /// As `mptcp-agent stats --json` prints them, for the interface "replay".
    pub counters: serde_json::Value,
    pub key_checks: KeyChecks,
    pub packets: u64,
    pub read_error: Option<String>,
    pub skipped_frames: u64,
}

/// The daemon's comparison of the keys it derived with the ones the program recorded.
#[derive(Debug, Serialize)]
pub struct KeyChecks {
    pub matched: u32,
    pub mismatched: u32,
}

/// `mptcp-agent table`: the live connection table, in the replay format.
#[derive(Debug, Serialize)]
pub struct Table {
    pub connections: Vec<TableConnection>,
}

/// One connection; keys, tokens and IDSNs are hex strings, `null` until the key is seen.
#[derive(Debug, Serialize)]
pub struct TableConnection {
    pub client_idsn: Option<Hex64>,
    pub client_key: Option<Hex64>,
    pub client_token: Option<Token>,
    pub data_bytes: DataBytes,
    pub fallback: bool,
    pub reinjections: u64,
    pub server_idsn: Option<Hex64>,
    pub server_key: Option<Hex64>,
    pub server_token: Option<Token>,
    pub subflows: Vec<TableSubflow>,
}

#[derive(Debug, Serialize)]
pub struct TableSubflow {
    pub backup: bool,
    pub client: SocketAddr,
    pub hmac: &'static str,
    pub kind: &'static str,
    pub packets: u64,
    pub server: SocketAddr,
    pub state: &'static str,
}

/// Replays `path` and returns the resulting table.
pub fn replay(path: &Path) -> Result<Replay> {
    let mut capture = capture_file::open(path)?;
    let (harness, skipped) = run_capture(&mut capture)?;
    let counters = harness.counters()?;
    let (mut matched, mut mismatched) = (0, 0);
    for (token, _) in harness.tables.connections()? {
        let checks = harness.tables.checks(token)?;
        (matched, mismatched) = (matched + checks.keys_matched, mismatched + checks.keys_mismatched);
    }
    Ok(Replay {
        connections: table(&harness.tables)?.connections,
        counters: stats::to_json("replay", &counters),
        key_checks: KeyChecks { matched, mismatched },
        packets: capture.frames_read(),
        read_error: capture.read_error().map(str::to_owned),
        skipped_frames: skipped,
    })
}

/// Runs every frame of `capture`, as it is read, through a fresh tracker, its events processed
/// after each frame; returns the tracker and how many frames it could not be given.
pub fn run_capture<R: Read>(capture: &mut CaptureReader<R>) -> Result<(TrackerHarness, u64)> {
    let mut harness = TestHarness::tracker()?;
    let mut skipped = 0u64;
    for frame in capture.by_ref() {
        // Test runs of XDP need at least an Ethernet header.
        let Some(ethernet) = frame.to_ethernet().ok().filter(|ethernet| ethernet.len() >= 14) else {
            skipped += 1;
            continue;
        };
        harness.run_xdp(XDP_PROGRAM, &ethernet, 1)?;
        // Events in packet order, as the daemon sees them: a join's verdict needs its
        // connection's keys, which an earlier event may bring.
        harness.process_events();
    }
    Ok((harness, skipped))
}

/// The connection table in the replay format.
pub fn table(tables: &Tables) -> Result<Table, TableError> {
    let snapshot = Snapshot::read(tables)?;
    let mut connections: Vec<TableConnection> = snapshot
        .connections
        .iter()
        .map(|tracked| connection(Some(&tracked.connection), &tracked.subflows))
        .collect();
    // Initial subflows no connection claims: MPTCP that fell back before any key crossed.
    connections.extend(
        snapshot
            .orphans
            .iter()
            .filter(|(_, subflow)| subflow.kind == subflow_kind::INITIAL)
            .map(|orphan| connection(None, std::slice::from_ref(orphan))),
    );
    Ok(Table { connections })
}

fn connection(connection: Option<&Connection>, subflows: &[(FlowKey, Subflow)]) -> TableConnection {
    let has = |flag| connection.is_some_and(|c| c.flags & flag != 0);
    let client = has(connection_flags::CLIENT_KEY);
    let server = has(connection_flags::SERVER_KEY);
    let fallback = has(connection_flags::FALLBACK)
        || subflows.iter().any(|(_, subflow)| subflow.fallback != fallback_reason::NONE);
    TableConnection {
        client_idsn: connection.filter(|_| client).map(|c| Hex64(c.client_idsn)),
        client_key: connection.filter(|_| client).map(|c| Hex64(c.client_key)),
        client_token: connection.filter(|_| client).map(|c| Token(c.client_token)),
        data_bytes: DataBytes {
            c2s: connection.map_or(0, |c| c.data_bytes[0]),
            s2c: connection.map_or(0, |c| c.data_bytes[1]),
        },
        fallback,
        reinjections: connection.map_or(0, |c| c.reinjections),
        server_idsn: connection.filter(|_| server).map(|c| Hex64(c.server_idsn)),
        server_key: connection.filter(|_| server).map(|c| Hex64(c.server_key)),
        server_token: connection.filter(|_| server).map(|c| Token(c.server_token)),
        subflows: subflows.iter().map(|(key, subflow)| table_subflow(key, subflow)).collect(),
    }
}

fn table_subflow(key: &FlowKey, subflow: &Subflow) -> TableSubflow {
    // The connection's client end of a subflow the server opened is the SYN's receiver.
    let (syn_sender, syn_receiver) = endpoints(key, subflow);
    let (client, server) =
        if subflow.server_initiated != 0 { (syn_receiver, syn_sender) } else { (syn_sender, syn_receiver) };
    let backup =
        (subflow.dir[0].flags | subflow.dir[1].flags) & mptcp_common::maps::direction_flags::BACKUP != 0;
    TableSubflow {
        backup,
        client,
        hmac: match subflow.hmac {
            hmac_verdict::VERIFIED => "verified",
            hmac_verdict::FAILED => "failed",
            _ => "unknown",
        },
        kind: match subflow.kind {
            subflow_kind::JOIN => "join",
            // A subflow seen mid-stream has no handshake to tell; it carries the connection.
            _ => "initial",
        },
        packets: subflow.dir[0].packets + subflow.dir[1].packets,
        server,
        state: state_name(subflow.state),
    }
}

/// A value as JSON writes it, quotes and `null` included, as the text has always shown them.
fn json(value: &impl Serialize) -> serde_json::Result<String> {
    serde_json::to_string(value)
}

/// The replay as text lines for humans.
pub fn to_text(report: &Replay) -> serde_json::Result<String> {
    let mut out = format!("{} packets\n", report.packets);
    for connection in &report.connections {
        out.push_str(&format!(
            "connection server token {} client token {} fallback {} data c2s {} s2c {} reinjections {}\n",
            json(&connection.server_token)?,
            json(&connection.client_token)?,
            connection.fallback,
            connection.data_bytes.c2s,
            connection.data_bytes.s2c,
            connection.reinjections
        ));
        for subflow in &connection.subflows {
            out.push_str(&format!(
                "  {} {} -> {} backup {} packets {} hmac {}\n",
                json(&subflow.kind)?,
                json(&subflow.client)?,
                json(&subflow.server)?,
                subflow.backup,
                subflow.packets,
                json(&subflow.hmac)?
            ));
        }
    }
    Ok(out)
}
