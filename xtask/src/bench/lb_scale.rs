//! The `lb-scale` suite: balancer instances behind an ECMP router (`mptcp_tests::ecmp`), 1 to 4
//! of them, and the share of MPTCP joins that reach the backend owning their connection, for
//! each way of steering joins: token only (each instance knows the tokens it learned), token +
//! sync (`lb sync`, a join with an unknown token retried once), join addressing, and hash-only
//! (the 5-tuple baseline). Medians and ranges over rounds, each on fresh balancers.
//!
//! It measures where packets go, not how fast: the debug build of the agent does (the programs
//! are the same release-built eBPF objects either way).

use std::time::Instant;

use anyhow::Result;
use mptcp_tests::{
    balancer::{Balancer, nstat_sum},
    ecmp::ClientEndpoint,
    ecmp::{EcmpLab, EcmpOptions},
    lock::LabLock,
    sync::SyncDaemon,
    traffic::transfer,
    traffic::{ClientOptions, Proto},
};

use super::{AGGREGATION_BYTES, PATH_MBIT, Row, median, range};
use crate::{setup::setup, util::build_agent};

const ROUNDS: usize = 3;
const CONNECTIONS: usize = 90;

/// A way of steering joins behind ECMP.
#[derive(Debug, Clone, Copy)]
struct Mode {
    name: &'static str,
    join_addresses: bool,
    sync: bool,
    unknown_token: &'static str,
    steering: &'static str,
}

const MODES: [Mode; 5] = [
    Mode { name: "token only", join_addresses: false, sync: false, unknown_token: "hash", steering: "token" },
    // A join that beats the sync is hashed: how often the sync loses the race.
    Mode {
        name: "token + sync, hash",
        join_addresses: false,
        sync: true,
        unknown_token: "hash",
        steering: "token",
    },
    Mode {
        name: "token + sync",
        join_addresses: false,
        sync: true,
        unknown_token: "retry-once",
        steering: "token",
    },
    Mode {
        name: "join addressing",
        join_addresses: true,
        sync: false,
        unknown_token: "hash",
        steering: "token",
    },
    Mode {
        name: "hash-only",
        join_addresses: false,
        sync: false,
        unknown_token: "hash",
        steering: "hash-only",
    },
];

pub fn lb_scale() -> Result<Vec<Row>> {
    setup()?;
    let agent = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
    let _lock = LabLock::acquire()?;
    let mut rows = Vec::new();
    let mut sync_ms = Vec::new();
    for mode in MODES {
        for instances in 1..=4 {
            let lab = EcmpLab::new(EcmpOptions {
                instances,
                join_addresses: mode.join_addresses,
                // A single instance has no peer to sync with.
                sync: mode.sync && instances > 1,
                unknown_token: mode.unknown_token,
                steering: mode.steering,
                ..EcmpOptions::default()
            })?;
            let mut shares = Vec::new();
            let mut deferred = Vec::new();
            for round in 0..ROUNDS {
                eprintln!("lb-scale: {}, {instances} instance(s), round {}", mode.name, round + 1);
                let (share, retried, latencies) = one_round(&lab)?;
                shares.push(share);
                deferred.push(retried);
                sync_ms.extend(latencies);
            }
            let value = median(&mut shares).unwrap_or(f64::NAN);
            let retried = median(&mut deferred).unwrap_or(f64::NAN);
            rows.push(Row {
                suite: "lb-scale".into(),
                case: format!("{}: {instances} instance(s)", mode.name),
                value,
                unit: "% joins on owner".into(),
                note: format!(
                    "{ROUNDS} rounds of {CONNECTIONS} connections (3 clients, IPv4 + IPv6): range {}; \
                     joins retried once: median {retried:.0}%",
                    range(&shares)
                ),
            });
        }
    }
    let count = sync_ms.len();
    sync_ms.sort_by(f64::total_cmp);
    let p90 = sync_ms.get(count * 9 / 10).copied().unwrap_or(f64::NAN);
    rows.push(Row {
        suite: "lb-scale".into(),
        case: "token sync: third ACK to every peer holding the token".into(),
        value: median(&mut sync_ms).unwrap_or(f64::NAN),
        unit: "ms".into(),
        note: format!(
            "median of {count} tokens (2-4 instances, both sync modes), p90 {p90:.2} ms, range {}",
            range(&sync_ms)
        ),
    });
    rows.extend(aggregation()?);
    Ok(rows)
}

