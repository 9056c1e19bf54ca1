//! `cargo xtask lab lb`: the token-steering balancer in front of three MPTCP backends, with a
//! dual-homed client; prints where every connection and subflow landed. With `--instances N`
//! (2 to 4), N instances behind an ECMP router, several clients, the backends on a LAN.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, thread};

use anyhow::{Result, ensure};
use mptcp_tests::{
    balancer::{Balancer, BalancerLab, BalancerLabOptions, counter, nstat_sum},
    ecmp::{ClientEndpoint, EcmpLab, EcmpOptions},
    kernel,
    lock::LabLock,
    sync::SyncDaemon,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};

use crate::{
    setup::setup,
    util::{build_agent, indent},
};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lab {
    /// The load balancer.
    Lb,
}

/// How the instances behind ECMP get every join to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EcmpMode {
    /// The backends announce join addresses of their own; every instance forwards them.
    JoinAddresses,
    /// The instances sync tokens (`lb sync`); a join whose token has not arrived is retried once.
    TokenSync,
    /// Neither: the baseline, which loses most joins.
    TokenOnly,
}

/// The ECMP lab's settings beyond the single balancer's.
#[derive(Debug, Clone, Copy)]
pub struct EcmpArgs {
    pub instances: usize,
    pub mode: EcmpMode,
    /// The clients' second-path endpoints are `subflow fullmesh` rather than `subflow`.
    pub fullmesh: bool,
}

pub fn lab(which: Lab, connections: usize, steering: &str, ecmp: EcmpArgs) -> Result<()> {
    match which {
        Lab::Lb => {
            setup()?;
            let agent = build_agent(false)?;
            // SAFETY: single-threaded at this point; the lab helpers read it to find the agent.
            unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
            if ecmp.instances == 1 {
                balancer_lab(connections, steering)
            } else {
                ecmp_lab(ecmp, connections, if steering == "hash-only" { "hash-only" } else { "token" })
            }
        }
    }
}

/// Runs the balancer lab; also the second part of `cargo xtask demo`.
pub fn balancer_lab(connections: usize, steering: &str) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    println!(
        "\n== balancer lab: client {} -> balancer {} -> {} backends",
        lab.client.name(),
        lab.balancer.name(),
        lab.backends.len()
    );
    for (index, path) in lab.paths.iter().enumerate() {
        println!(
            "   path {index}: client {} {} / {} <-> balancer {}",
            path.client_if, path.client[0], path.client[1], path.balancer_if
        );
    }
    for backend in &lab.backends {
        println!(
            "   {}: {} / {} in {}, VIPs on loopback",
            backend.name,
            backend.addr[0],
            backend.addr[1],
            backend.ns.name()
        );
    }
    println!("   VIPs {} and {}", lab.vip(0), lab.vip(1));
    println!("\n== lb.toml ({steering})\n{}", indent(&lab.config(steering)));
    let balancer = Balancer::start(&lab, steering)?;
    println!("== mptcp-agent lb start: instance {}", balancer.instance());

    let mut servers = Vec::new();
    for backend in &lab.backends {
        for family in 0..2 {
            servers.push(Server::start_until_stopped(&backend.ns, lab.vip(family), Proto::Mptcp)?);
        }
    }
    let gate = Arc::new(Gate::default());
    let options = ClientOptions {
        proto: Proto::Mptcp,
        bytes: 100_000,
        // Hash-only mode loses most joins: do not wait for them there.
        wait_subflows: u8::from(steering == "token"),
        hold: Some(gate.clone()),
    };
    let per_family = connections.div_ceil(2);
    let (subflows, stats) = thread::scope(|scope| -> Result<_> {
        let handles: Vec<_> = (0..2 * per_family)
            .map(|n| {
                let options = options.clone();
                let lab = &lab;
                scope.spawn(move || transfer(&lab.client, lab.vip(n % 2), options))
            })
            .collect();
        gate.wait_for(handles.len())?;
        // The joins of hash-only mode are refused within a round trip.
        thread::sleep(std::time::Duration::from_millis(300));
        let subflows: Vec<Vec<kernel::KernelSubflow>> =
            lab.backends.iter().map(|b| kernel::subflows(&b.ns)).collect::<Result<_>>()?;
        let stats = balancer.run(&["lb", "stats"])?;
        gate.open();
        for handle in handles {
            handle.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        Ok((subflows, stats))
    })?;
    for server in servers {
        server.stop()?;
    }
    println!(
        "\n== {} MPTCP connections ({per_family} IPv4, {per_family} IPv6), held open; mptcp-agent lb stats",
        2 * per_family
    );
    print!("{}", indent(&stats));
    println!("\n== what each backend's kernel holds (ss -tniM)");
    println!("   {:<10} {:>12} {:>16} {:>14}", "backend", "connections", "joined subflows", "with a join");
    let mut total_joined = 0;
    for (backend, subflows) in lab.backends.iter().zip(&subflows) {
        let tokens: std::collections::BTreeSet<u32> = subflows.iter().map(|s| s.token).collect();
        let joined: Vec<&kernel::KernelSubflow> = subflows.iter().filter(|s| s.flags.contains('J')).collect();
        let with_join: std::collections::BTreeSet<u32> = joined.iter().map(|s| s.token).collect();
        println!("   {:<10} {:>12} {:>16} {:>14}", backend.name, tokens.len(), joined.len(), with_join.len());
        total_joined += with_join.len();
    }
    println!("   {total_joined} of {} connections have their join on their own backend", 2 * per_family);
    if steering == "token" {
        ensure!(total_joined == 2 * per_family, "token steering lost joins");
    }
    Ok(())
}

