//! Join admission at XDP: unknown tokens, forged HMACs and join floods, with crafted packets
//! next to real kernel MPTCP traffic that must keep working.

use std::{sync::Arc, thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    admission::{forged_join_fails_under_verified, second_path},
    agent::{Daemon, Dataplane},
    craft::{self, Path},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};
use serde_json::Value;

fn counter(stats: &Value, direction: &str, name: &str) -> u64 {
    stats[direction][name].as_u64().unwrap_or(0)
}

/// The kernel's MPTcpExtMPJoinSynRx counter in the server namespace.
fn kernel_join_syns(lab: &DualHomedLab) -> Result<u64> {
    let out = lab.server.exec("nstat", &["-az", "MPTcpExtMPJoinSynRx"])?;
    out.lines()
        .find_map(|line| line.strip_prefix("MPTcpExtMPJoinSynRx")?.split_whitespace().next()?.parse().ok())
        .context("MPTcpExtMPJoinSynRx in nstat output")
}

fn mptcp_client(bytes: u64, hold: Option<Arc<Gate>>) -> ClientOptions {
    ClientOptions { proto: Proto::Mptcp, bytes, wait_subflows: 1, hold }
}

#[test]
fn known_token_drops_joins_with_unknown_tokens_and_admits_real_ones() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &["--admission", "known-token"])?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5400), Proto::Mptcp, 2)?;

    transfer(&lab.client, server.addr, mptcp_client(100_000, None))?;
    let kernel_before = kernel_join_syns(&lab)?;
    craft::join_syns(&second_path(&lab)?, 5400, 25, None, 40000)?;
    thread::sleep(Duration::from_millis(300));
    let stats = dataplane.stats(ifaces[1])?;
    assert_eq!(counter(&stats, "ingress", "joins_dropped_unknown_token"), 25);
    assert_eq!(kernel_join_syns(&lab)?, kernel_before, "a forged join reached the kernel");
    // A real join after the flood still passes.
    let done = transfer(&lab.client, server.addr, mptcp_client(100_000, None))?;
    ensure!(done.subflows >= 1);
    server.join()?;
    let stats = dataplane.stats(ifaces[1])?;
    assert_eq!(counter(&stats, "ingress", "joins_admitted"), 2, "the two real joins");
    assert_eq!(counter(&stats, "ingress", "joins_dropped_unknown_token"), 25);
    Ok(())
}

#[test]
fn verified_flags_a_forged_join_hmac_and_drops_its_subflow() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &["--admission", "verified"])?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5401), Proto::Mptcp, 1)?;
    forged_join_fails_under_verified(&lab, &dataplane, server)
}

#[test]
fn a_join_flood_is_rate_limited_while_established_subflows_flow() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &["--join-rate", "5", "--join-burst", "5"])?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5402), Proto::Mptcp, 1)?;
    // The flood comes from the client's first address; its real join from the second.
    let first = &lab.paths[0];
    let flood = Path {
        ns: &lab.client,
        iface: &first.client_if,
        mac: craft::mac(&lab.server, &first.server_if)?,
        src: first.client_addr,
        dst: first.server_addr,
    };
    const FLOOD: usize = 200;
    thread::scope(|scope| -> Result<()> {
        let flooder = scope.spawn(|| craft::join_syns(&flood, 5402, FLOOD, None, 42000));
        let done = transfer(&lab.client, server.addr, mptcp_client(8 << 20, None))?;
        ensure!(done.subflows >= 1 && done.bytes == 8 << 20);
        flooder.join().map_err(|_| anyhow::anyhow!("flooder panicked"))?
    })?;
    server.join()?;
    let stats = dataplane.stats(ifaces[0])?;
    let dropped = counter(&stats, "ingress", "joins_dropped_rate_limit");
    let admitted = counter(&stats, "ingress", "joins_admitted");
    assert_eq!(dropped + admitted, FLOOD as u64, "{stats}");
    assert!(dropped >= (FLOOD as u64) * 3 / 4, "only {dropped} of {FLOOD} flood joins dropped");
    // The real join, from the other address, was never limited.
    assert_eq!(counter(&dataplane.stats(ifaces[1])?, "ingress", "joins_dropped_rate_limit"), 0);
    Ok(())
}
