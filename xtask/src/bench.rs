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
    Suite { name: "cc-reno", run: || congestion("reno") },
    Suite { name: "cc-cubic", run: || congestion("cubic") },
    Suite { name: "cc-bbr", run: || congestion("bbr") },
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

/// Seconds of each congestion-control run, and rounds of every setting (interleaved).
const CC_SECONDS: u64 = 12;
const CC_ROUNDS: usize = 5;
/// `--cc` settings compared.
const CC_SETTINGS: [&str; 2] = ["none", "lia"];

/// Coupled congestion control on the bottleneck lab (`mptcp_tests::congestion`), against one
/// TCP flow of `competitor`'s algorithm (the client's default, so also the uncoupled
/// subflows'; a suite each, `bench cc` runs all three): MPTCP's share at a shared 20 Mbit/s bottleneck
/// (goal 45-55%), its rate alone over two disjoint 10 Mbit/s bottlenecks (goal >= 90% of 20),
/// and its rate on the free path when the TCP flow loads the other (goal >= 90% of 10).
fn congestion(competitor: &str) -> Result<Vec<Row>> {
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
    let name = |cc: &str| if cc == "none" { "uncoupled".to_owned() } else { cc.to_uppercase() };
    let mut rows = Vec::new();
    // Per setting, the rounds' values of each scenario.
    let mut shared = vec![Vec::new(); CC_SETTINGS.len()];
    let mut alone = vec![Vec::new(); CC_SETTINGS.len()];
    let mut loaded = vec![Vec::new(); CC_SETTINGS.len()];
    // The reference: what an MPTCP connection of one subflow gets against one TCP flow in this
    // lab, interleaved with the others' rounds. RFC 6356's goal is one flow's share; if one
    // subflow gets less than half here, that is MPTCP's cost in this lab, not the coupling's.
    let mut single = Vec::new();
    {
        let lab = BottleneckLab::new(Bottleneck::Shared { mbit: 20 }, 1, competitor)?;
        let ifaces: Vec<&str> = lab.client_ifs.iter().map(String::as_str).collect();
        let dataplane = Dataplane::attach(&lab.client, &ifaces)?;
        let single_lab = BottleneckLab::new(Bottleneck::Shared { mbit: 20 }, 0, competitor)?;
        for _ in 0..CC_ROUNDS {
            for (cc, result) in CC_SETTINGS.iter().zip(&mut shared) {
                let _daemon = Daemon::start(&dataplane, &["--cc", cc])?;
                result.push(100.0 * lab.run(1, duration, || Ok(()))?.mptcp_share());
            }
            single.push(100.0 * single_lab.run(1, duration, || Ok(()))?.mptcp_share());
        }
    }
    {
        let lab = BottleneckLab::new(Bottleneck::Disjoint { mbit: 10 }, 1, competitor)?;
        let ifaces: Vec<&str> = lab.client_ifs.iter().map(String::as_str).collect();
        let dataplane = Dataplane::attach(&lab.client, &ifaces)?;
        for _ in 0..CC_ROUNDS {
            for (i, cc) in CC_SETTINGS.iter().enumerate() {
                let _daemon = Daemon::start(&dataplane, &["--cc", cc])?;
                alone[i].push(lab.run(0, duration, || Ok(()))?.mptcp);
                let free = std::cell::Cell::new(None);
                let rates = lab.run(1, duration, || {
                    free.set(Some(free_path(&lab, duration)?));
                    Ok(())
                })?;
                loaded[i].push((free.get().context("no free-path measurement")?, rates));
            }
        }
    }
    let mut row = |case: String, values: &mut [f64], unit: &str, note: String| {
        let each: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
        let value = median(values).unwrap_or(f64::NAN);
        rows.push(Row {
            suite: "cc".into(),
            case,
            value,
            unit: unit.into(),
            note: format!(
                "median of {CC_ROUNDS} x {CC_SECONDS} s, range {}: {}; {note}",
                range(values),
                each.join(", ")
            ),
        });
        values.to_vec()
    };
    row(
        format!("{competitor}: shared 20 Mbit/s, 1 subflow (no join) vs 1 TCP: reference"),
        &mut single,
        "% MPTCP",
        "one flow's share in this lab; RFC 6356: 50%".into(),
    );
    let mut sorted = Vec::new();
    for (i, cc) in CC_SETTINGS.iter().enumerate() {
        let setting = name(cc);
        let share = row(
            format!("{competitor}: shared 20 Mbit/s, 2 subflows vs 1 TCP: {setting}"),
            &mut shared[i],
            "% MPTCP",
            "goal 45-55%".into(),
        );
        let alone = row(
            format!("{competitor}: disjoint 2 x 10 Mbit/s, MPTCP alone: {setting}"),
            &mut alone[i],
            "Mbit/s",
            "goal >= 18 (90% of 20)".into(),
        );
        let free: Vec<String> = loaded[i]
            .iter()
            .map(|(f, rates)| {
                format!(
                    "{:.0}% of MPTCP's bytes on path 1, busy {:.0}% rwnd-limited {:.0}% sndbuf-limited {:.0}%, TCP {:.1} Mbit/s",
                    f.share, f.busy, f.rwnd_limited, f.sndbuf_limited, rates.tcp
                )
            })
            .collect();
        let mut rates: Vec<f64> = loaded[i].iter().map(|(f, _)| f.mbit).collect();
        let free_rate = row(
            format!("{competitor}: disjoint, 1 TCP flow on path 0: MPTCP on path 1: {setting}"),
            &mut rates,
            "Mbit/s",
            format!("goal >= 9 (90% of 10); path-1 subflow per round: {}", free.join("; ")),
        );
        sorted.push([share, alone, free_rate]);
    }
    for (scenario, what) in ["shared share", "disjoint alone", "free path"].iter().enumerate() {
        let [uncoupled, coupled] = [&sorted[0][scenario], &sorted[1][scenario]];
        let overlap = uncoupled.first() <= coupled.last() && coupled.first() <= uncoupled.last();
        rows.push(Row {
            suite: "cc".into(),
            case: format!("{competitor}: {what}: LIA - uncoupled (medians)"),
            value: median(&mut coupled.clone()).unwrap_or(f64::NAN)
                - median(&mut uncoupled.clone()).unwrap_or(f64::NAN),
            unit: "difference".into(),
            note: format!("rounds {}", if overlap { "overlap" } else { "do not overlap" }),
        });
    }
    Ok(rows)
}

