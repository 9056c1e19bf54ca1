//! The `lb-scale` suite: balancer instances behind an ECMP router (`mptcp_tests::ecmp`), 1 to 4
//! of them, and the share of MPTCP joins that reach the backend owning their connection, for
//! each way of steering joins: token only (each instance knows the tokens it learned), token +
//! sync (`lb sync`, a join with an unknown token retried once), join addressing, and hash-only
//! (the 5-tuple baseline). Medians and ranges over rounds, each on fresh balancers.
//!
//! It measures where packets go, not how fast: the debug build of the agent does (the programs
//! are the same release-built eBPF objects either way).

use anyhow::Result;
use mptcp_tests::{
    balancer::nstat_sum,
    ecmp::{EcmpLab, EcmpOptions},
    lock::LabLock,
    sync::SyncDaemon,
    traffic::{ClientOptions, Proto},
};

use super::{Row, median, range};
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

const MODES: [Mode; 4] = [
    Mode { name: "token only", join_addresses: false, sync: false, unknown_token: "hash", steering: "token" },
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
    let agent = build_agent(false)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
    let _lock = LabLock::acquire()?;
    let mut rows = Vec::new();
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
                let (share, retried) = one_round(&lab)?;
                shares.push(share);
                deferred.push(retried);
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
    Ok(rows)
}

/// One round on fresh balancers (and sync daemons): the share of connections with their join
/// on their own backend, and the share of joins retried once, in percent.
fn one_round(lab: &EcmpLab) -> Result<(f64, f64)> {
    let balancers = lab.start_balancers()?;
    let _daemons: Vec<SyncDaemon> = if lab.options.sync { lab.start_sync(&balancers)? } else { Vec::new() };
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
    Ok((
        100.0 * held.joined_on_owner() as f64 / CONNECTIONS as f64,
        100.0 * deferred as f64 / CONNECTIONS as f64,
    ))
}