/// Runs the ECMP lab: `instances` balancer instances behind a router, three clients, three
/// backends; prints where every connection and join landed and each instance's counters. Also
/// the last part of `cargo xtask demo`.
pub fn ecmp_lab(args: EcmpArgs, connections: usize, steering: &'static str) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let EcmpArgs { instances, mode, fullmesh } = args;
    let endpoint = if fullmesh { ClientEndpoint::SubflowFullmesh } else { ClientEndpoint::Subflow };
    let options = EcmpOptions {
        instances,
        client_endpoint: Some(endpoint),
        join_addresses: mode == EcmpMode::JoinAddresses,
        sync: mode == EcmpMode::TokenSync,
        unknown_token: if mode == EcmpMode::TokenSync { "retry-once" } else { "hash" },
        steering,
        ..EcmpOptions::default()
    };
    let lab = EcmpLab::new(options)?;
    println!(
        "\n== ECMP lab ({mode:?}, steering {steering}, client endpoints {endpoint:?}): {} clients -> router {} -> {instances} balancer instances -> {} backends on a LAN",
        lab.clients.len(),
        lab.router.name(),
        lab.backends.len()
    );
    for (k, client) in lab.clients.iter().enumerate() {
        println!(
            "   client {k} ({}): path 0 {} {}, path 1 {} {}",
            client.ns.name(),
            client.addrs[0][0],
            client.addrs[0][1],
            client.addrs[1][0],
            client.addrs[1][1]
        );
    }
    for instance in &lab.instances {
        println!(
            "   {} ({}): uplink {} {} / {}, LAN {} {} / {}",
            instance.name,
            instance.ns.name(),
            instance.uplink,
            instance.uplink_addrs[0],
            instance.uplink_addrs[1],
            instance.lan_if,
            instance.lan_addrs[0],
            instance.lan_addrs[1]
        );
    }
    for backend in &lab.backends {
        let joins = backend.join_addrs.map_or("none".to_owned(), |[a, b]| format!("{a} {b}"));
        println!(
            "   {} ({}): LAN {} / {}, join addresses {joins}",
            backend.name,
            backend.ns.name(),
            backend.addrs[0],
            backend.addrs[1]
        );
    }
    println!("   VIPs {} and {}", lab.vip(0), lab.vip(1));
    println!("\n== the router's ECMP (resilient nexthop groups, L4 hash)");
    print!("{}", indent(&lab.router.ip(&["nexthop", "show"])?));
    for family in ["-4", "-6"] {
        let routes = lab.router.ip(&[family, "route", "show"])?;
        print!("{}", indent(&routes.lines().filter(|r| r.contains("nhid")).collect::<Vec<_>>().join("\n")));
    }
    println!("\n== {}'s lb.toml", lab.instances[0].name);
    print!("{}", indent(&std::fs::read_to_string(&lab.instances[0].config)?));
    let balancers = lab.start_balancers()?;
    let daemons: Vec<SyncDaemon> = if options.sync { lab.start_sync(&balancers)? } else { Vec::new() };
    println!(
        "== mptcp-agent lb start on every instance{}",
        if daemons.is_empty() { "" } else { ", and lb sync next to each" }
    );
    let servers = lab.start_servers()?;
    let backends = lab.backend_namespaces();
    let options = ClientOptions {
        proto: Proto::Mptcp,
        bytes: 100_000,
        // Without join addresses or sync most joins are lost: do not wait for them there.
        wait_subflows: u8::from(mode != EcmpMode::TokenOnly && steering == "token"),
        hold: None,
    };
    let total = connections;
    // Joins that land on the wrong backend are refused within a round trip, retried ones (token
    // sync) come a second later: wait (5 s at most) until every join SYN reached a backend,
    // accepted or refused (the kernel counts both in MPJoinSynRx).
    let started = std::time::Instant::now();
    let held = lab.hold_connections(&balancers, total, options, || {
        Ok(nstat_sum(&backends, "MPTcpExtMPJoinSynRx")? >= total as u64
            || started.elapsed() > std::time::Duration::from_secs(5))
    })?;
    for server in servers {
        server.stop()?;
    }
    let (subflows, stats) = (held.subflows, held.stats);

    println!(
        "\n== {total} MPTCP connections (half IPv4, half IPv6, from every client), held open: where each subflow went"
    );
    println!("   {:<44} {:<28} {:<10} {:<10} kind", "client", "to", "instance", "backend");
    // Per backend, per connection: did its initial subflow and a join land there.
    let mut landed: BTreeMap<(usize, u32), (bool, bool)> = BTreeMap::new();
    for (b, (backend, subflows)) in lab.backends.iter().zip(&subflows).enumerate() {
        for subflow in subflows {
            let via = instance_of(&lab, subflow.peer, subflow.local)?;
            let join = subflow.flags.contains('J');
            println!(
                "   {:<44} {:<28} {:<10} {:<10} {}",
                subflow.peer.to_string(),
                subflow.local.to_string(),
                via.unwrap_or("?"),
                backend.name,
                if join { "join" } else { "initial" }
            );
            let entry = landed.entry((b, subflow.token)).or_default();
            if join {
                entry.1 = true;
            } else {
                entry.0 = true;
            }
        }
    }
    println!("\n== per instance: mptcp-agent lb stats counters");
    let names = [
        "flows_hashed",
        "tokens_learned",
        "join_address_joins",
        "joins_steered_by_token",
        "joins_unknown_token",
        "joins_deferred",
        "joins_hashed",
    ];
    println!("   {:<10}{}", "instance", names.map(|n| format!("{n:>24}")).join(""));
    for (instance, stats) in lab.instances.iter().zip(&stats) {
        println!("   {:<10}{}", instance.name, names.map(|n| format!("{:>24}", counter(stats, n))).join(""));
    }
    for (instance, daemon) in lab.instances.iter().zip(&daemons) {
        let state = daemon.state()?;
        let c = &state["counters"];
        println!(
            "   {} lb sync: {} datagrams sent, {} received, {} tokens stored, {} late (a join beat the sync)",
            instance.name, c["datagrams_sent"], c["datagrams_received"], c["tokens_stored"], c["late"]
        );
    }
    let initial = landed.values().filter(|(initial, _)| *initial).count();
    let joined = landed.values().filter(|(initial, join)| *initial && *join).count();
    println!(
        "\n   {initial} of {total} connections on the backends, {joined} with their join on their own backend"
    );
    if mode != EcmpMode::TokenOnly && steering == "token" {
        ensure!(initial == total && joined == total, "joins were lost");
    }
    Ok(())
}

/// The instance the router sent a subflow (its client end `peer`, its backend end `local`) to,
/// by the router's own routing decision for that 4-tuple.
fn instance_of(lab: &EcmpLab, peer: SocketAddr, local: SocketAddr) -> Result<Option<&str>> {
    // A dual-stack server shows an IPv4 peer as IPv4-mapped; ss prints it plain.
    let family = usize::from(peer.is_ipv6());
    for (k, client) in lab.clients.iter().enumerate() {
        for path in 0..2 {
            if client.addrs[path][family] == peer.ip() {
                let index = lab.instance_for(k, path, local, peer.port())?;
                return Ok(index.map(|i| lab.instances[i].name.as_str()));
            }
        }
    }
    Ok(None)
}
