//! `cargo xtask lab lb`: the token-steering balancer in front of three MPTCP backends, with a
//! dual-homed client; prints where every connection and subflow landed.

use std::{sync::Arc, thread};

use anyhow::{Result, ensure};
use mptcp_tests::{
    balancer::{Balancer, BalancerLab, BalancerLabOptions},
    kernel,
    lock::LabLock,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};

use crate::{
    setup::setup,
    util::{build_agent, indent},
};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lab {
    /// The load balancer.
    Lb,
}

pub fn lab(which: Lab, connections: usize, steering: &str) -> Result<()> {
    match which {
        Lab::Lb => {
            setup()?;
            let agent = build_agent(false)?;
            // SAFETY: single-threaded at this point; the lab helpers read it to find the agent.
            unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
            balancer_lab(connections, steering)
        }
    }
}

/// Runs the balancer lab; also the second part of `cargo xtask demo`.
pub fn balancer_lab(connections: usize, steering: &str) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    println!(
        "\n== balancer lab: client {} -> balancer {} -> {} backends",
        lab.client.name(),
        lab.balancer.name(),
        lab.backends.len()
    );
    for (index, path) in lab.paths.iter().enumerate() {
        println!(
            "   path {index}: client {} {} / {} <-> balancer {}",
            path.client_if, path.client[0], path.client[1], path.balancer_if
        );
    }
    for backend in &lab.backends {
        println!(
            "   {}: {} / {} in {}, VIPs on loopback",
            backend.name,
            backend.addr[0],
            backend.addr[1],
            backend.ns.name()
        );
    }
    println!("   VIPs {} and {}", lab.vip(0), lab.vip(1));
    println!("\n== lb.toml ({steering})\n{}", indent(&lab.config(steering)));
    let balancer = Balancer::start(&lab, steering)?;
    println!("== mptcp-agent lb start: instance {}", balancer.instance());

    let mut servers = Vec::new();
    for backend in &lab.backends {
        for family in 0..2 {
            servers.push(Server::start_until_stopped(&backend.ns, lab.vip(family), Proto::Mptcp)?);
        }
    }
    let gate = Arc::new(Gate::default());
    let options = ClientOptions {
        proto: Proto::Mptcp,
        bytes: 100_000,
        // Hash-only mode loses most joins: do not wait for them there.
        wait_subflows: u8::from(steering == "token"),
        hold: Some(gate.clone()),
    };
    let per_family = connections.div_ceil(2);
    let (subflows, stats) = thread::scope(|scope| -> Result<_> {
        let handles: Vec<_> = (0..2 * per_family)
            .map(|n| {
                let options = options.clone();
                let lab = &lab;
                scope.spawn(move || transfer(&lab.client, lab.vip(n % 2), options))
            })
            .collect();
        gate.wait_for(handles.len())?;
        // The joins of hash-only mode are refused within a round trip.
        thread::sleep(std::time::Duration::from_millis(300));
        let subflows: Vec<Vec<kernel::KernelSubflow>> =
            lab.backends.iter().map(|b| kernel::subflows(&b.ns)).collect::<Result<_>>()?;
        let stats = balancer.run(&["lb", "stats"])?;
        gate.open();
        for handle in handles {
            handle.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        }
        Ok((subflows, stats))
    })?;
    for server in servers {
        server.stop()?;
    }
    println!(
        "\n== {} MPTCP connections ({per_family} IPv4, {per_family} IPv6), held open; mptcp-agent lb stats",
        2 * per_family
    );
    print!("{}", indent(&stats));
    println!("\n== what each backend's kernel holds (ss -tniM)");
    println!("   {:<10} {:>12} {:>16} {:>14}", "backend", "connections", "joined subflows", "with a join");
    let mut total_joined = 0;
    for (backend, subflows) in lab.backends.iter().zip(&subflows) {
        let tokens: std::collections::BTreeSet<u32> = subflows.iter().map(|s| s.token).collect();
        let joined: Vec<&kernel::KernelSubflow> = subflows.iter().filter(|s| s.flags.contains('J')).collect();
        let with_join: std::collections::BTreeSet<u32> = joined.iter().map(|s| s.token).collect();
        println!("   {:<10} {:>12} {:>16} {:>14}", backend.name, tokens.len(), joined.len(), with_join.len());
        total_joined += with_join.len();
    }
    println!("   {total_joined} of {} connections have their join on their own backend", 2 * per_family);
    if steering == "token" {
        ensure!(total_joined == 2 * per_family, "token steering lost joins");
    }
    Ok(())
}
