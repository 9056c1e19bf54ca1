//! Hitless restart: a SIGKILLed daemon leaves the programs attached and the state pinned; a new
//! one picks it up, judges what happened while none ran, and no transfer notices.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    agent::{Daemon, Dataplane},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};

const BYTES: u64 = 6 << 20;

#[test]
fn a_killed_daemon_restarts_and_a_transfer_across_it_loses_nothing() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    // Slow paths, so the transfer is still running when the daemon dies and comes back.
    lab.shape_client("20mbit")?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let daemon = Daemon::start(&dataplane, &[])?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5500), Proto::Mptcp, 2)?;
    let options = ClientOptions { proto: Proto::Mptcp, bytes: BYTES, wait_subflows: 1, hold: None };

    thread::scope(|scope| -> Result<()> {
        let long = scope.spawn(|| transfer(&lab.client, server.addr, options.clone()));
        thread::sleep(Duration::from_millis(500));
        daemon.kill()?;
        // A connection that joins while no daemon runs: its HMACs wait in the maps. It stays
        // open until the programs have its join's third ACK (shaped queues may hold it).
        let gate = Arc::new(Gate::default());
        let during_options = ClientOptions { bytes: 100_000, hold: Some(gate.clone()), ..options.clone() };
        let (client, server_addr) = (&lab.client, server.addr);
        let during = scope.spawn(move || transfer(client, server_addr, during_options));
        let pending = (|| -> Result<()> {
            gate.wait_for(1)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !dataplane
                .json(&["subflows"])?
                .as_array()
                .context("subflows")?
                .iter()
                .any(|s| s["hmac"] == "pending")
            {
                ensure!(
                    Instant::now() < deadline,
                    "no join pending while the daemon was down:\n{}",
                    dataplane.run(&["subflows"])?
                );
                thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })();
        gate.open();
        let during = during.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        pending?;
        ensure!(during.subflows >= 1 && during.bytes == 100_000);
        let restarted = Daemon::start(&dataplane, &[])?;
        ensure!(restarted.log().contains("resuming"), "{}", restarted.log());
        let done = long.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        ensure!(done.bytes == BYTES, "the transfer across the restart lost data");
        thread::sleep(Duration::from_millis(1500));
        ensure!(
            restarted.log().contains("judged"),
            "no pending join judged after the restart:\n{}",
            restarted.log()
        );
        Ok(())
    })?;
    server.join()?;

    let conns = dataplane.json(&["conns"])?;
    let conns = conns.as_array().context("conns")?;
    assert_eq!(conns.len(), 2, "{conns:?}");
    let data: Vec<u64> = conns.iter().filter_map(|c| c["data_bytes"]["c2s"].as_u64()).collect();
    assert!(data.contains(&BYTES) && data.contains(&100_000), "{conns:?}");
    let subflows = dataplane.json(&["subflows"])?;
    for join in subflows
        .as_array()
        .context("subflows")?
        .iter()
        .filter(|s| s["kind"] == "join" && s["state"] != "closed")
    {
        assert_eq!(join["hmac"], "verified", "{join}");
    }
    Ok(())
}
