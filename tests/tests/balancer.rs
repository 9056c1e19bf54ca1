//! The token-steering load balancer against real kernel MPTCP: every join on the backend that
//! owns its connection (backends' `ss -M` and nstat), the hash-only baseline's refusals, and
//! backends drained, removed and added under live connections.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    balancer::{
        Balancer, BalancerLab, BalancerLabOptions, backend_connections, backend_counter, connect, counter,
        join_all, nstat_sum, start_servers, wait_joins_answered,
    },
    kernel,
    lock::LabLock,
    netns::Netns,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};
use serde_json::Value;

/// MPTCP servers on both VIPs of every backend, until stopped.
fn start_lab_servers(lab: &BalancerLab, proto: Proto) -> Result<Vec<Server>> {
    start_servers(&backend_namespaces(lab), &[lab.vip(0), lab.vip(1)], proto)
}

fn backend_namespaces(lab: &BalancerLab) -> Vec<&Netns> {
    lab.backends.iter().map(|b| &b.ns).collect()
}

const BYTES: u64 = 20_000;

#[test]
fn token_steering_puts_every_join_on_the_owning_backend() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    let before: Vec<u64> = kernel::loaded_maps()?.into_iter().map(|(id, _)| id).collect();
    let balancer = Balancer::start(&lab, "token")?;
    // The balancer's object brings only its own maps: none of the tracker's.
    let created: Vec<String> = kernel::loaded_maps()?
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .map(|(_, name)| name)
        .collect();
    for map in ["LB_TOKENS", "LB_HALF_OPEN"] {
        assert!(created.iter().any(|name| name == map), "no {map} among {created:?}");
    }
    assert!(
        !created
            .iter()
            .any(|name| ["SUBFLOWS", "CONNECTIONS", "EVENTS", "BASELINE_FLOWS"].contains(&name.as_str())),
        "lb start created maps of other objects: {created:?}"
    );
    let servers = start_lab_servers(&lab, Proto::Mptcp)?;
    let per_family = 100;
    let total = 2 * per_family;
    let gate = Arc::new(Gate::default());
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: BYTES, wait_subflows: 1, hold: Some(gate.clone()) };
    let (transfers, connections, stats) = thread::scope(|scope| -> Result<_> {
        // Bursts of 25 connections at once: each joins as soon as it is established.
        let mut handles = connect(scope, &lab.client, lab.vip(0), per_family, 25, &options)?;
        handles.extend(connect(scope, &lab.client, lab.vip(1), per_family, 25, &options)?);
        let connections = backend_connections(&backend_namespaces(&lab))?;
        let stats = balancer.stats()?;
        gate.open();
        Ok((join_all(handles)?, connections, stats))
    })?;
    for server in servers {
        server.stop()?;
    }

    ensure!(transfers.iter().all(|t| t.subflows >= 1), "a client reported no joined subflow");
    let mut established = 0;
    for (backend, connections) in lab.backends.iter().zip(&connections) {
        for (token, kinds) in connections {
            ensure!(
                kinds.iter().filter(|k| *k == "M").count() == 1
                    && kinds.iter().filter(|k| *k == "J").count() == 1,
                "{}: connection {token:08x} has subflows {kinds:?}, expected its initial one and its join",
                backend.name
            );
        }
        // Each backend got its share (Maglev) and the joins of exactly its connections.
        ensure!(!connections.is_empty(), "{} got no connection", backend.name);
        ensure!(
            backend_counter(&stats, &backend.name, "connections") == connections.len() as u64
                && backend_counter(&stats, &backend.name, "subflows") == connections.len() as u64,
            "{}: balancer counted {} connections and {} subflows, the kernel holds {}",
            backend.name,
            backend_counter(&stats, &backend.name, "connections"),
            backend_counter(&stats, &backend.name, "subflows"),
            connections.len()
        );
        established += connections.len();
    }
    ensure!(established == total, "{established} of {total} connections are on the backends");

    let backends: Vec<&Netns> = lab.backends.iter().map(|b| &b.ns).collect();
    for (name, expected) in [
        ("MPTcpExtMPCapableSYNRX", total as u64),
        ("MPTcpExtMPJoinSynRx", total as u64),
        ("MPTcpExtMPJoinAckRx", total as u64),
        ("MPTcpExtMPJoinNoTokenFound", 0),
    ] {
        let sum = nstat_sum(&backends, name)?;
        ensure!(sum == expected, "backends' {name} sums to {sum}, expected {expected}");
    }
    ensure!(counter(&stats, "joins_steered_by_token") == total as u64, "balancer stats: {stats}");
    ensure!(counter(&stats, "joins_unknown_token") == 0, "balancer stats: {stats}");
    ensure!(counter(&stats, "tokens_learned") == total as u64, "balancer stats: {stats}");
    // Every initial subflow and every join went through the half-open table.
    ensure!(counter(&stats, "half_open_promoted") == 2 * total as u64, "balancer stats: {stats}");
    ensure!(counter(&stats, "table_errors") == 0, "balancer stats: {stats}");
    // No SYN (initial or join) had to be sent twice: no join waited for its token.
    let retransmitted = kernel::nstat(&lab.client)?.get("TcpExtTCPSynRetrans").copied().unwrap_or(0);
    ensure!(retransmitted == 0, "the client retransmitted {retransmitted} SYNs");
    Ok(())
}

