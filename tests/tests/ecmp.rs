//! Balancer instances behind an ECMP router (tests/src/ecmp.rs) against real kernel MPTCP: a
//! connection's initial subflow and its join reach different instances, and every join must
//! still land on the backend that owns its connection, by join addressing (stateless) or by
//! token sync between the instances; without either, most joins are lost (the baseline).

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    balancer::{Balancer, backend_connections, backend_counter, counter, join_all, nstat_sum, stop_servers},
    ecmp::{ClientEndpoint, EcmpLab, EcmpOptions, HeldRound},
    lock::LabLock,
    sync::SyncDaemon,
    traffic::{ClientOptions, Gate, Proto, Server},
};
use serde_json::Value;

const BYTES: u64 = 20_000;

/// Held connections that send [`BYTES`] and wait for `wait_subflows` joins first.
fn hold(wait_subflows: u8) -> ClientOptions {
    ClientOptions { proto: Proto::Mptcp, bytes: BYTES, wait_subflows, hold: None }
}

fn sum_counter(stats: &[Value], name: &str) -> u64 {
    stats.iter().map(|s| counter(s, name)).sum()
}

/// Every connection of the round on a backend with its initial subflow and a join, and every
/// join the clients made established there, none refused; returns the joins.
fn assert_every_join_on_its_owner(lab: &EcmpLab, held: &HeldRound, total: usize) -> Result<u64> {
    ensure!(held.transfers.len() == total, "{} of {total} transfers completed", held.transfers.len());
    let mut established = 0;
    for (backend, connections) in lab.backends.iter().zip(&held.connections) {
        for (token, kinds) in connections {
            ensure!(
                kinds.iter().filter(|k| *k == "M").count() == 1 && kinds.iter().any(|k| k == "J"),
                "{}: connection {token:08x} has subflows {kinds:?}, expected its initial one and a join",
                backend.name
            );
        }
        ensure!(!connections.is_empty(), "{} got no connection", backend.name);
        established += connections.len();
    }
    ensure!(established == total, "{established} of {total} connections are on the backends");
    let counts = lab.join_counts()?.since(held.before);
    ensure!(
        counts.joined == counts.answered && counts.joined >= total as u64 && counts.refused == 0,
        "{counts:?} for {total} connections"
    );
    let joined = counts.joined;
    Ok(joined)
}

/// Instances' SYN counts: each got a share of the new connections. And every instance places
/// new flows alike (equal Maglev digests), so a flow the router moves to another instance
/// mid-stream keeps its backend.
fn assert_spread(held: &HeldRound, total: usize) -> Result<Vec<u64>> {
    let digests: Vec<&Value> = held.stats.iter().map(|s| &s["vips"]).collect();
    ensure!(
        digests.windows(2).all(|pair| pair[0] == pair[1]),
        "the instances' Maglev tables differ: {digests:?}"
    );
    let per_instance: Vec<u64> = held.stats.iter().map(|s| counter(s, "flows_hashed")).collect();
    ensure!(per_instance.iter().sum::<u64>() == total as u64, "initial SYNs per instance {per_instance:?}");
    let fair = total as f64 / per_instance.len() as f64;
    ensure!(
        per_instance.iter().all(|n| (*n as f64) > 0.5 * fair),
        "ECMP did not spread {total} connections: {per_instance:?}"
    );
    Ok(per_instance)
}

