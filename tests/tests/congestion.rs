//! Coupled congestion control against real kernel MPTCP: at a shared bottleneck, coupling lowers
//! an MPTCP connection's share against a regular TCP flow to about one flow's, against
//! loss-based competitors (Reno: window coupling; cubic: window coupling along cubic's curve,
//! the kernel's cubic kept) and a model-based one (BBR: pacing coupling), and every subflow
//! carries the controller's decision while it does.

use std::{thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    agent::{Daemon, Dataplane},
    congestion::{Bottleneck, BottleneckLab},
    lock::LabLock,
};
use serde_json::Value;

/// Rounds per setting of the test at four subflows. Single rounds spread: in 8 local rounds
/// with merged losses, uncoupled 61-84% and LIA 36-61%; a CI run's two LIA rounds averaged
/// 60.8% against the uncoupled 64.1%. The medians of three keep the comparison off those tails.
const ROUNDS: usize = 3;
const SECONDS: u64 = 12;
/// Rounds per competitor of the goal test. RFC 6356's goal is one flow's share, 50%; each
/// competitor's band is the range of single 12 s rounds that `cargo xtask bench cc` measured in
/// this lab (2 subflows, LIA; runs of 5 rounds) widened by about 5 points each way: a median of
/// three outside it needs two rounds beyond any measured one. Cubic (cubic-shaped coupling with
/// losses merged per congestion event, three runs and this test's local run): 40.2-58.9%; BBR
/// (paced coupling, three runs): 37.2-70.5%, against 45-70% uncoupled. Reno's single rounds
/// spread from 31 to 60% and its medians from 38 to 59% across runs (see the README), too wide
/// for a band that says anything; the test above covers Reno.
const GOAL_ROUNDS: usize = 3;
const GOAL_BANDS: [(&str, &str, (f64, f64)); 2] =
    [("cubic", "cubic", (0.35, 0.64)), ("bbr", "paced", (0.32, 0.75))];

/// The subflows' congestion state of the lab's one MPTCP connection, from `conns --json`.
fn subflow_cc(dataplane: &Dataplane<'_>) -> Result<Vec<Value>> {
    let conns = dataplane.json(&["conns"])?;
    Ok(conns
        .as_array()
        .context("conns --json is a list")?
        .iter()
        .flat_map(|c| c["subflow_cc"].as_array().cloned().unwrap_or_default())
        .collect())
}

#[test]
fn coupling_lowers_the_share_at_a_shared_bottleneck() -> Result<()> {
    let _lock = LabLock::acquire()?;
    // Four subflows (one initial, three joins) through one 20 Mbit/s bottleneck with one Reno
    // TCP flow: uncoupled, they take most of it.
    let lab = BottleneckLab::new(Bottleneck::Shared { mbit: 20 }, 3, "reno")?;
    let ifaces: Vec<&str> = lab.client_ifs.iter().map(String::as_str).collect();
    let dataplane = Dataplane::attach(&lab.client, &ifaces)?;
    let duration = Duration::from_secs(SECONDS);
    let mut uncoupled = Vec::new();
    let mut coupled = Vec::new();
    let (mut merged, mut last_subflows) = (0u64, Vec::new());
    for _ in 0..ROUNDS {
        let daemon = Daemon::start(&dataplane, &["--cc", "none"])?;
        uncoupled.push(lab.run(1, duration, || Ok(()))?.mptcp_share());
        drop(daemon);
        let daemon = Daemon::start(&dataplane, &["--cc", "lia"])?;
        let rates = lab.run(1, duration, || {
            // Halfway through, every subflow runs on a fresh LIA decision and a coupled window.
            thread::sleep(duration / 2);
            let subflows = subflow_cc(&dataplane)?;
            ensure!(
                subflows.len() == 4,
                "{} subflows under congestion control: {subflows:?}",
                subflows.len()
            );
            for subflow in &subflows {
                ensure!(
                    subflow["algorithm"] == "lia"
                        && subflow["increase"].as_f64().is_some_and(|i| i > 0.0 && i < 1.0)
                        && subflow["decrease"].as_f64() == Some(0.5)
                        && subflow["coupled_cwnd"].as_u64().is_some(),
                    "subflow without a current LIA decision: {subflow}\n{}",
                    daemon.log()
                );
            }
            // The bottleneck's tail drops hit the subflows together: near the end some of their
            // losses have been merged into events another subflow began (checked over all
            // rounds: a CI round with 1-5 losses per subflow merged none).
            thread::sleep(duration / 2 - Duration::from_millis(1500));
            let subflows = subflow_cc(&dataplane)?;
            merged += subflows.iter().filter_map(|s| s["merged_losses"].as_u64()).sum::<u64>();
            last_subflows = subflows;
            Ok(())
        })?;
        coupled.push(rates.mptcp_share());
        drop(daemon);
    }
    ensure!(merged > 0, "no loss merged into another subflow's congestion event: {last_subflows:?}");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (uncoupled_median, coupled_median) = (median(&mut uncoupled), median(&mut coupled));
    println!(
        "MPTCP share against one TCP flow: uncoupled {uncoupled_median:.3} of {uncoupled:.3?}, LIA \
         {coupled_median:.3} of {coupled:.3?}"
    );
    ensure!(
        coupled_median < uncoupled_median,
        "LIA's median share {coupled_median:.3} ({coupled:.3?}) is not below the uncoupled \
         {uncoupled_median:.3} ({uncoupled:.3?})"
    );
    Ok(())
}