#[test]
fn hash_only_loses_the_joins_that_land_on_another_backend() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    let balancer = Balancer::start(&lab, "hash-only")?;
    let servers = start_lab_servers(&lab, Proto::Mptcp)?;
    let total = 90;
    let gate = Arc::new(Gate::default());
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: BYTES, wait_subflows: 0, hold: Some(gate.clone()) };
    let backends: Vec<&Netns> = lab.backends.iter().map(|b| &b.ns).collect();
    let (connections, stats) = thread::scope(|scope| -> Result<_> {
        let handles = connect(scope, &lab.client, lab.vip(0), total, 15, &options)?;
        // Every join SYN reaches some backend: wait until all were answered one way or the other.
        wait_joins_answered(&backends, total)?;
        thread::sleep(Duration::from_millis(200));
        let connections = backend_connections(&backend_namespaces(&lab))?;
        let stats = balancer.stats()?;
        gate.open();
        join_all(handles)?;
        Ok((connections, stats))
    })?;
    for server in servers {
        server.stop()?;
    }

    let joined: usize = connections.iter().flat_map(|c| c.values()).filter(|kinds| kinds.len() == 2).count();
    let refused = nstat_sum(&backends, "MPTcpExtMPJoinNoTokenFound")?;
    ensure!(
        joined as u64 + refused == total as u64,
        "{joined} joins established and {refused} refused of {total}"
    );
    // A join lands on its own backend with probability 1/N: about (N-1)/N are refused.
    let share = refused as f64 / total as f64;
    let expected = (lab.backends.len() - 1) as f64 / lab.backends.len() as f64;
    ensure!(
        (share - expected).abs() < 0.2,
        "{refused} of {total} joins refused, expected about {expected:.2}"
    );
    ensure!(counter(&stats, "joins_hashed") >= total as u64, "balancer stats: {stats}");
    ensure!(counter(&stats, "joins_steered_by_token") == 0, "balancer stats: {stats}");
    println!("hash-only: {refused} of {total} joins refused ({:.0}%)", 100.0 * share);
    Ok(())
}