#[test]
fn join_addressing_puts_every_join_on_its_owner_behind_ecmp() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = EcmpLab::new(EcmpOptions::default())?;
    let balancers = lab.start_balancers()?;
    let servers = lab.start_servers()?;
    let total = 300;
    let backends = lab.backend_namespaces();
    let held = lab.hold_connections(&balancers, total, hold(1), || {
        Ok(nstat_sum(&backends, "MPTcpExtMPJoinAckRx")? >= total as u64)
    })?;
    stop_servers(servers)?;
    let spread = assert_spread(&held, total)?;
    let joins = assert_every_join_on_its_owner(&lab, &held, total)?;
    for (backend, subflows) in lab.backends.iter().zip(&held.subflows) {
        let own = backend.join_addrs.context("join addressing")?;
        let locals: Vec<_> =
            subflows.iter().filter(|s| s.flags.contains('J')).map(|s| s.local.ip()).collect();
        ensure!(
            locals.iter().all(|addr| own.contains(addr)),
            "{}: joins to {locals:?}, its join addresses are {own:?}",
            backend.name
        );
    }
    ensure!(sum_counter(&held.stats, "join_address_joins") == joins, "stats: {:?}", held.stats);
    ensure!(sum_counter(&held.stats, "joins_steered_by_token") == 0, "a join went to the VIP");
    ensure!(sum_counter(&held.stats, "joins_unknown_token") == 0, "a join went to the VIP");
    println!("join addressing: initial SYNs per instance {spread:?}, {joins} joins, all on their owner");
    Ok(())
}

#[test]
fn fullmesh_clients_join_from_their_second_path_to_the_owner() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let options =
        EcmpOptions { client_endpoint: Some(ClientEndpoint::SubflowFullmesh), ..EcmpOptions::default() };
    let lab = EcmpLab::new(options)?;
    let balancers = lab.start_balancers()?;
    let servers = lab.start_servers()?;
    let total = 90;
    let backends = lab.backend_namespaces();
    let held = lab.hold_connections(&balancers, total, hold(1), || {
        Ok(nstat_sum(&backends, "MPTcpExtMPJoinAckRx")? >= total as u64)
    })?;
    stop_servers(servers)?;
    let joins = assert_every_join_on_its_owner(&lab, &held, total)?;
    ensure!(sum_counter(&held.stats, "join_address_joins") == joins, "stats: {:?}", held.stats);
    println!("fullmesh clients: {joins} joins for {total} connections, all on their owner");
    Ok(())
}

#[test]
fn without_sync_or_join_addresses_most_joins_are_lost() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = EcmpLab::new(EcmpOptions { join_addresses: false, ..EcmpOptions::default() })?;
    let balancers = lab.start_balancers()?;
    let servers = lab.start_servers()?;
    let total = 300;
    let backends = lab.backend_namespaces();
    // Every join SYN reaches some backend once, accepted or refused: the kernel counts both in
    // MPJoinSynRx.
    let held = lab.hold_connections(&balancers, total, hold(0), || {
        Ok(nstat_sum(&backends, "MPTcpExtMPJoinSynRx")? >= total as u64)
    })?;
    stop_servers(servers)?;
    let spread = assert_spread(&held, total)?;
    let joined = held.joined_on_owner();
    let lost = total - joined;
    let share = lost as f64 / total as f64;
    println!(
        "token only, no sync: SYNs per instance {spread:?}, {lost} of {total} joins lost ({:.0}%), unknown tokens {}",
        100.0 * share,
        sum_counter(&held.stats, "joins_unknown_token")
    );
    // A join reaches the instance that learned its token with probability 1/N (N = 3), and
    // lands on its owner anyway 1/3 of the other times: about 4/9 lost.
    ensure!(share > 0.25, "only {lost} of {total} joins lost: the lab does not exercise ECMP");
    Ok(())
}

/// What the kill wave measured.
struct KillWave {
    /// Transfers still running at the kill.
    running: usize,
    /// From the kill to the last transfer's end.
    drained_in: Duration,
    /// RSTs the backends sent during the wave (a subflow that reached the wrong backend).
    backend_resets: u64,
}

