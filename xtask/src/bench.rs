//! `cargo xtask bench [FILTER]`: runs the benchmark suites (all, or those whose name contains
//! FILTER), prints one table and writes `target/bench/results.json` and `results.md`.
//!
//! A suite is a function returning [`Row`]s; add one to [`SUITES`] to extend the report.

mod capture;
mod daemon;
mod failover;
mod flood;
mod lb_scale;

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use mptcp_tests::{
    agent::Dataplane,
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
};

use crate::{
    setup::setup,
    util::{build_agent, cargo, output, workspace_root},
};

pub use mptcp_tests::bench::Row;

struct Suite {
    name: &'static str,
    run: fn() -> Result<Vec<Row>>,
}

const SUITES: &[Suite] = &[
    Suite { name: "parser", run: parser },
    Suite { name: "dataplane", run: dataplane },
    Suite { name: "throughput", run: throughput },
    Suite { name: "lb", run: balancer },
    Suite { name: "lb-aggregation", run: balancer_aggregation },
    Suite { name: "lb-scale", run: lb_scale::lb_scale },
    Suite { name: "cc", run: congestion },
    Suite { name: "failover", run: failover::failover },
    Suite { name: "daemon", run: daemon::daemon },
    Suite { name: "flood", run: flood::flood },
    Suite { name: "capture", run: capture::capture },
];

pub fn bench(filter: Option<&str>) -> Result<()> {
    let selected: Vec<&Suite> =
        SUITES.iter().filter(|suite| filter.is_none_or(|f| suite.name.contains(f))).collect();
    if selected.is_empty() {
        let names: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
        bail!("no benchmark suite matches {filter:?}; suites: {}", names.join(", "));
    }
    let mut rows = Vec::new();
    for suite in selected {
        eprintln!("== bench suite {}", suite.name);
        rows.extend((suite.run)().with_context(|| format!("benchmark suite {}", suite.name))?);
    }
    let table = markdown(&rows);
    print!("{table}");
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&rows)? + "\n")?;
    std::fs::write(dir.join("results.md"), &table)?;
    eprintln!("wrote {0}/results.json and {0}/results.md", dir.display());
    Ok(())
}

/// The median of `values`, which it sorts (so [`range`] can follow).
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// `low-high` of sorted `values`.
fn range(values: &[f64]) -> String {
    match (values.first(), values.last()) {
        (Some(low), Some(high)) => format!("{low:.1}-{high:.1}"),
        _ => "-".into(),
    }
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| suite | case | value | unit | note |\n|---|---|---:|---|---|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {} | {} |",
            row.suite, row.case, row.value, row.unit, row.note
        );
    }
    out
}

/// One line of `mptcp-common/benches/parser.rs` output.
#[derive(Deserialize)]
struct ParserCase {
    case: String,
    ns_per_packet: f64,
    option_bytes: usize,
    iterations: u64,
    samples: usize,
}

/// The user-space option parser (release build): walk a Linux option area, parse its MPTCP option.
fn parser() -> Result<Vec<Row>> {
    let stdout = output(cargo().args(["bench", "-p", "mptcp-common", "--bench", "parser"]))?;
    let rows: Vec<Row> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let case: ParserCase = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
            Ok(Row {
                suite: "parser".into(),
                case: case.case,
                value: case.ns_per_packet,
                unit: "ns/packet".into(),
                note: format!(
                    "walk of a {}-byte option area + MPTCP parse; median of {} samples, {} packets",
                    case.option_bytes, case.samples, case.iterations
                ),
            })
        })
        .collect::<Result<_>>()?;
    if rows.is_empty() {
        bail!("the parser benchmark printed no results:\n{stdout}");
    }
    Ok(rows)
}

/// The programs with BPF_PROG_TEST_RUN against the baselines, and the agent's event processing:
/// `mptcp-agent bench` (release build) prints the rows.
fn dataplane() -> Result<Vec<Row>> {
    agent_bench("dataplane")
}

/// The balancer's program with BPF_PROG_TEST_RUN against the baseline.
fn balancer() -> Result<Vec<Row>> {
    agent_bench("lb")
}

