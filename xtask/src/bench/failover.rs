//! The `failover` suite: a bulk transfer from the dual-homed client over two 20 Mbit/s paths
//! while its first path breaks, under the kernel alone (static endpoints), mptcpd and the agent
//! (in-kernel and userspace path managers, the mode from the `[paths]` table or from a
//! per-application rule), over IPv4 and IPv6. Measures how long the receiving application gets no
//! data (the stall), the subflows opened, and the agent's reaction time.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    failover::{self, Break, ClientPm, RunningPm, Scenario},
    lab::{DualHomedLab, Family, LabOptions},
    lock::LabLock,
};

use super::{Row, median, range};
use crate::{setup::setup, util::build_agent};

/// Runs per setting; the median is reported.
const RUNS: usize = 7;

/// Run `n` of a setting transfers to port `FIRST_PORT + n`.
const FIRST_PORT: u16 = 5700;

const MPTCPD_NOTIFY: &str = "--notify-flags=existing,skip_link_local,skip_loopback";

/// One way of managing the client's paths, and what it takes to configure it.
struct Setting {
    name: &'static str,
    pm: ClientPm,
    config: &'static str,
    /// Runs; a setting expected to lose the transfer runs once.
    runs: usize,
    /// The mode a `[[paths.rule]]` gives the transfer: a run counts only if the agent logged
    /// that the rule matched, so the row cannot silently measure the table's mode instead.
    rule_mode: Option<&'static str>,
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
    Setting { name, pm: ClientPm::Agent(policy(keys)), config, runs: RUNS, rule_mode: None }
}

/// The userspace PM with table mode single-path and one rule, matching the bench's ports, that
/// gives the transfer `mode`: the per-application path beside the table-mode rows.
fn per_rule(mode: &'static str, config: &'static str) -> Setting {
    let last_port = FIRST_PORT + RUNS as u16 - 1;
    let rule = format!(
        "[[paths.rule]]\ndport = \"{FIRST_PORT}-{last_port}\"\nmode = \"{mode}\"\ninterfaces = [\"{{if0}}\", \"{{if1}}\"]\n"
    );
    Setting {
        name: "agent, userspace PM, per-application rule",
        pm: ClientPm::Agent(policy("pm = \"userspace\"\nmode = \"single-path\"") + &rule),
        config,
        runs: RUNS,
        rule_mode: Some(mode),
    }
}

fn mptcpd(flags: &'static str, config: &'static str) -> Setting {
    Setting {
        name: "mptcpd",
        pm: ClientPm::Mptcpd(vec!["--path-manager=addr_adv", flags, MPTCPD_NOTIFY]),
        config,
        runs: RUNS,
        rule_mode: None,
    }
}

