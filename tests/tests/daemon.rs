//! Fault isolation in the daemon: a part that fails at run time (here the event log) is counted
//! and retried while the verdicts keep flowing.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mptcp_tests::{
    TempDir,
    admission::forged_join_fails_under_verified,
    agent::{Daemon, Dataplane, run_dir},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{Proto, Server},
};

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
    forged_join_fails_under_verified(&lab, &dataplane, server)?;

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

#[test]
fn verdicts_keep_flowing_while_netlink_requests_fail() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    // The client takes no announced address: its joins are the scenario's alone.
    lab.client.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "0"])?;
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let scratch = TempDir::new("nl")?;
    let config = scratch.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nserver = true\nmake-before-break = true\n[[paths.interface]]\nname = \"{}\"\n[[paths.interface]]\nname = \"{}\"\n",
            ifaces[0], ifaces[1]
        ),
    )?;
    let config = config.to_str().context("config path")?;
    let daemon = Daemon::start(&dataplane, &["--config", config, "--admission", "verified"])?;
    // The kernel keeps at most 8 MPTCP endpoints per namespace: announcing more addresses makes
    // the path manager's netlink requests fail.
    for host in 10..22 {
        lab.server.ip(&["addr", "add", &format!("203.0.113.{host}/32"), "dev", ifaces[1]])?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = dataplane.json(&["daemon-status"])?;
        if status["paths"]["errors"].as_u64() >= Some(1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("no path manager failure counted: {status}\n{}", daemon.log());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let server = Server::start(&lab.server, lab.server_addr(0, 5602), Proto::Mptcp, 1)?;
    forged_join_fails_under_verified(&lab, &dataplane, server)?;
    let status = dataplane.json(&["daemon-status"])?;
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["core"]["errors"], 0, "{status}");
    let last = status["paths"]["last_error"].as_str().unwrap_or_default();
    assert!(!last.is_empty(), "{status}");
    Ok(())
}
