//! `cargo xtask demo`: the dataplane on a namespace lab, tracking real kernel MPTCP traffic; then
//! the balancer, alone and as three instances behind ECMP.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use mptcp_tests::{
    agent::{Daemon, Dataplane, instance_dir},
    failover::{self, Break, ClientPm, Scenario, agent_config},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Proto, Server, transfer},
};

use crate::{
    setup::setup,
    util::{build_agent, indent, output},
};

const CONNECTIONS: usize = 3;
const BYTES: u64 = 4 << 20;

pub fn demo() -> Result<()> {
    setup()?;
    let agent = build_agent(false)?;
    // SAFETY: single-threaded at this point; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };

    {
        let _lock = LabLock::acquire()?;
        tracking()?;
        path_management()?;
    }
    // Part three: the token-steering balancer (`cargo xtask lab lb`), which takes the lock itself;
    // part four: three instances of it behind an ECMP router, joins to the backends' join
    // addresses from the clients' second paths (`subflow fullmesh`, what README asks of
    // clients; `cargo xtask lab lb --instances 3 --fullmesh`).
    crate::lab::balancer_lab(20, "token")?;
    let ecmp =
        crate::lab::EcmpArgs { instances: 3, mode: crate::lab::EcmpMode::JoinAddresses, fullmesh: true };
    crate::lab::ecmp_lab(ecmp, 24, "token")
}

/// The dataplane on the server's interfaces, tracking connections from a dual-homed client.
fn tracking() -> Result<()> {
    let lab = DualHomedLab::new(LabOptions { server_signal_endpoint: true, ..LabOptions::default() })?;
    println!("\n== lab: client {} <=> server {}", lab.client.name(), lab.server.name());
    for (index, path) in lab.paths.iter().enumerate() {
        println!(
            "   path {index}: {} {} <-> {} {}",
            path.client_if, path.client_addr, path.server_if, path.server_addr
        );
    }
    println!("   client endpoints:\n{}", indent(&lab.client.ip(&["mptcp", "endpoint", "show"])?));
    println!("   server endpoints:\n{}", indent(&lab.server.ip(&["mptcp", "endpoint", "show"])?));

    let ifaces: Vec<&str> = lab.paths.iter().map(|path| path.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let daemon = Daemon::start(&dataplane, &[])?;
    println!(
        "\n== dataplane instance {} on the server's interfaces (ingress at tcx on veth, egress at tcx), daemon running",
        dataplane.instance()
    );

    let server = Server::start(&lab.server, lab.server_addr(0, 5201), Proto::Mptcp, CONNECTIONS)?;
    for n in 1..=CONNECTIONS {
        let done = transfer(
            &lab.client,
            server.addr,
            ClientOptions { proto: Proto::Mptcp, bytes: BYTES, wait_subflows: 1, hold: None },
        )?;
        println!("   MPTCP connection {n}: {} bytes, {} additional subflow(s)", done.bytes, done.subflows);
    }
    server.join()?;
    let plain = Server::start(&lab.server, lab.server_addr(0, 5202), Proto::Tcp, 1)?;
    let done = transfer(
        &lab.client,
        plain.addr,
        ClientOptions { proto: Proto::Tcp, bytes: BYTES, wait_subflows: 0, hold: None },
    )?;
    plain.join()?;
    println!("   plain TCP connection: {} bytes", done.bytes);
    std::thread::sleep(Duration::from_millis(500));

    for (title, args) in [
        ("mptcp-agent conns", vec!["conns"]),
        ("mptcp-agent subflows", vec!["subflows"]),
        ("mptcp-agent events", vec!["events"]),
    ] {
        println!("\n== {title}");
        print!("{}", indent(&dataplane.run(&args)?));
    }
    for iface in &ifaces {
        println!("\n== mptcp-agent stats --iface {iface}");
        print!("{}", indent(&dataplane.run(&["stats", "--iface", iface])?));
    }
    let map = instance_dir(dataplane.instance()).join("maps/CONNECTIONS");
    println!("\n== bpftool map dump pinned {}", map.display());
    print!("{}", output(Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&map))?);
    println!("\n== tearing the lab down");
    drop(daemon);
    Ok(())
}

/// The agent's path manager in the client's namespace: Wi-Fi-like first path preferred, the
/// second a backup; the first link goes down in the middle of a transfer.
fn path_management() -> Result<()> {
    const POLICY: &str = "[paths]\nmode = \"backup\"\n\n[[paths.interface]]\nname = \"{if0}\"\n\n[[paths.interface]]\nname = \"{if1}\"\n";
    let lab = DualHomedLab::new(LabOptions { client_subflow_endpoint: false, ..LabOptions::default() })?;
    lab.shape_client("20mbit")?;
    println!("\n== path management: the agent in the client's namespace, two 20 Mbit/s paths, policy:");
    print!("{}", indent(&agent_config(&lab, POLICY)));
    let pm = ClientPm::Agent(POLICY.into()).start(&lab)?;
    let agent = pm.agent().context("the agent runs")?;
    println!("\n== mptcp-agent paths");
    print!("{}", indent(&agent.dataplane.run(&["paths"])?));
    let scenario = Scenario {
        bytes: 6 << 20,
        port: 5203,
        break_after: Duration::from_secs(1),
        breaks: Break::LinkDown,
        wait_subflows: 1,
    };
    let (outcome, during) = failover::run(&lab, scenario, || agent.dataplane.run(&["paths"]))?;
    println!("\n== mptcp-agent paths during the transfer: the backup subflow is open and idle");
    print!("{}", indent(&during));
    println!(
        "\n== {} down mid-transfer: {} bytes delivered, longest pause at the receiver {:.1} ms",
        lab.paths[0].client_if,
        outcome.bytes,
        outcome.stall.as_secs_f64() * 1e3
    );
    print!("{}", indent(&agent.dataplane.run(&["paths"])?));
    println!("\n== path events (mptcp-agent events)");
    let events = agent.dataplane.run(&["events"])?;
    let paths_only: String = events
        .lines()
        .filter(|line| ["path_", "endpoint_", "pm_", "limits"].iter().any(|kind| line.contains(kind)))
        .map(|line| format!("{line}\n"))
        .collect();
    print!("{}", indent(&paths_only));
    Ok(())
}
