//! `decode` and `replay` read a capture frame by frame: a capture four times as long costs
//! (almost) no more memory, and `decode` forgets a connection once it has ended, so four times
//! as many short connections cost (almost) no more either. Generated captures, measured with
//! the child's getrusage peak RSS.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    TempDir, agent,
    synthetic::{self, Usage},
};

/// Runs `mptcp-agent ARGS FILE --json` on `file` and returns its usage and parsed output.
fn run(scratch: &TempDir, args: &[&str], file: &std::path::Path) -> Result<(Usage, serde_json::Value)> {
    let stdout = scratch.path().join("out.json");
    let mut command = Command::new(agent::binary());
    command.args(args).arg(file).arg("--json");
    let usage = synthetic::measure(&mut command, &stdout, Duration::from_secs(120))?
        .with_context(|| format!("mptcp-agent {args:?} still running after 120 s"))?;
    ensure!(usage.status.success(), "mptcp-agent {args:?} failed: {:?}", usage.status);
    let output = std::fs::read(&stdout).context("reading the output")?;
    Ok((usage, serde_json::from_slice(&output).context("parsing the output")?))
}

/// Segments of the shorter capture (about 8 MB); the longer one has four times as many.
const SEGMENTS: u64 = 5_000;

#[test]
fn decode_and_replay_memory_does_not_grow_with_the_capture() -> Result<()> {
    let scratch = TempDir::new("csz")?;
    let (short, long) = (scratch.path().join("short.pcap"), scratch.path().join("long.pcap"));
    let short_bytes = synthetic::write_long_connection(&short, SEGMENTS)?;
    let long_bytes = synthetic::write_long_connection(&long, 4 * SEGMENTS)?;

    for command in ["decode", "replay"] {
        let (short_usage, short_out) = run(&scratch, &[command], &short)?;
        let (long_usage, long_out) = run(&scratch, &[command], &long)?;
        // The output is the whole capture's, one connection without fallback.
        if command == "decode" {
            let frames = |out: &serde_json::Value| out["summary"]["frames"].as_u64();
            ensure!(frames(&long_out) > frames(&short_out), "{:?}", long_out["summary"]);
            ensure!(long_out["summary"]["connections"] == 1, "{:?}", long_out["summary"]);
            ensure!(long_out["summary"]["fallbacks"] == 0, "{:?}", long_out["summary"]);
            ensure!(long_out["mappings"].as_array().map(Vec::len) == Some(4 * SEGMENTS as usize));
        } else {
            ensure!(long_out["packets"].as_u64() > short_out["packets"].as_u64());
            ensure!(long_out["connections"][0]["fallback"] == false, "{long_out}");
        }
        let extra_kib = long_usage.max_rss_kib.saturating_sub(short_usage.max_rss_kib);
        let extra_file_kib = (long_bytes - short_bytes) / 1024;
        eprintln!(
            "{command}: {short_bytes} bytes: {} KiB in {:?}; {long_bytes} bytes: {} KiB in {:?}",
            short_usage.max_rss_kib, short_usage.wall, long_usage.max_rss_kib, long_usage.wall
        );
        // Reading the capture into memory cost twice its size; streamed, the extra segments
        // cost nothing: decode writes each mapping once final, replay keeps nothing per packet.
        let bound = extra_file_kib / 20;
        ensure!(
            extra_kib < bound,
            "{command}: {extra_kib} KiB more for {extra_file_kib} KiB more capture (bound {bound} KiB)"
        );
    }
    Ok(())
}

/// Connections of the shorter many-connections capture (about 10 MB); the longer one has four
/// times as many.
const CONNECTIONS: u32 = 5_000;

/// What `decode` kept per connection before it forgot ended ones: about 1.2 KiB (65 MiB for
/// 50,000, 7 MiB of it the agent's own). Now nothing is kept of an ended connection; the bound
/// leaves room for allocator noise and is still a twelfth of the old cost.
const BYTES_PER_EXTRA_CONNECTION: u64 = 100;

#[test]
fn decode_memory_does_not_grow_with_ended_connections() -> Result<()> {
    let scratch = TempDir::new("cszc")?;
    let (few, many) = (scratch.path().join("few.pcap"), scratch.path().join("many.pcap"));
    let few_bytes = synthetic::write_handshakes(&few, CONNECTIONS)?;
    let many_bytes = synthetic::write_handshakes(&many, 4 * CONNECTIONS)?;
    let (few_usage, few_out) = run(&scratch, &["decode"], &few)?;
    let (many_usage, many_out) = run(&scratch, &["decode"], &many)?;
    for (out, connections) in [(&few_out, CONNECTIONS), (&many_out, 4 * CONNECTIONS)] {
        let summary = &out["summary"];
        ensure!(summary["connections"] == connections && summary["subflows"] == connections, "{summary}");
        ensure!(summary["fallbacks"] == 0, "{summary}");
        ensure!(out["connections"].as_array().map(Vec::len) == Some(connections as usize));
        ensure!(out["subflows"].as_array().map(Vec::len) == Some(connections as usize));
    }
    let extra_kib = many_usage.max_rss_kib.saturating_sub(few_usage.max_rss_kib);
    let extra_connections = u64::from(3 * CONNECTIONS);
    eprintln!(
        "decode: {CONNECTIONS} connections, {few_bytes} bytes: {} KiB in {:?}; {} connections, {many_bytes} \
         bytes: {} KiB in {:?}; {} bytes per extra connection",
        few_usage.max_rss_kib,
        few_usage.wall,
        4 * CONNECTIONS,
        many_usage.max_rss_kib,
        many_usage.wall,
        extra_kib * 1024 / extra_connections
    );
    let bound = extra_connections * BYTES_PER_EXTRA_CONNECTION / 1024;
    ensure!(
        extra_kib < bound,
        "decode: {extra_kib} KiB more for {extra_connections} more connections (bound {bound} KiB)"
    );
    // replay's table lists every connection the tracker holds: measured, not bounded here.
    let (few_replay, _) = run(&scratch, &["replay"], &few)?;
    let (many_replay, many_replayed) = run(&scratch, &["replay"], &many)?;
    eprintln!(
        "replay: {CONNECTIONS} connections: {} KiB; {}: {} KiB ({} in its table)",
        few_replay.max_rss_kib,
        4 * CONNECTIONS,
        many_replay.max_rss_kib,
        many_replayed["connections"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}
