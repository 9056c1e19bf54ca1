//! `mptcp-agent replay FILE.pcap`: a capture fed frame by frame through a private copy of the
//! XDP program (BPF_PROG_TEST_RUN), with the daemon's event processing, then the resulting
//! connection table.

use std::path::Path;

use anyhow::{Context as _, Result};
use mptcp_common::maps::{
    Connection, FlowKey, Subflow, connection_flags, fallback_reason, hmac_verdict, subflow_kind,
};
use serde_json::{Value, json};

use crate::{
    capture_file,
    loader::XDP_PROGRAM,
    stats,
    tables::{Snapshot, Tables, endpoints, state_name},
    testrun::TestHarness,
};

/// Replays `path` and returns the table as JSON (see the README for the format).
pub fn replay(path: &Path) -> Result<Value> {
    let capture = capture_file::read(path)?;
    let mut harness = TestHarness::tracker()?;
    let mut skipped = 0u64;
    for frame in &capture.frames {
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
    let counters = harness.counters()?;
    let (matched, mismatched) = harness
        .tables
        .connections()
        .iter()
        .map(|(token, _)| harness.tables.checks(*token))
        .fold((0, 0), |(m, x), c| (m + c.keys_matched, x + c.keys_mismatched));
    Ok(json!({
        "packets": capture.frames.len(),
        "connections": connections_json(&harness.tables),
        "skipped_frames": skipped,
        "read_error": capture.read_error,
        "counters": stats::to_json("replay", &counters),
        "key_checks": { "matched": matched, "mismatched": mismatched },
    }))
}

/// The connection table in the replay format; `mptcp-agent table` prints the live one.
pub fn connections_json(tables: &Tables) -> Vec<Value> {
    let snapshot = Snapshot::read(tables);
    let mut connections: Vec<Value> = snapshot
        .connections
        .iter()
        .map(|tracked| connection_json(Some(&tracked.connection), &tracked.subflows))
        .collect();
    // Initial subflows no connection claims: MPTCP that fell back before any key crossed.
    connections.extend(
        snapshot
            .orphans
            .iter()
            .filter(|(_, subflow)| subflow.kind == subflow_kind::INITIAL)
            .map(|orphan| connection_json(None, std::slice::from_ref(orphan))),
    );
    connections
}

fn connection_json(connection: Option<&Connection>, subflows: &[(FlowKey, Subflow)]) -> Value {
    let has = |flag| connection.is_some_and(|c| c.flags & flag != 0);
    let hex64 = |known: bool, value: fn(&Connection) -> u64| {
        connection.filter(|_| known).map(|c| format!("0x{:016x}", value(c)))
    };
    let hex32 = |known: bool, value: fn(&Connection) -> u32| {
        connection.filter(|_| known).map(|c| format!("0x{:08x}", value(c)))
    };
    let client = has(connection_flags::CLIENT_KEY);
    let server = has(connection_flags::SERVER_KEY);
    let fallback = has(connection_flags::FALLBACK)
        || subflows.iter().any(|(_, subflow)| subflow.fallback != fallback_reason::NONE);
    json!({
        "client_key": hex64(client, |c| c.client_key),
        "server_key": hex64(server, |c| c.server_key),
        "client_token": hex32(client, |c| c.client_token),
        "server_token": hex32(server, |c| c.server_token),
        "client_idsn": hex64(client, |c| c.client_idsn),
        "server_idsn": hex64(server, |c| c.server_idsn),
        "fallback": fallback,
        "subflows": subflows.iter().map(|(key, subflow)| subflow_json(key, subflow)).collect::<Vec<_>>(),
        "data_bytes": {
            "c2s": connection.map_or(0, |c| c.data_bytes[0]),
            "s2c": connection.map_or(0, |c| c.data_bytes[1]),
        },
        "reinjections": connection.map_or(0, |c| c.reinjections),
    })
}

fn subflow_json(key: &FlowKey, subflow: &Subflow) -> Value {
    // The connection's client end of a subflow the server opened is the SYN's receiver.
    let (syn_sender, syn_receiver) = endpoints(key, subflow);
    let (client, server) =
        if subflow.server_initiated != 0 { (syn_receiver, syn_sender) } else { (syn_sender, syn_receiver) };
    let backup =
        (subflow.dir[0].flags | subflow.dir[1].flags) & mptcp_common::maps::direction_flags::BACKUP != 0;
    let hmac = match subflow.hmac {
        hmac_verdict::VERIFIED => "verified",
        hmac_verdict::FAILED => "failed",
        _ => "unknown",
    };
    json!({
        "client": client.to_string(),
        "server": server.to_string(),
        "kind": match subflow.kind {
            subflow_kind::JOIN => "join",
            // A subflow seen mid-stream has no handshake to tell; it carries the connection.
            _ => "initial",
        },
        "backup": backup,
        "packets": subflow.dir[0].packets + subflow.dir[1].packets,
        "hmac": hmac,
        "state": state_name(subflow.state),
    })
}

/// Reads the replay of `path` as text lines for humans.
pub fn to_text(report: &Value) -> Result<String> {
    let mut out = format!("{} packets\n", report["packets"]);
    for connection in report["connections"].as_array().context("connections")? {
        out.push_str(&format!(
            "connection server token {} client token {} fallback {} data c2s {} s2c {} reinjections {}\n",
            connection["server_token"],
            connection["client_token"],
            connection["fallback"],
            connection["data_bytes"]["c2s"],
            connection["data_bytes"]["s2c"],
            connection["reinjections"]
        ));
        for subflow in connection["subflows"].as_array().context("subflows")? {
            out.push_str(&format!(
                "  {} {} -> {} backup {} packets {} hmac {}\n",
                subflow["kind"],
                subflow["client"],
                subflow["server"],
                subflow["backup"],
                subflow["packets"],
                subflow["hmac"]
            ));
        }
    }
    Ok(out)
}