fn kernel(endpoints: Vec<(usize, &'static str)>, config: &'static str, runs: usize) -> Setting {
    Setting { name: "kernel alone", pm: ClientPm::Kernel(endpoints), config, runs, rule_mode: None }
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
                per_rule(
                    "backup",
                    "pm, mode = \"single-path\" + 2 interfaces + a rule: dport, mode = \"backup\"",
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
                per_rule(
                    "full",
                    "pm, mode = \"single-path\" + 2 interfaces + a rule: dport, mode = \"full\"",
                ),
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
        // After the break the kernel resends all that is not acknowledged at the data level, from
        // the receiver's in-order point, behind what the surviving subflow holds: smaller send
        // buffers, less to resend and less ahead of it.
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
        Case {
            name: "full, link down, send buffers at most 128 KiB",
            client_sysctl: Some(("net.ipv4.tcp_wmem", "4096 16384 131072")),
            breaks: Break::LinkDown,
            wait_subflows: 1,
            settings: vec![kernel(
                vec![(0, "subflow"), (1, "subflow")],
                "2 `ip mptcp endpoint add` + `sysctl net.ipv4.tcp_wmem`",
                RUNS,
            )],
        },
        // The agent sets the same bound itself (the kernel's default tcp_wmem before it starts).
        Case {
            name: "full, link down, send-buffer-max = 131072",
            client_sysctl: None,
            breaks: Break::LinkDown,
            wait_subflows: 1,
            settings: vec![
                agent("agent, in-kernel PM", "send-buffer-max = 131072", "send-buffer-max + 2 interfaces"),
                agent(
                    "agent, userspace PM",
                    "pm = \"userspace\"\nsend-buffer-max = 131072",
                    "pm, send-buffer-max + 2 interfaces",
                ),
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

/// Fails unless the agent logged the transfer under rule 1 with `mode`.
fn check_rule(pm: &RunningPm, mode: &str) -> Result<()> {
    let events = pm.agent().context("a rule needs the agent")?.events()?;
    let rules: Vec<_> = events.iter().filter(|e| e["kind"] == "path_rule").collect();
    ensure!(!rules.is_empty(), "the agent logged no path_rule");
    ensure!(
        rules.iter().all(|e| e["rule"] == 1 && e["mode"] == mode),
        "not under the {mode} rule: {rules:?}"
    );
    Ok(())
}

/// The row's name: IPv4 rows keep their names from before the suite had IPv6.
fn case_name(family: Family, case: &Case, setting: &Setting) -> String {
    match family {
        Family::V4 => format!("{} / {}", case.name, setting.name),
        Family::V6 => format!("IPv6 / {} / {}", case.name, setting.name),
    }
}

pub fn failover() -> Result<Vec<Row>> {
    setup()?;
    let agent_binary = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent_binary) };
    let _lock = LabLock::acquire()?;
    let mut rows = Vec::new();
    for family in [Family::V4, Family::V6] {
        for case in cases() {
            for setting in &case.settings {
                rows.extend(measure(family, &case, setting)?);
            }
        }
    }
    Ok(rows)
}

/// Runs one setting of a case `setting.runs` times on fresh labs of `family`; its rows.
fn measure(family: Family, case: &Case, setting: &Setting) -> Result<Vec<Row>> {
    let case_name = case_name(family, case, setting);
    let mut stalls = Vec::new();
    let mut joins = Vec::new();
    let mut reactions = Vec::new();
    let mut failed = 0;
    for run in 0..setting.runs {
        let lab = DualHomedLab::new(LabOptions {
            family,
            client_subflow_endpoint: false,
            ..LabOptions::default()
        })?;
        lab.shape_client("20mbit")?;
        if let Some((key, value)) = case.client_sysctl {
            lab.client.sysctl(key, value)?;
        }
        let pm = match setting.pm.start(&lab) {
            Ok(pm) => pm,
            // mptcpd is the comparison, not what is measured: a host whose mptcpd cannot start
            // (no plugins installed) still gets the other rows, and a row saying why not.
            Err(error) if matches!(setting.pm, ClientPm::Mptcpd(_)) => {
                eprintln!("{case_name}: not run: {error:#}");
                let reason = format!("{error:#}").replace('\n', " ");
                return Ok(vec![Row {
                    suite: "failover".into(),
                    case: format!("{case_name}: not run"),
                    value: 0.0,
                    unit: "runs".into(),
                    note: reason.trim().to_owned(),
                }]);
            }
            Err(error) => return Err(error),
        };
        let scenario = Scenario {
            bytes: 6 << 20,
            port: FIRST_PORT + run as u16,
            break_after: Duration::from_secs(1),
            breaks: case.breaks,
            wait_subflows: case.wait_subflows,
        };
        let outcome = failover::run(&lab, scenario, || Ok(())).and_then(|(outcome, ())| {
            setting.rule_mode.map(|mode| check_rule(&pm, mode)).transpose()?;
            Ok(outcome)
        });
        match outcome {
            Ok(outcome) => {
                stalls.push(outcome.stall.as_secs_f64() * 1e3);
                joins.push(outcome.joins() as f64);
            }
            Err(error) => {
                eprintln!("{case_name}: run {run} failed: {error:#}");
                failed += 1;
            }
        }
        if let Some(reaction) =
            pm.agent().map(|agent| agent.events()).transpose()?.as_deref().and_then(agent_reaction)
        {
            reactions.push(reaction);
        }
    }
    let row = |case: String, value: f64, unit: &str, note: String| Row {
        suite: "failover".into(),
        case,
        value,
        unit: unit.into(),
        note,
    };
    let mut rows = Vec::new();
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
            format!(
                "of {}: the application got an error or timed out, or the rule did not match",
                setting.runs
            ),
        ));
    }
    Ok(rows)
}