/// The agent's benchmark program (`mptcp-agent/benches/dataplane.rs`, optimised, run as root).
fn agent_bench(suite: &str) -> Result<Vec<Row>> {
    setup()?;
    let stdout =
        output(cargo().args(["bench", "-q", "-p", "mptcp-agent", "--bench", "dataplane", "--", suite]))?;
    stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).with_context(|| format!("parsing {line}")))
        .collect()
}

/// Seconds of each iperf3 run, and runs per setting (alternating, so drift hits both).
const IPERF_SECONDS: &str = "5";
const IPERF_ROUNDS: usize = 5;

/// iperf3 through mptcpize between namespaces over the two-path lab (default offloads), with
/// the dataplane attached to the server's interfaces and without.
fn throughput() -> Result<Vec<Row>> {
    setup()?;
    let agent = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions { disable_offloads: false, ..LabOptions::default() })?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let server = lab.server_addr(0, 5201);
    // On veth, native XDP costs by itself (the kernel turns off GSO on the peer, so every
    // segment crosses the pair on its own) and generic XDP copies every packet; auto runs the
    // ingress program at tcx ingress there. All three are measured.
    let settings: [(&str, Option<&[&str]>); 4] = [
        ("without the dataplane", None),
        ("dataplane, auto (tcx ingress on veth)", Some(&["--xdp-mode", "auto"])),
        ("dataplane, generic XDP", Some(&["--xdp-mode", "skb"])),
        ("dataplane, native XDP", Some(&["--xdp-mode", "native"])),
    ];
    let mut results = vec![Vec::new(); settings.len()];
    for _ in 0..IPERF_ROUNDS {
        for ((_, flags), result) in settings.iter().zip(&mut results) {
            let dataplane =
                flags.map(|flags| Dataplane::attach_with(&lab.server, &ifaces, flags)).transpose()?;
            result.push(iperf(&lab, server)?);
            drop(dataplane);
        }
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let note = format!(
        "mptcpize iperf3, 2 paths, default offloads, {IPERF_ROUNDS} x {IPERF_SECONDS} s, interleaved"
    );
    let baseline = mean(&results[0]);
    let mut rows = Vec::new();
    for ((name, _), result) in settings.iter().zip(&results) {
        let gbps = mean(result);
        rows.push(Row {
            suite: "throughput".into(),
            case: (*name).into(),
            value: gbps,
            unit: "Gbit/s".into(),
            note: note.clone(),
        });
        if gbps != baseline {
            rows.push(Row {
                suite: "throughput".into(),
                case: format!("{name} / without"),
                value: 100.0 * gbps / baseline,
                unit: "%".into(),
                note: "target >= 95%".into(),
            });
        }
    }
    Ok(rows)
}