#[test]
fn the_coupled_share_at_a_shared_bottleneck_is_one_flows_against_cubic_and_bbr() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let duration = Duration::from_secs(SECONDS);
    for (competitor, coupling, band) in GOAL_BANDS {
        // Two subflows (one join) and one TCP flow of the competitor's algorithm, the client's
        // default, through one 20 Mbit/s bottleneck.
        let lab = BottleneckLab::new(Bottleneck::Shared { mbit: 20 }, 1, competitor)?;
        let ifaces: Vec<&str> = lab.client_ifs.iter().map(String::as_str).collect();
        let dataplane = Dataplane::attach(&lab.client, &ifaces)?;
        let daemon = Daemon::start(&dataplane, &["--cc", "lia"])?;
        let mut shares = Vec::new();
        for round in 0..GOAL_ROUNDS {
            let rates = lab.run(1, duration, || {
                if round == 0 {
                    coupled_while_running(&dataplane, coupling, duration).with_context(|| daemon.log())?;
                    kernel_keeps(&lab, competitor)?;
                }
                Ok(())
            })?;
            shares.push(rates.mptcp_share());
        }
        shares.sort_by(f64::total_cmp);
        let median = shares[GOAL_ROUNDS / 2];
        println!("{competitor}: LIA's share of a shared bottleneck: median {median:.3} of {shares:.3?}");
        ensure!(
            (band.0..=band.1).contains(&median),
            "against {competitor}: median share {median:.3} ({shares:.3?}) outside {band:?}"
        );
    }
    Ok(())
}

/// Checks that every established TCP socket of the client (the subflows and the competing
/// flow) runs `algorithm` in the kernel: coupling cubic or BBR does not switch them to Reno.
fn kernel_keeps(lab: &BottleneckLab, algorithm: &str) -> Result<()> {
    let out = lab.client.exec("ss", &["-tni", "state", "established"])?;
    // Detail lines (indented) name the socket's congestion control.
    let names: Vec<&str> = out
        .lines()
        .filter(|line| line.starts_with(char::is_whitespace))
        .filter_map(|line| line.split_whitespace().find(|w| ["reno", "cubic", "bbr"].contains(w)))
        .collect();
    ensure!(
        names.len() >= 3 && names.iter().all(|name| *name == algorithm),
        "client sockets' algorithms {names:?}, all {algorithm} expected:\n{out}"
    );
    Ok(())
}

/// Checks, every half second of a run's first `duration` less a second, that both subflows are
/// coupled by `coupling` under a current LIA decision (cubic's with cubic's 30% decrease); a
/// paced pair must be found sharing the bottleneck (one subflow capped) at least once.
fn coupled_while_running(dataplane: &Dataplane<'_>, coupling: &str, duration: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + duration - Duration::from_secs(1);
    let mut capped = false;
    let mut last = Vec::new();
    while std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        last = subflow_cc(dataplane)?;
        let current = |s: &Value| {
            s["algorithm"] == "lia"
                && s["coupling"] == coupling
                && s["current"] == true
                && (coupling != "cubic" || s["decrease"].as_f64().is_some_and(|d| (d - 0.3).abs() < 1e-3))
        };
        if last.len() == 2 && last.iter().all(current) {
            capped |= last.iter().any(|s| s["pacing_cap"].is_u64());
            if coupling != "paced" || capped {
                return Ok(());
            }
        }
    }
    anyhow::bail!("no two subflows coupled by {coupling} (capped: {capped}): {last:?}")
}
