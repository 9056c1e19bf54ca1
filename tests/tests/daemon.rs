//! Fault isolation in the daemon: a part that fails at run time (here the event log) is counted
//! and retried while the verdicts keep flowing.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mptcp_tests::{
    agent::{Daemon, Dataplane, run_dir},
    craft::{self, Path},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};
use serde_json::Value;

/// Crafted packets over the client's second path to the server's first address, the way the
/// client's own joins go.
fn second_path<'a>(lab: &'a DualHomedLab) -> Result<Path<'a>> {
    let path = &lab.paths[1];
    Ok(Path {
        ns: &lab.client,
        iface: &path.client_if,
        mac: craft::mac(&lab.server, &path.server_if)?,
        src: path.client_addr,
        dst: lab.paths[0].server_addr,
    })
}

#[test]
fn verdicts_keep_flowing_while_the_event_log_cannot_be_written() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    // A directory where the log file should be: every open fails (EISDIR). The dataplane's drop
    // removes the run directory with it.
    let run = run_dir(dataplane.instance());
    std::fs::create_dir_all(run.join("events.jsonl"))?;
    let daemon = Daemon::start(&dataplane, &["--admission", "verified"])?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5601), Proto::Mptcp, 1)?;
    let gate = Arc::new(Gate::default());
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: 200_000, wait_subflows: 1, hold: Some(gate.clone()) };

    thread::scope(|scope| -> Result<()> {
        let client = scope.spawn(|| transfer(&lab.client, server.addr, options));
        let forged = (|| -> Result<()> {
            gate.wait_for(1)?;
            let conns = dataplane.json(&["conns"])?;
            let token = conns[0]["server_token"].as_str().context("a live connection")?;
            let token = u32::from_str_radix(token.trim_start_matches("0x"), 16)?;
            craft::forged_join(&second_path(&lab)?, 5601, token, 41000, 3)?;
            thread::sleep(Duration::from_millis(500));
            Ok(())
        })();
        gate.open();
        let done = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        ensure!(done.bytes == 200_000, "the real connection lost data");
        forged
    })?;
    server.join()?;

    let subflows = dataplane.json(&["subflows"])?;
    let subflows = subflows.as_array().context("subflows")?;
    let forged = subflows
        .iter()
        .find(|s| s["client"].as_str().is_some_and(|c| c.ends_with(":41000")))
        .context("forged subflow")?;
    assert_eq!(forged["hmac"], "failed");
    let real: Vec<&Value> = subflows.iter().filter(|s| s["kind"] == "join" && s != &forged).collect();
    ensure!(!real.is_empty() && real.iter().all(|s| s["hmac"] == "verified"), "{real:?}");
    let stats = dataplane.stats(ifaces[1])?;
    assert!(stats["ingress"]["packets_dropped_hmac"].as_u64().unwrap_or(0) >= 3, "{stats}");

    // The log's failures are counted and retried; nothing was written; events were processed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = dataplane.json(&["daemon-status"])?;
        let log = &status["event_log"];
        if log["errors"].as_u64() >= Some(2) && log["retries"].as_u64() >= Some(1) {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the log's failures were not counted: {status}\n{}", daemon.log());
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["event_log"]["written"], 0, "{status}");
    assert!(status["core"]["events"].as_u64() > Some(0), "{status}");
    assert_eq!(status["core"]["errors"], 0, "{status}");
    let last = status["event_log"]["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("Is a directory"), "{status}");
    let text = dataplane.run(&["daemon-status"])?;
    assert!(text.contains("event log") && text.contains("Is a directory"), "{text}");

    // SIGTERM stops every part promptly, even the one in backoff.
    let started = Instant::now();
    drop(daemon);
    ensure!(started.elapsed() < Duration::from_secs(3), "stopping took {:?}", started.elapsed());
    ensure!(!run.join("ready").exists(), "the ready file outlived the daemon");
    let status = dataplane.json(&["daemon-status"])?;
    assert_eq!(status["running"], false, "{status}");
    Ok(())
}
