//! The `failover` suite: a bulk transfer from the dual-homed client over two 20 Mbit/s paths
//! while its first path breaks, under the kernel alone (static endpoints), mptcpd and the agent
//! (in-kernel and userspace path managers). Measures how long the receiving application gets no
//! data (the stall), the subflows opened, and the agent's reaction time.

use std::time::Duration;

use anyhow::Result;
use mptcp_tests::{
    failover::{self, Break, ClientPm, Scenario},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
};

use super::{Row, median, range};
use crate::{setup::setup, util::build_agent};

/// Runs per setting; the median is reported.
const RUNS: usize = 7;

const MPTCPD_NOTIFY: &str = "--notify-flags=existing,skip_link_local,skip_loopback";

/// One way of managing the client's paths, and what it takes to configure it.
struct Setting {
    name: &'static str,
    pm: ClientPm,
    config: &'static str,
    /// Runs; a setting expected to lose the transfer runs once.
    runs: usize,
}

struct Case {
    name: &'static str,
    /// A sysctl set in the client's namespace first.
    client_sysctl: Option<(&'static str, &'static str)>,
    breaks: Break,
    /// Additional subflows the transfer waits for before the bulk.
    wait_subflows: u8,
    settings: Vec<Setting>,
}

/// The agent's `[paths]` table for the lab client's two interfaces.
fn policy(keys: &str) -> String {
    format!(
        "[paths]\n{keys}\n[[paths.interface]]\nname = \"{{if0}}\"\n[[paths.interface]]\nname = \"{{if1}}\"\n"
    )
}

fn agent(name: &'static str, keys: &str, config: &'static str) -> Setting {
    Setting { name, pm: ClientPm::Agent(policy(keys)), config, runs: RUNS }
}

fn mptcpd(flags: &'static str, config: &'static str) -> Setting {
    Setting {
        name: "mptcpd",
        pm: ClientPm::Mptcpd(vec!["--path-manager=addr_adv", flags, MPTCPD_NOTIFY]),
        config,
        runs: RUNS,
    }
}

fn kernel(endpoints: Vec<(usize, &'static str)>, config: &'static str, runs: usize) -> Setting {
    Setting { name: "kernel alone", pm: ClientPm::Kernel(endpoints), config, runs }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "backup, link down",
            client_sysctl: None,
            breaks: Break::LinkDown,
            wait_subflows: 1,
            settings: vec![
                kernel(
                    vec![(0, "subflow"), (1, "subflow backup")],
                    "2 `ip mptcp endpoint add` (second: backup)",
                    RUNS,
                ),
                mptcpd(
                    "--addr-flags=subflow,backup",
                    "--addr-flags=subflow,backup: flags apply to every address",
                ),
                agent("agent, in-kernel PM", "mode = \"backup\"", "mode = \"backup\" + 2 interfaces"),
                agent(
                    "agent, userspace PM",
                    "pm = \"userspace\"\nmode = \"backup\"",
                    "pm, mode + 2 interfaces",
                ),
            ],
        },
        Case {
            name: "full, link down",
            client_sysctl: None,
            breaks: Break::LinkDown,
            wait_subflows: 1,
            settings: vec![
                kernel(vec![(0, "subflow"), (1, "subflow")], "2 `ip mptcp endpoint add`", RUNS),
                mptcpd("--addr-flags=subflow", "--addr-flags=subflow"),
                agent("agent, in-kernel PM", "", "2 interfaces"),
                agent("agent, userspace PM", "pm = \"userspace\"", "pm + 2 interfaces"),
            ],
        },
        Case {
            name: "single-path, link down",
            client_sysctl: None,
            breaks: Break::LinkDown,
            wait_subflows: 0,
            settings: vec![
                kernel(vec![], "none: no second path ever opens", 1),
                agent(
                    "agent, in-kernel PM",
                    "mode = \"single-path\"",
                    "mode = \"single-path\" + 2 interfaces",
                ),
                agent(
                    "agent, userspace PM",
                    "pm = \"userspace\"\nmode = \"single-path\"",
                    "pm, mode + 2 interfaces",
                ),
            ],
        },
        Case {
            name: "full, address removed",
            client_sysctl: None,
            breaks: Break::AddressRemoved,
            wait_subflows: 1,
            settings: vec![
                kernel(vec![(0, "subflow"), (1, "subflow")], "2 `ip mptcp endpoint add`", RUNS),
                mptcpd("--addr-flags=subflow", "--addr-flags=subflow"),
                agent("agent, in-kernel PM", "", "2 interfaces"),
            ],
        },
        // The full-mode stall is the time to drain what the surviving subflow already holds, which
        // the lost data is sent again behind: smaller send buffers, shorter stall.
        Case {
            name: "full, link down, send buffers at most 256 KiB",
            client_sysctl: Some(("net.ipv4.tcp_wmem", "4096 16384 262144")),
            breaks: Break::LinkDown,
            wait_subflows: 1,
            settings: vec![
                kernel(vec![(0, "subflow"), (1, "subflow")], "2 `ip mptcp endpoint add`", RUNS),
                agent("agent, in-kernel PM", "", "2 interfaces"),
            ],
        },
    ]
}