/// Transfers from every client (both families) that run while instance `victim` dies: the
/// router-facing links rate-limited so that they last a few seconds. Every one completes (each
/// checks the server's byte count).
fn kill_under_load(
    lab: &EcmpLab,
    balancers: &[Balancer<'_>],
    victim: usize,
    kill: impl FnOnce() -> Result<()>,
) -> Result<KillWave> {
    for instance in &lab.instances {
        lab.router.limit_rate(&instance.router_if, 100, 200)?;
    }
    let count = 8 * lab.clients.len();
    // The bulk starts at once: a join deferred once (retry-once) or dropped at the bottleneck
    // comes up a second or three later, while the transfer runs.
    let options = ClientOptions { proto: Proto::Mptcp, bytes: 4 << 20, wait_subflows: 0, hold: None };
    let before = lab.join_counts()?;
    let backends = lab.backend_namespaces();
    let resets_before = nstat_sum(&backends, "TcpOutRsts")?;
    thread::scope(|scope| -> Result<KillWave> {
        let handles: Vec<_> = (0..count)
            .map(|n| {
                let (client, family, options) =
                    (&lab.clients[n % lab.clients.len()].ns, (n / lab.clients.len()) % 2, options.clone());
                scope.spawn(move || mptcp_tests::traffic::transfer(client, lab.vip(family), options))
            })
            .collect();
        // Every transfer has its join before the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab.join_counts()?.since(before).joined < count as u64 {
            ensure!(
                Instant::now() < deadline,
                "the transfers' joins did not come up: {:?} since the start, {} of {count} transfers ended",
                lab.join_counts()?.since(before),
                handles.iter().filter(|h| h.is_finished()).count()
            );
            thread::sleep(Duration::from_millis(20));
        }
        kill()?;
        let killed = Instant::now();
        let running = handles.iter().filter(|h| !h.is_finished()).count();
        for (family, dst) in [(0, lab.vip(0)), (1, lab.vip(1))] {
            let members = lab.ecmp_members(family)?;
            ensure!(!members.contains(&victim), "the dead instance is still a nexthop: {members:?}");
            for client in 0..lab.clients.len() {
                for sport in 40000..40064 {
                    let chosen = lab.instance_for(client, 1, dst, sport)?;
                    ensure!(
                        chosen.is_some_and(|i| i != victim),
                        "the router sends port {sport} of client {client} to instance {chosen:?}"
                    );
                }
            }
        }
        // A transfer still running 8 s after the kill is stuck: what its client's subflows show
        // then (retransmissions, backoff) goes into the failure.
        while handles.iter().any(|h| !h.is_finished()) && killed.elapsed() < Duration::from_secs(8) {
            thread::sleep(Duration::from_millis(100));
        }
        let stuck: Vec<String> = if handles.iter().any(|h| !h.is_finished()) {
            lab.clients
                .iter()
                .filter_map(|c| c.ns.exec("ss", &["-tniM", "state", "established"]).ok())
                .flat_map(|out| {
                    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
                    // A socket line, then its detail line: keep the pairs with retransmissions.
                    lines
                        .windows(2)
                        .filter(|pair| pair[1].contains("backoff") || pair[1].contains("retrans:"))
                        .map(|pair| format!("{} {}", pair[0].trim(), pair[1].trim()))
                        .collect::<Vec<_>>()
                })
                .collect()
        } else {
            Vec::new()
        };
        let transfers = join_all(handles).with_context(|| {
            let resets = nstat_sum(&backends, "TcpOutRsts").map(|n| n - resets_before);
            let counters: Vec<String> = balancers
                .iter()
                .filter_map(|b| b.stats().ok())
                .map(|stats| format!("{}", stats["counters"]))
                .collect();
            format!(
                "a transfer running across the kill failed (backends' RSTs since the start: {resets:?}); \
                 the instances' counters: {}; the clients' retransmitting subflows 8 s after the kill:\n{}",
                counters.join(" | "),
                stuck.join("\n")
            )
        })?;
        ensure!(transfers.len() == count, "{} of {count} transfers completed", transfers.len());
        let drained_in = killed.elapsed();
        let backend_resets = nstat_sum(&backends, "TcpOutRsts")? - resets_before;
        Ok(KillWave { running, drained_in, backend_resets })
    })
}

#[test]
fn an_instance_dies_under_load_with_join_addressing() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = EcmpLab::new(EcmpOptions::default())?;
    let balancers = lab.start_balancers()?;
    let servers = lab.start_servers()?;
    let victim = 1;
    let wave = kill_under_load(&lab, &balancers, victim, || lab.kill_instance(victim))?;
    joins_after_the_kill(&lab, &balancers, servers, &wave, victim, "join addressing")
}

