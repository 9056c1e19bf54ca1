//! Coupled congestion control against real kernel MPTCP: at a shared bottleneck, coupling lowers
//! an MPTCP connection's share against a regular TCP flow, and every subflow carries the
//! controller's decision while it does.

use std::{thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    agent::{Daemon, Dataplane},
    congestion::{Bottleneck, BottleneckLab},
    lock::LabLock,
};
use serde_json::Value;

const ROUNDS: usize = 2;
const SECONDS: u64 = 12;

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
            Ok(())
        })?;
        coupled.push(rates.mptcp_share());
        drop(daemon);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (uncoupled, coupled) = (mean(&uncoupled), mean(&coupled));
    println!("MPTCP share against one TCP flow: uncoupled {uncoupled:.3}, LIA {coupled:.3}");
    ensure!(
        coupled < uncoupled - 0.1,
        "LIA share {coupled:.3} is not well below the uncoupled {uncoupled:.3}"
    );
    Ok(())
}
