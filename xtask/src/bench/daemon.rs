//! The `daemon` suite: the daemon's CPU time with 10,000 tracked MPTCP connections open (and
//! silent), with and without coupled congestion control, against the same daemon with none.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    agent::{Daemon, Dataplane},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{IdleConnections, Proto},
};

use super::Row;
use crate::{setup::setup, util::build_agent};

const CONNECTIONS: usize = 10_000;
const ROUNDS: usize = 3;
const WINDOW: Duration = Duration::from_secs(10);

pub fn daemon() -> Result<Vec<Row>> {
    setup()?;
    let agent = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
    let _lock = LabLock::acquire()?;
    // One subflow per connection: the sock_ops table holds every subflow once.
    let lab = DualHomedLab::new(LabOptions { client_subflow_endpoint: false, ..LabOptions::default() })?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let mut rows = Vec::new();
    for (settings, label) in [(&[][..], "no --cc"), (&["--cc", "lia"][..], "--cc lia")] {
        // Started before the connections, so sock_ops follows each from its handshake.
        let daemon = Daemon::start(&dataplane, settings)?;
        let started = Instant::now();
        let connections = IdleConnections::open(
            &lab.client,
            &lab.server,
            lab.server_addr(0, 5701),
            Proto::Mptcp,
            CONNECTIONS,
            Duration::from_secs(120),
        )?;
        let opened = started.elapsed();
        let tracked = dataplane.json(&["conns"])?.as_array().map_or(0, Vec::len);
        ensure!(tracked >= CONNECTIONS, "{tracked} of {CONNECTIONS} connections tracked");
        let pid = daemon.pid().context("daemon pid")?;
        let mut shares: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let before = cpu_seconds(pid)?;
                std::thread::sleep(WINDOW);
                Ok((cpu_seconds(pid)? - before) / WINDOW.as_secs_f64())
            })
            .collect::<Result<_>>()?;
        shares.sort_by(f64::total_cmp);
        let each: Vec<String> = shares.iter().map(|s| format!("{:.1}%", 100.0 * s)).collect();
        rows.push(Row {
            suite: "daemon".into(),
            case: format!("CPU, {CONNECTIONS} tracked connections, {label}"),
            value: 100.0 * shares[ROUNDS / 2],
            unit: "% of a core".into(),
            note: format!(
                "median of {ROUNDS} x {} s: {}; {tracked} tracked, opened in {:.1} s",
                WINDOW.as_secs(),
                each.join(", "),
                opened.as_secs_f64()
            ),
        });
        drop(connections);
        drop(daemon);
    }
    Ok(rows)
}

/// User plus system CPU time of process `pid` so far, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc/PID/stat")?.1.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz as f64)
}