/// After [`kill_under_load`]: the transfers running at the kill completed (checked there), and
/// 120 connections made after it have their joins on their owner, through the live instances.
fn joins_after_the_kill(
    lab: &EcmpLab,
    balancers: &[Balancer<'_>],
    servers: Vec<Server>,
    wave: &KillWave,
    victim: usize,
    mode: &str,
) -> Result<()> {
    ensure!(wave.running > 0, "every transfer had finished before the kill: the test proves nothing");
    let total = 120;
    let backends = lab.backend_namespaces();
    let target = lab.join_counts()?.joined + total as u64;
    let held = lab.hold_connections(balancers, total, hold(1), || {
        Ok(nstat_sum(&backends, "MPTcpExtMPJoinAckRx")? >= target)
    })?;
    stop_servers(servers)?;
    let joins = assert_every_join_on_its_owner(lab, &held, total)?;
    println!(
        "{mode}: {} transfers running at the kill of instance {victim}, all completed {:.1} s after it \
         (backends sent {} RSTs); {joins} joins after it, all on their owner",
        wave.running,
        wave.drained_in.as_secs_f64(),
        wave.backend_resets
    );
    Ok(())
}

/// Token sync: backends without join addresses, a join whose token is not known yet dropped
/// once so that its retransmission finds it.
fn token_sync() -> EcmpOptions {
    EcmpOptions { join_addresses: false, sync: true, unknown_token: "retry-once", ..EcmpOptions::default() }
}

fn sync_counter(daemons: &[SyncDaemon], name: &str) -> Result<u64> {
    daemons.iter().map(|d| Ok(d.state()?["counters"][name].as_u64().unwrap_or(0))).sum()
}

#[test]
fn token_sync_puts_every_join_on_its_owner_behind_ecmp() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = EcmpLab::new(token_sync())?;
    let balancers = lab.start_balancers()?;
    let daemons = lab.start_sync(&balancers)?;
    let servers = lab.start_servers()?;
    let total = 300;
    let backends = lab.backend_namespaces();
    let started = Instant::now();
    let held = lab.hold_connections(&balancers, total, hold(1), || {
        Ok(nstat_sum(&backends, "MPTcpExtMPJoinAckRx")? >= total as u64)
    })?;
    let elapsed = started.elapsed();
    stop_servers(servers)?;
    let spread = assert_spread(&held, total)?;
    let joins = assert_every_join_on_its_owner(&lab, &held, total)?;
    let learned = sum_counter(&held.stats, "tokens_learned");
    let deferred = sum_counter(&held.stats, "joins_deferred");
    ensure!(learned == total as u64, "{learned} tokens learned for {total} connections");
    ensure!(
        sum_counter(&held.stats, "joins_steered_by_token") == joins,
        "every join steered by its token: {:?}",
        held.stats
    );
    ensure!(
        sum_counter(&held.stats, "joins_unknown_token") == 0,
        "a retried join was hashed: {:?}",
        held.stats
    );
    // Every token reached both other instances.
    let stored = sync_counter(&daemons, "tokens_stored")?;
    ensure!(stored >= 2 * learned, "{stored} synced tokens stored for {learned} learned on 3 instances");
    ensure!(sync_counter(&daemons, "auth_failures")? == 0 && sync_counter(&daemons, "queue_drops")? == 0);
    println!(
        "token sync: SYNs per instance {spread:?}, {joins} joins all on their owner, {deferred} retried once \
         ({:.0}%), late syncs {}, {:.1} s for the round",
        100.0 * deferred as f64 / joins as f64,
        sync_counter(&daemons, "late")?,
        elapsed.as_secs_f64()
    );
    Ok(())
}

#[test]
fn an_instance_dies_under_load_with_token_sync() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = EcmpLab::new(token_sync())?;
    let balancers = lab.start_balancers()?;
    let mut daemons = lab.start_sync(&balancers)?;
    let servers = lab.start_servers()?;
    let victim = 1;
    let dead = daemons.remove(victim);
    // The host dies: its sync daemon with it, and its links.
    let wave = kill_under_load(&lab, &balancers, victim, || {
        dead.kill()?;
        lab.kill_instance(victim)
    })?;
    joins_after_the_kill(&lab, &balancers, servers, &wave, victim, "token sync")
}

