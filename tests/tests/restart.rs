//! Hitless restart: a SIGKILLed daemon leaves the programs attached and the state pinned; a new
//! one picks it up, judges what happened while none ran, and no transfer notices.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    agent::{Daemon, Dataplane, iface_dir},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};
use serde_json::Value;

const BYTES: u64 = 6 << 20;

/// The link pins of every interface, by inode: a re-attach replaces them.
fn pinned_links(dataplane: &Dataplane<'_>, ifaces: &[&str]) -> Result<Vec<(String, u64)>> {
    use std::os::unix::fs::MetadataExt as _;
    let mut links = Vec::new();
    for iface in ifaces {
        let dir = iface_dir(dataplane.instance(), iface);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            links.push((entry.path().display().to_string(), entry.metadata()?.ino()));
        }
    }
    links.sort();
    Ok(links)
}

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
        let pending = (|| -> Result<(Value, Value)> {
            gate.wait_for(1)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let subflows = dataplane.json(&["subflows"])?;
                if let Some(join) =
                    subflows.as_array().context("subflows")?.iter().find(|s| s["hmac"] == "pending")
                {
                    return Ok((join["client"].clone(), join["server"].clone()));
                }
                ensure!(
                    Instant::now() < deadline,
                    "no join pending while the daemon was down:\n{}",
                    dataplane.run(&["subflows"])?
                );
                thread::sleep(Duration::from_millis(50));
            }
        })();
        gate.open();
        let during = during.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        let pending = pending?;
        ensure!(during.subflows >= 1 && during.bytes == 100_000);
        // Resumed, not re-attached: the pinned links are the ones the first daemon made.
        let links = pinned_links(&dataplane, &ifaces)?;
        let restarted = Daemon::start(&dataplane, &[])?;
        ensure!(
            pinned_links(&dataplane, &ifaces)? == links,
            "the restarted daemon re-attached:\n{}",
            restarted.log()
        );
        let done = long.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        ensure!(done.bytes == BYTES, "the transfer across the restart lost data");
        // The join left pending while no daemon ran gets its verdict from the new one.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let subflows = dataplane.json(&["subflows"])?;
            let judged =
                subflows.as_array().context("subflows")?.iter().any(|s| {
                    (s["client"].clone(), s["server"].clone()) == pending && s["hmac"] == "verified"
                });
            if judged {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the join pending across the restart was not judged:\n{}\n{}",
                dataplane.run(&["subflows"])?,
                restarted.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
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