fn maglev_share(stats: &Value, backend: &str) -> f64 {
    stats["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == backend))
        .and_then(|b| b["maglev_share"].as_f64())
        .unwrap_or(f64::NAN)
}

#[test]
fn a_drained_backend_keeps_its_connections_and_gets_their_new_joins() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions { client_subflow_endpoint: false, ..Default::default() })?;
    let balancer = Balancer::start(&lab, "token")?;
    let servers = start_lab_servers(&lab, Proto::Mptcp)?;
    let total = 30;
    let gate = Arc::new(Gate::default());
    let mptcp =
        ClientOptions { proto: Proto::Mptcp, bytes: BYTES, wait_subflows: 0, hold: Some(gate.clone()) };
    let backends: Vec<&Netns> = lab.backends.iter().map(|b| &b.ns).collect();
    let victim = thread::scope(|scope| -> Result<&str> {
        let held = connect(scope, &lab.client, lab.vip(0), total, 10, &mptcp)?;
        let before = balancer.stats()?;
        // Drain the backend with the most connections.
        let victim = lab
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .max_by_key(|name| backend_counter(&before, name, "connections"))
            .context("no backend")?;
        let victim_connections = backend_counter(&before, victim, "connections");
        balancer.run(&["lb", "backend", "drain", victim])?;
        let drained = balancer.stats()?;
        ensure!(maglev_share(&drained, victim) == 0.0, "a draining backend keeps Maglev entries: {drained}");
        for backend in lab.backends.iter().filter(|b| b.name != victim) {
            let share = maglev_share(&drained, &backend.name);
            ensure!((share - 50.0).abs() < 1.0, "{} has {share}% of the table after the drain", backend.name);
        }

        // Every held connection now opens a join: those of the drained backend must reach it.
        let second = &lab.paths[1];
        lab.client.ip(&[
            "mptcp",
            "endpoint",
            "add",
            &second.client[0].to_string(),
            "dev",
            &second.client_if,
            "subflow",
        ])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while nstat_sum(&backends, "MPTcpExtMPJoinAckRx")? < total as u64 {
            ensure!(Instant::now() < deadline, "the held connections did not all join");
            thread::sleep(Duration::from_millis(50));
        }
        let connections = backend_connections(&backend_namespaces(&lab))?;
        for (backend, connections) in lab.backends.iter().zip(&connections) {
            for (token, kinds) in connections {
                ensure!(kinds.len() == 2, "{}: connection {token:08x} has subflows {kinds:?}", backend.name);
            }
        }
        let victim_index = lab.backends.iter().position(|b| b.name == victim).context("victim")?;
        ensure!(
            connections[victim_index].len() as u64 == victim_connections,
            "the drained backend holds {} connections, it had {victim_connections}",
            connections[victim_index].len()
        );
        ensure!(nstat_sum(&backends, "MPTcpExtMPJoinNoTokenFound")? == 0, "a join reached the wrong backend");

        // New flows, plain TCP and MPTCP, avoid the drained backend.
        let plain = ClientOptions { proto: Proto::Tcp, hold: None, ..mptcp.clone() };
        for _ in 0..total {
            transfer(&lab.client, lab.vip(0), plain.clone())?;
        }
        let after = balancer.stats()?;
        ensure!(backend_counter(&after, victim, "plain_flows") == 0, "new flows reached the drained backend");
        for backend in lab.backends.iter().filter(|b| b.name != victim) {
            ensure!(
                backend_counter(&after, &backend.name, "plain_flows") > 0,
                "{} got none of {total} plain TCP flows: {after}",
                backend.name
            );
        }
        ensure!(backend_counter(&after, victim, "subflows") == victim_connections, "{after}");
        gate.open();
        let transfers = join_all(held)?;
        ensure!(transfers.len() == total, "{} of {total} held connections completed", transfers.len());
        Ok(victim)
    })?;

    // Reactivated, it gets its share back; removed and added again under the same name, the
    // table is the one it was (Maglev permutes by name).
    let victim = lab.backends.iter().find(|b| b.name == victim).context("victim")?;
    let digests = |stats: &Value| {
        stats["vips"].as_array().map(|v| v.iter().map(|v| v["maglev_digest"].clone()).collect::<Vec<_>>())
    };
    balancer.run(&["lb", "backend", "activate", &victim.name])?;
    let original = digests(&balancer.stats()?);
    balancer.run(&["lb", "backend", "remove", &victim.name])?;
    let removed = balancer.stats()?;
    ensure!(
        removed["backends"]
            .as_array()
            .is_some_and(|all| all.iter().all(|b| b["name"] != victim.name.as_str())),
        "{removed}"
    );
    balancer.run(&[
        "lb",
        "backend",
        "add",
        "--name",
        &victim.name,
        "--address",
        &victim.addr[0].to_string(),
        "--interface",
        &victim.balancer_if,
        "--vip",
        &lab.vip(0).to_string(),
        "--vip",
        &lab.vip(1).to_string(),
    ])?;
    let restored = balancer.stats()?;
    ensure!(digests(&restored) == original && original.as_ref().is_some_and(|d| d.len() == 2), "{restored}");
    for backend in &lab.backends {
        let share = maglev_share(&restored, &backend.name);
        ensure!((share - 100.0 / 3.0).abs() < 0.1, "{} has {share}% of the table: {restored}", backend.name);
    }
    for server in servers {
        server.stop()?;
    }
    Ok(())
}