/// MPTCP on the free path (1, the client's second address) of a disjoint lab, between a
/// sixth of `duration` in and a second before its end, from the kernel's `tcp_info`.
#[derive(Debug, Clone, Copy)]
struct FreePath {
    mbit: f64,
    /// MPTCP's bytes on path 1, % of its bytes on both.
    share: f64,
    /// The path-1 subflow's sending time, % of the interval.
    busy: f64,
    rwnd_limited: f64,
    sndbuf_limited: f64,
}

fn free_path(
    lab: &mptcp_tests::congestion::BottleneckLab,
    duration: std::time::Duration,
) -> Result<FreePath> {
    use mptcp_tests::congestion::send_stats;
    let mptcp_server = lab.server(5201);
    std::thread::sleep(duration / 6);
    let (first, start) = (send_stats(&lab.client, mptcp_server)?, std::time::Instant::now());
    std::thread::sleep(duration - duration / 6 - std::time::Duration::from_secs(1));
    let (last, elapsed) = (send_stats(&lab.client, mptcp_server)?, start.elapsed());
    let on_path = |path: usize| {
        last.iter()
            .filter(|(local, _)| local.ip() == lab.client_addrs[path])
            .map(|(local, stats)| {
                let before = first.iter().find(|(l, _)| l == local).map(|(_, s)| *s).unwrap_or_default();
                stats.since(before)
            })
            .next()
            .with_context(|| format!("no MPTCP subflow from {} in ss", lab.client_addrs[path]))
    };
    let (loaded, free) = (on_path(0)?, on_path(1)?);
    let ms = elapsed.as_secs_f64() * 1e3;
    Ok(FreePath {
        mbit: free.bytes_acked as f64 * 8.0 / elapsed.as_secs_f64() / 1e6,
        share: 100.0 * free.bytes_acked as f64 / (free.bytes_acked + loaded.bytes_acked).max(1) as f64,
        busy: 100.0 * free.busy_ms as f64 / ms,
        rwnd_limited: 100.0 * free.rwnd_limited_ms as f64 / ms,
        sndbuf_limited: 100.0 * free.sndbuf_limited_ms as f64 / ms,
    })
}
