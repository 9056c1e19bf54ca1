//! `cargo xtask demo`: the dataplane on a namespace lab, tracking real kernel MPTCP traffic.

use std::{process::Command, time::Duration};

use anyhow::Result;
use mptcp_tests::{
    agent::{Daemon, Dataplane, instance_dir},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Proto, Server, transfer},
};

use crate::{
    setup::setup,
    util::{build_agent, output},
};

const CONNECTIONS: usize = 3;
const BYTES: u64 = 4 << 20;

pub fn demo() -> Result<()> {
    setup()?;
    let agent = build_agent(false)?;
    // SAFETY: single-threaded at this point; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };

    let _lock = LabLock::acquire()?;
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
        "\n== dataplane instance {} on the server's interfaces (XDP ingress, tcx egress), daemon running",
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
    drop(dataplane);
    drop(lab);
    drop(_lock);
    // Part two: the token-steering balancer (`cargo xtask lab lb`).
    crate::lab::balancer_lab(20, "token")
}

pub fn indent(text: &str) -> String {
    text.lines().map(|line| format!("   {line}\n")).collect()
}