/// How long the agent took from the link or address event to its first request, from its log.
fn agent_reaction(events: &[serde_json::Value]) -> Option<f64> {
    let seen = events
        .iter()
        .find(|e| matches!(e["kind"].as_str(), Some("path_link_down" | "path_address_removed")))
        .and_then(|e| e["time_ns"].as_u64())?;
    let requests = [
        "endpoint_flags",
        "endpoint_added",
        "endpoint_removed",
        "subflow_priority",
        "subflow_created",
        "address_withdrawn",
        "subflow_destroyed",
    ];
    let acted = events
        .iter()
        .filter(|e| requests.contains(&e["kind"].as_str().unwrap_or("")))
        .filter_map(|e| e["time_ns"].as_u64())
        .find(|at| *at >= seen)?;
    Some((acted - seen) as f64 / 1e3)
}

pub fn failover() -> Result<Vec<Row>> {
    setup()?;
    let agent_binary = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent_binary) };
    let _lock = LabLock::acquire()?;
    let mut rows = Vec::new();
    for case in cases() {
        for setting in &case.settings {
            let mut stalls = Vec::new();
            let mut joins = Vec::new();
            let mut reactions = Vec::new();
            let mut failed = 0;
            for run in 0..setting.runs {
                let lab = DualHomedLab::new(LabOptions {
                    client_subflow_endpoint: false,
                    ..LabOptions::default()
                })?;
                lab.shape_client("20mbit")?;
                if let Some((key, value)) = case.client_sysctl {
                    lab.client.sysctl(key, value)?;
                }
                let pm = setting.pm.start(&lab)?;
                let scenario = Scenario {
                    bytes: 6 << 20,
                    port: 5700 + run as u16,
                    break_after: Duration::from_secs(1),
                    breaks: case.breaks,
                    wait_subflows: case.wait_subflows,
                };
                match failover::run(&lab, scenario, || Ok(())) {
                    Ok((outcome, ())) => {
                        stalls.push(outcome.stall.as_secs_f64() * 1e3);
                        joins.push(outcome.joins() as f64);
                    }
                    Err(error) => {
                        eprintln!("{} / {}: run {run} failed: {error:#}", case.name, setting.name);
                        failed += 1;
                    }
                }
                if let Some(reaction) =
                    pm.agent().map(|agent| agent.events()).transpose()?.as_deref().and_then(agent_reaction)
                {
                    reactions.push(reaction);
                }
            }
            let case_name = format!("{} / {}", case.name, setting.name);
            let row = |case: String, value: f64, unit: &str, note: String| Row {
                suite: "failover".into(),
                case,
                value,
                unit: unit.into(),
                note,
            };
            let runs = stalls.len();
            if let Some(stall) = median(&mut stalls) {
                rows.push(row(
                    format!("{case_name}: stall"),
                    stall,
                    "ms",
                    format!(
                        "median of {runs} ({} ms); longest time without data at the receiving application after the break, 2 x 20 Mbit/s; config: {}",
                        range(&stalls),
                        setting.config
                    ),
                ));
            }
            if let Some(opened) = median(&mut joins) {
                rows.push(row(
                    format!("{case_name}: subflows opened"),
                    opened,
                    "subflows",
                    "median per connection, beside the initial one (SF_ESTABLISHED on the client)".into(),
                ));
            }
            if let Some(reaction) = median(&mut reactions) {
                rows.push(row(
                    format!("{case_name}: reaction"),
                    reaction,
                    "us",
                    format!(
                        "median of {}: the agent's log, link or address event to its first request",
                        reactions.len()
                    ),
                ));
            }
            if failed > 0 {
                rows.push(row(
                    format!("{case_name}: transfers failed"),
                    failed as f64,
                    "runs",
                    format!("of {}: the application got an error or timed out", setting.runs),
                ));
            }
        }
    }
    Ok(rows)
}
