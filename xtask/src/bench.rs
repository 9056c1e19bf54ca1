//! `cargo xtask bench [FILTER]`: runs the benchmark suites (all, or those whose name contains
//! FILTER), prints one table and writes `target/bench/results.json` and `results.md`.
//!
//! A suite is a function returning [`Row`]s; add one to [`SUITES`] to extend the report.

mod failover;

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use mptcp_tests::{
    agent::Dataplane,
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
};

use crate::{
    setup::setup,
    util::{build_agent, cargo, output, workspace_root},
};

/// One measured value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub suite: String,
    pub case: String,
    pub value: f64,
    pub unit: String,
    /// What exactly was measured, and how.
    pub note: String,
}

struct Suite {
    name: &'static str,
    run: fn() -> Result<Vec<Row>>,
}

const SUITES: &[Suite] = &[
    Suite { name: "parser", run: parser },
    Suite { name: "dataplane", run: dataplane },
    Suite { name: "throughput", run: throughput },
    Suite { name: "failover", run: failover::failover },
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
    setup()?;
    let agent = build_agent(true)?;
    let stdout = output(std::process::Command::new(&agent).arg("bench"))?;
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