/// One iperf3 run through mptcpize from the client to `server`; Gbit/s received.
fn iperf(lab: &DualHomedLab, server: std::net::SocketAddr) -> Result<f64> {
    let (addr, port) = (server.ip().to_string(), server.port().to_string());
    let mut iperf_server = lab
        .server
        .exec_cmd("mptcpize")
        .args(["run", "iperf3", "-s", "-1", "-B", &addr, "-p", &port])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let report =
        lab.client.exec("mptcpize", &["run", "iperf3", "-c", &addr, "-p", &port, "-t", IPERF_SECONDS, "-J"]);
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
    let report: serde_json::Value = serde_json::from_str(&report?)?;
    Ok(report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 JSON")? / 1e9)
}

/// Per-path rate limit of the aggregation benchmark, and what one transfer sends.
const PATH_MBIT: u32 = 50;
const AGGREGATION_BYTES: u64 = 40 << 20;
const AGGREGATION_ROUNDS: usize = 4;

/// One MPTCP bulk transfer through the balancer over two paths limited to 50 Mbit/s each (TBF
/// on the client's interfaces): with token steering its join reaches the owning backend and the
/// transfer uses both paths; in hash-only mode the join lands on a backend chosen by its
/// 5-tuple, which refuses it (unless it happens to be the owner), and one path is left.
fn balancer_aggregation() -> Result<Vec<Row>> {
    use mptcp_tests::{
        balancer::{Balancer, BalancerLab, BalancerLabOptions},
        kernel::nstat,
        traffic::{ClientOptions, Proto, Server, transfer},
    };
    setup()?;
    let agent = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    for path in &lab.paths {
        lab.client.limit_rate(&path.client_if, PATH_MBIT, 20)?;
    }
    let refused = |lab: &BalancerLab| -> Result<u64> {
        let mut sum = 0;
        for backend in &lab.backends {
            sum += nstat(&backend.ns)?.get("MPTcpExtMPJoinNoTokenFound").copied().unwrap_or(0);
        }
        Ok(sum)
    };
    let modes = ["token", "hash-only"];
    // Per mode: (Mbit/s, join refused) of each round; modes alternate so drift hits both.
    let mut results: Vec<Vec<(f64, bool)>> = vec![Vec::new(); modes.len()];
    for _ in 0..AGGREGATION_ROUNDS {
        for (mode, result) in modes.iter().zip(&mut results) {
            let balancer = Balancer::start(&lab, mode)?;
            let servers: Vec<Server> = lab
                .backends
                .iter()
                .map(|b| Server::start_until_stopped(&b.ns, lab.vip(0), Proto::Mptcp))
                .collect::<Result<_>>()?;
            let refused_before = refused(&lab)?;
            let start = std::time::Instant::now();
            transfer(
                &lab.client,
                lab.vip(0),
                ClientOptions { proto: Proto::Mptcp, bytes: AGGREGATION_BYTES, wait_subflows: 0, hold: None },
            )?;
            let mbit = AGGREGATION_BYTES as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6;
            result.push((mbit, refused(&lab)? > refused_before));
            for server in servers {
                server.stop()?;
            }
            drop(balancer);
        }
    }
    let capacity = f64::from(2 * PATH_MBIT);
    let mut rows = Vec::new();
    for (mode, result) in modes.iter().zip(&results) {
        let mean = result.iter().map(|(mbit, _)| mbit).sum::<f64>() / result.len() as f64;
        let refusals = result.iter().filter(|(_, refused)| *refused).count();
        let each: Vec<String> = result
            .iter()
            .map(|(mbit, r)| format!("{mbit:.1}{}", if *r { " (join refused)" } else { "" }))
            .collect();
        rows.push(Row {
            suite: "lb-aggregation".into(),
            case: format!("{mode}: one MPTCP transfer, 2 x {PATH_MBIT} Mbit/s paths"),
            value: mean,
            unit: "Mbit/s".into(),
            note: format!(
                "{} MiB per round, {AGGREGATION_ROUNDS} rounds: {}",
                AGGREGATION_BYTES >> 20,
                each.join(", ")
            ),
        });
        rows.push(Row {
            suite: "lb-aggregation".into(),
            case: format!("{mode}: share of the {capacity} Mbit/s of both paths"),
            value: 100.0 * mean / capacity,
            unit: "%".into(),
            note: if *mode == "token" {
                format!("{refusals} of {AGGREGATION_ROUNDS} joins refused; target >= 90%")
            } else {
                format!(
                    "{refusals} of {AGGREGATION_ROUNDS} joins refused: a refused join leaves one path, ~50%"
                )
            },
        });
    }
    Ok(rows)
}

/// Seconds of each congestion-control run.
const CC_SECONDS: u64 = 20;

/// Coupled congestion control on the bottleneck lab (Reno everywhere; see
/// `mptcp_tests::congestion`): the MPTCP share against one TCP flow at a shared 20 Mbit/s
/// bottleneck, the throughput over two disjoint 10 Mbit/s bottlenecks, and how much of its
/// traffic MPTCP moves off a path loaded with two TCP flows.
fn congestion() -> Result<Vec<Row>> {
    use mptcp_tests::{
        agent::Daemon,
        congestion::{Bottleneck, BottleneckLab},
    };
    setup()?;
    let agent = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
    let _lock = LabLock::acquire()?;
    let duration = std::time::Duration::from_secs(CC_SECONDS);
    let algorithms = ["none", "lia", "olia", "balia"];
    let name = |cc: &str| if cc == "none" { "uncoupled".to_owned() } else { cc.to_uppercase() };
    let mut rows = Vec::new();
    let mut row = |case: String, value: f64, unit: &str, note: String| {
        rows.push(Row { suite: "cc".into(), case, value, unit: unit.into(), note });
    };

    // 1. Shared bottleneck: 2 subflows (3 rounds) and 4 subflows (2 rounds) against one flow.
    for (joins, rounds, settings) in [(1u8, 3usize, &algorithms[..]), (3, 2, &algorithms[..2])] {
        let lab = BottleneckLab::new(Bottleneck::Shared { mbit: 20 }, joins)?;
        let ifaces: Vec<&str> = lab.client_ifs.iter().map(String::as_str).collect();
        let dataplane = Dataplane::attach(&lab.client, &ifaces)?;
        let mut shares = vec![Vec::new(); settings.len()];
        for _ in 0..rounds {
            for (cc, result) in settings.iter().zip(&mut shares) {
                let _daemon = Daemon::start(&dataplane, &["--cc", cc])?;
                result.push(lab.run(1, duration, || Ok(()))?.mptcp_share());
            }
        }
        for (cc, result) in settings.iter().zip(&shares) {
            let each: Vec<String> = result.iter().map(|s| format!("{:.0}%", 100.0 * s)).collect();
            row(
                format!("shared 20 Mbit/s, {} subflows vs 1 TCP: {}", joins + 1, name(cc)),
                100.0 * result.iter().sum::<f64>() / result.len() as f64,
                "% MPTCP",
                format!("{rounds} x {CC_SECONDS} s: {}; target coupled <= 55%, ideal 50%", each.join(", ")),
            );
        }
    }

    // 2. Disjoint bottlenecks: MPTCP alone over 2 x 10 Mbit/s.
    let lab = BottleneckLab::new(Bottleneck::Disjoint { mbit: 10 }, 1)?;
    let ifaces: Vec<&str> = lab.client_ifs.iter().map(String::as_str).collect();
    let dataplane = Dataplane::attach(&lab.client, &ifaces)?;
    for cc in algorithms {
        let _daemon = Daemon::start(&dataplane, &["--cc", cc])?;
        let rates = lab.run(0, duration, || Ok(()))?;
        row(
            format!("disjoint 2 x 10 Mbit/s: {}", name(cc)),
            rates.mptcp,
            "Mbit/s",
            format!("{:.0}% of 20 Mbit/s, {CC_SECONDS} s; target coupled >= 90%", rates.mptcp * 5.0),
        );
    }

    // 3. The same paths, two TCP flows on path 0: the share of MPTCP's bytes on path 1.
    for cc in algorithms {
        let _daemon = Daemon::start(&dataplane, &["--cc", cc])?;
        let split = std::cell::Cell::new(None);
        let rates = lab.run(2, duration, || {
            // Bytes acknowledged per path between 3 s in and 1 s before the end.
            let first = acked_per_path(&dataplane, duration / 7)?;
            let last =
                acked_per_path(&dataplane, duration - duration / 7 - std::time::Duration::from_secs(1))?;
            split.set(Some([last[0].saturating_sub(first[0]), last[1].saturating_sub(first[1])]));
            Ok(())
        })?;
        let [loaded, free] = split.get().context("no per-path byte counts")?;
        row(
            format!("path 0 loaded with 2 TCP flows: {}", name(cc)),
            100.0 * free as f64 / (loaded + free).max(1) as f64,
            "% on path 1",
            format!(
                "MPTCP {:.1} Mbit/s, the TCP flows {:.1} Mbit/s; 2 x 10 Mbit/s disjoint",
                rates.mptcp, rates.tcp
            ),
        );
    }
    Ok(rows)
}

/// After sleeping `after`, the bytes acknowledged on the MPTCP connection's subflows, summed
/// per path (path 1: the client's 198.51.100.0/24 addresses), from `conns --json`.
fn acked_per_path(dataplane: &Dataplane<'_>, after: std::time::Duration) -> Result<[u64; 2]> {
    std::thread::sleep(after);
    let conns = dataplane.json(&["conns"])?;
    let mut acked = [0u64; 2];
    for subflow in conns
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["subflow_cc"].as_array().cloned().unwrap_or_default())
    {
        let ends = subflow["ends"].to_string();
        let path = usize::from(ends.contains("198.51.100."));
        acked[path] += subflow["bytes_acked"].as_u64().unwrap_or(0);
    }
    Ok(acked)
}