/// One round on fresh balancers (and sync daemons): the share of connections with their join
/// on their own backend, the share of joins retried once, in percent, and the sync latencies
/// of the round's tokens.
fn one_round(lab: &EcmpLab) -> Result<(f64, f64, Vec<f64>)> {
    let balancers = lab.start_balancers()?;
    let daemons: Vec<SyncDaemon> = if lab.options.sync { lab.start_sync(&balancers)? } else { Vec::new() };
    let servers = lab.start_servers()?;
    let backends = lab.backend_namespaces();
    let options = ClientOptions { proto: Proto::Mptcp, bytes: 20_000, wait_subflows: 0, hold: None };
    // Every join SYN reached a backend, accepted or refused (a retried one a second after the
    // first): the kernel counts both in MPJoinSynRx.
    let before = nstat_sum(&backends, "MPTcpExtMPJoinSynRx")?;
    let held = lab.hold_connections(&balancers, CONNECTIONS, options, || {
        Ok(nstat_sum(&backends, "MPTcpExtMPJoinSynRx")? - before >= CONNECTIONS as u64)
    })?;
    for server in servers {
        server.stop()?;
    }
    let deferred: u64 = held.stats.iter().map(|s| mptcp_tests::balancer::counter(s, "joins_deferred")).sum();
    let latencies = if daemons.is_empty() { Vec::new() } else { sync_latencies(&balancers)? };
    Ok((
        100.0 * held.joined_on_owner() as f64 / CONNECTIONS as f64,
        100.0 * deferred as f64 / CONNECTIONS as f64,
        latencies,
    ))
}

/// Per token one instance learned: milliseconds until the last of the others stored it (a
/// token some peer never got is left out; the `sync` test requires every one).
fn sync_latencies(balancers: &[Balancer<'_>]) -> Result<Vec<f64>> {
    let tables: Vec<_> = balancers
        .iter()
        .map(|b| mptcp_tests::sync::tokens(&b.map_pin("LB_TOKENS")))
        .collect::<Result<_>>()?;
    let learned = mptcp_common::lb::token_origin::LEARNED;
    let mut latencies = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        for (token, (_, origin, learned_ns)) in table {
            if *origin != learned {
                continue;
            }
            let stored: Option<Vec<u64>> = tables
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, peer)| peer.get(token).map(|(_, _, ns)| *ns))
                .collect();
            if let Some(last) = stored.and_then(|s| s.into_iter().max()) {
                latencies.push(last.saturating_sub(*learned_ns) as f64 / 1e6);
            }
        }
    }
    Ok(latencies)
}

/// One bulk transfer over two 50 Mbit/s client paths through 3 instances: join addresses with a
/// `subflow fullmesh` client (the join takes the second path to the backend's join address),
/// against token steering without sync (the join usually reaches an instance that does not
/// know its token).
fn aggregation() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, join_addresses) in [("join addresses, fullmesh client", true), ("token only", false)] {
        let lab = EcmpLab::new(EcmpOptions {
            clients: 1,
            join_addresses,
            client_endpoint: Some(ClientEndpoint::SubflowFullmesh),
            ..EcmpOptions::default()
        })?;
        let client = &lab.clients[0];
        for iface in &client.ifaces {
            client.ns.limit_rate(iface, PATH_MBIT, 20)?;
        }
        let mut mbits = Vec::new();
        for round in 0..ROUNDS {
            eprintln!("lb-scale: aggregation, {name}, round {}", round + 1);
            let balancers = lab.start_balancers()?;
            let servers = lab.start_servers()?;
            let start = Instant::now();
            let options =
                ClientOptions { proto: Proto::Mptcp, bytes: AGGREGATION_BYTES, wait_subflows: 0, hold: None };
            transfer(&client.ns, lab.vip(0), options)?;
            mbits.push(AGGREGATION_BYTES as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6);
            for server in servers {
                server.stop()?;
            }
            drop(balancers);
        }
        let value = median(&mut mbits).unwrap_or(f64::NAN);
        rows.push(Row {
            suite: "lb-scale".into(),
            case: format!("aggregation, 3 instances, {name}: share of 2 x {PATH_MBIT} Mbit/s"),
            value: 100.0 * value / f64::from(2 * PATH_MBIT),
            unit: "%".into(),
            note: format!(
                "{} MiB per round, median of {ROUNDS} rounds: {value:.1} Mbit/s (range {} Mbit/s)",
                AGGREGATION_BYTES >> 20,
                range(&mbits)
            ),
        });
    }
    Ok(rows)
}