#[test]
fn one_command_drains_a_backend_on_every_instance() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = EcmpLab::new(EcmpOptions { client_endpoint: None, ..token_sync() })?;
    let balancers = lab.start_balancers()?;
    let _daemons = lab.start_sync(&balancers)?;
    let servers = lab.start_servers()?;
    let total = 60;
    let gate = Arc::new(Gate::default());
    let held_options =
        ClientOptions { proto: Proto::Mptcp, bytes: BYTES, wait_subflows: 0, hold: Some(gate.clone()) };
    let backends = lab.backend_namespaces();
    let connections_of = |stats: &[Value], name: &str| -> u64 {
        stats.iter().map(|s| backend_counter(s, name, "connections")).sum()
    };
    thread::scope(|scope| -> Result<()> {
        let mut held = Vec::new();
        for (n, client) in lab.clients.iter().enumerate() {
            let count = total / lab.clients.len();
            held.extend(mptcp_tests::balancer::connect(
                scope,
                &client.ns,
                lab.vip(n % 2),
                count,
                20,
                &held_options,
            )?);
        }
        let before: Vec<Value> = balancers.iter().map(Balancer::stats).collect::<Result<_>>()?;
        let victim = lab
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .max_by_key(|name| connections_of(&before, name))
            .context("no backend")?;
        let victim_connections = connections_of(&before, victim);
        let out =
            balancers[0].run(&["lb", "backend", "drain", victim, "--config", balancers[0].config_arg()?])?;
        println!("lb backend drain {victim}:\n{out}");
        for (instance, balancer) in lab.instances.iter().zip(&balancers) {
            let stats = balancer.stats()?;
            let entry = stats["backends"].as_array().and_then(|all| all.iter().find(|b| b["name"] == victim));
            ensure!(
                entry.is_some_and(|b| b["state"] == "draining" && b["maglev_share"].as_f64() == Some(0.0)),
                "{}: {victim} is not draining: {entry:?}",
                instance.name
            );
        }
        // The held connections open their joins now: those of the drained backend reach it.
        lab.add_client_endpoints(ClientEndpoint::Subflow)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while nstat_sum(&backends, "MPTcpExtMPJoinAckRx")? < total as u64 {
            ensure!(Instant::now() < deadline, "the held connections did not all join");
            thread::sleep(Duration::from_millis(50));
        }
        let connections = backend_connections(&backends)?;
        let victim_index = lab.backends.iter().position(|b| b.name == victim).context("victim")?;
        for (backend, connections) in lab.backends.iter().zip(&connections) {
            for (token, kinds) in connections {
                ensure!(kinds.len() == 2, "{}: connection {token:08x} has subflows {kinds:?}", backend.name);
            }
        }
        ensure!(
            connections[victim_index].len() as u64 == victim_connections,
            "the drained backend holds {} connections, it had {victim_connections}",
            connections[victim_index].len()
        );
        ensure!(nstat_sum(&backends, "MPTcpExtMPJoinNoTokenFound")? == 0, "a join reached the wrong backend");
        // New connections, from every client through every instance, avoid it.
        let fresh = ClientOptions { hold: None, ..held_options.clone() };
        for client in &lab.clients {
            for family in 0..2 {
                for _ in 0..10 {
                    mptcp_tests::traffic::transfer(&client.ns, lab.vip(family), fresh.clone())?;
                }
            }
        }
        let after: Vec<Value> = balancers.iter().map(Balancer::stats).collect::<Result<_>>()?;
        ensure!(
            connections_of(&after, victim) == victim_connections,
            "new connections reached the drained backend"
        );
        for instance_stats in &after {
            let got: u64 = lab
                .backends
                .iter()
                .filter(|b| b.name != victim)
                .map(|b| backend_counter(instance_stats, &b.name, "connections"))
                .sum();
            ensure!(got > 0, "an instance placed no connection: {instance_stats}");
        }
        gate.open();
        let transfers = join_all(held)?;
        ensure!(transfers.len() == total, "{} of {total} held connections completed", transfers.len());
        Ok(())
    })?;
    stop_servers(servers)
}
