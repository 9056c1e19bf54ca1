//! Live connection and subflow tracking against what the kernel reports (`ss -M`,
//! `ip mptcp monitor`) and what tshark's MPTCP analysis finds in a capture of the same traffic.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::Command,
    sync::Arc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    TempDir,
    agent::{Daemon, Dataplane},
    capture::{Capture, tshark_fields},
    kernel::{self, Monitor},
    lab::{DualHomedLab, Family, LabOptions},
    lock::LabLock,
    netns::run,
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};
use serde_json::Value;

const CONNECTIONS: usize = 3;
const BYTES: u64 = 300_000;

fn hex(value: &Value) -> Option<u64> {
    u64::from_str_radix(value.as_str()?.trim_start_matches("0x"), 16).ok()
}

fn addr(value: &Value) -> Option<SocketAddr> {
    value.as_str()?.parse().ok()
}

/// A subflow's ends, order-free.
fn ends(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

/// One MPTCP connection as tshark's analysis sees it.
#[derive(Debug, Default)]
struct TsharkConnection {
    subflows: BTreeSet<(SocketAddr, SocketAddr)>,
    tokens: BTreeSet<u64>,
    idsns: BTreeSet<u64>,
    keys: BTreeSet<u64>,
    reinjected_packets: u64,
}

fn tshark_connections(pcap: &std::path::Path) -> Result<BTreeMap<u64, TsharkConnection>> {
    let fields = [
        "mptcp.stream",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "mptcp.expected_token",
        "mptcp.expected_idsn",
        "tcp.options.mptcp.sendkey",
        "tcp.options.mptcp.recvkey",
        "mptcp.reinjection_of",
    ];
    let rows = tshark_fields(pcap, &fields)?;
    let mut connections: BTreeMap<u64, TsharkConnection> = BTreeMap::new();
    let numbers = |cell: &str| -> Vec<u64> {
        cell.split(',')
            .filter(|v| !v.is_empty())
            .filter_map(|v| {
                v.strip_prefix("0x").map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
            })
            .collect()
    };
    for row in rows {
        let Some(stream) = row.first().and_then(|s| s.parse::<u64>().ok()) else { continue };
        let cell = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
        let src: std::net::IpAddr = cell(1).parse().or_else(|_| cell(2).parse())?;
        let dst: std::net::IpAddr = cell(4).parse().or_else(|_| cell(5).parse())?;
        let connection = connections.entry(stream).or_default();
        connection
            .subflows
            .insert(ends(SocketAddr::new(src, cell(3).parse()?), SocketAddr::new(dst, cell(6).parse()?)));
        connection.tokens.extend(numbers(cell(7)));
        connection.idsns.extend(numbers(cell(8)));
        connection.keys.extend(numbers(cell(9)));
        connection.keys.extend(numbers(cell(10)));
        if !cell(11).is_empty() {
            connection.reinjected_packets += 1;
        }
    }
    Ok(connections)
}

fn tracking_matches_the_kernel_and_tshark(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let options =
        LabOptions { family, client_backup: true, server_signal_endpoint: true, ..LabOptions::default() };
    let lab = DualHomedLab::new(options)?;
    let scratch = TempDir::new("pcap")?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &[])?;
    let server_monitor = Monitor::start(&lab.server)?;
    let client_monitor = Monitor::start(&lab.client)?;
    let mut captures: Vec<Capture> = ifaces
        .iter()
        .map(|iface| Capture::start(&lab.server, iface, &scratch.path().join(format!("{iface}.pcap"))))
        .collect::<Result<_>>()?;

    // Several concurrent connections, held open while the kernel and the tables are compared.
    let server = Server::start(&lab.server, lab.server_addr(0, 5300), Proto::Mptcp, CONNECTIONS)?;
    let gate = Arc::new(Gate::default());
    let (kernel_subflows, kernel_tokens, subflows, conns) = thread::scope(|scope| -> Result<_> {
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let options = ClientOptions {
                    proto: Proto::Mptcp,
                    bytes: BYTES,
                    wait_subflows: 1,
                    hold: Some(gate.clone()),
                };
                scope.spawn(|| transfer(&lab.client, server.addr, options))
            })
            .collect();
        let snapshot = (|| -> Result<_> {
            gate.wait_for(CONNECTIONS)?;
            // The server withdraws its second address: REMOVE_ADDR on every connection.
            lab.server.ip(&["mptcp", "endpoint", "flush"])?;
            thread::sleep(Duration::from_millis(500));
            let kernel_subflows = kernel::subflows(&lab.server)?;
            let kernel_tokens: BTreeSet<u32> = kernel::connection_tokens(&lab.server)?.into_iter().collect();
            Ok((kernel_subflows, kernel_tokens, dataplane.json(&["subflows"])?, dataplane.json(&["conns"])?))
        })();
        gate.open();
        for client in clients {
            let done = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
            ensure!(done.bytes == BYTES);
        }
        snapshot
    })?;
    server.join()?;
    thread::sleep(Duration::from_millis(500));
    for capture in &mut captures {
        capture.stop()?;
    }

    // 1. The kernel's connections and established subflows, while they were open.
    let conns = conns.as_array().context("conns")?;
    let ours: BTreeSet<u32> =
        conns.iter().filter_map(|c| hex(&c["server_token"]).map(|t| t as u32)).collect();
    assert_eq!(ours, kernel_tokens, "connections (server tokens) differ from ss -M");
    assert_eq!(kernel_tokens.len(), CONNECTIONS);
    let ours: BTreeSet<((SocketAddr, SocketAddr), u32)> = subflows
        .as_array()
        .context("subflows")?
        .iter()
        .filter(|s| s["state"] == "established")
        .filter_map(|s| {
            Some((ends(addr(&s["client"])?, addr(&s["server"])?), hex(&s["connection_token"])? as u32))
        })
        .collect();
    let theirs: BTreeSet<((SocketAddr, SocketAddr), u32)> =
        kernel_subflows.iter().map(|k| (ends(k.local, k.peer), k.token)).collect();
    assert_eq!(ours, theirs, "established subflows differ from ss -tiM");
    // Backup joins: the kernel marks the subflow 'B' (remote backup) on the server.
    for subflow in subflows.as_array().context("subflows")?.iter().filter(|s| s["state"] == "established") {
        let end =
            ends(addr(&subflow["client"]).context("client")?, addr(&subflow["server"]).context("server")?);
        let kernel =
            kernel_subflows.iter().find(|k| ends(k.local, k.peer) == end).context("kernel subflow")?;
        assert_eq!(subflow["backup"].as_bool(), Some(kernel.flags.contains('B')), "backup of {end:?}");
        if subflow["kind"] == "join" {
            assert_eq!(subflow["hmac"], "verified", "join {end:?}");
        }
    }

    // 2. The kernel's path manager events, on both hosts.
    let all_subflows = subflows.as_array().context("subflows")?;
    let mut joins = 0;
    for event in server_monitor.events().iter().filter(|e| e.kind == "SF_ESTABLISHED") {
        let (local, remote) = event.ends().context("monitor ends")?;
        let token = event.token().context("monitor token")?;
        let ours = all_subflows
            .iter()
            .find(|s| addr(&s["server"]) == Some(local) && addr(&s["client"]) == Some(remote))
            .with_context(|| format!("no subflow for monitor event {event:?}"))?;
        assert_eq!(hex(&ours["connection_token"]), Some(u64::from(token)), "{event:?}");
        joins += 1;
    }
    ensure!(joins >= CONNECTIONS, "only {joins} SF_ESTABLISHED events");
    let client_tokens: BTreeSet<u64> = conns.iter().filter_map(|c| hex(&c["client_token"])).collect();
    let announced: Vec<_> = client_monitor.events().into_iter().filter(|e| e.kind == "ANNOUNCED").collect();
    let removed: Vec<_> = client_monitor.events().into_iter().filter(|e| e.kind == "REMOVED").collect();
    assert_eq!(announced.len(), CONNECTIONS, "ADD_ADDR per connection");
    assert_eq!(removed.len(), CONNECTIONS, "REMOVE_ADDR per connection");
    for event in announced.iter().chain(&removed) {
        assert!(client_tokens.contains(&u64::from(event.token().context("token")?)), "{event:?}");
    }
    let events = dataplane.run(&["events", "--json"])?;
    let count = |kind: &str| events.lines().filter(|l| l.contains(&format!("\"kind\":\"{kind}\""))).count();
    assert_eq!(count("remove_addr"), CONNECTIONS);
    assert!(count("add_addr") >= CONNECTIONS);
    assert!(events.lines().filter(|l| l.contains("\"add_addr\"")).all(|l| !l.contains("\"failed\"")));

    // 3. tshark's MPTCP analysis of the same traffic.
    let merged = scratch.path().join("merged.pcap");
    run(Command::new("mergecap").arg("-w").arg(&merged).args(captures.iter().map(Capture::path)))?;
    let analysis = tshark_connections(&merged)?;
    let final_conns: Value = dataplane.json(&["conns"])?;
    let final_subflows: Value = dataplane.json(&["subflows"])?;
    assert_eq!(analysis.len(), CONNECTIONS, "tshark connections");
    for tshark in analysis.values() {
        let key = |field: &str, conn: &Value| hex(&conn[field]);
        let conn = final_conns
            .as_array()
            .context("conns")?
            .iter()
            .find(|c| key("client_key", c).is_some_and(|k| tshark.keys.contains(&k)))
            .context("a tshark connection the dataplane does not know")?;
        let tokens: BTreeSet<u64> =
            [key("client_token", conn), key("server_token", conn)].into_iter().flatten().collect();
        let idsns: BTreeSet<u64> =
            [key("client_idsn", conn), key("server_idsn", conn)].into_iter().flatten().collect();
        let keys: BTreeSet<u64> =
            [key("client_key", conn), key("server_key", conn)].into_iter().flatten().collect();
        assert_eq!(tshark.keys, keys);
        assert_eq!(tshark.tokens, tokens);
        assert_eq!(tshark.idsns, idsns);
        let subflows: BTreeSet<(SocketAddr, SocketAddr)> = final_subflows
            .as_array()
            .context("subflows")?
            .iter()
            .filter(|s| s["connection_token"] == conn["server_token"])
            .filter_map(|s| Some(ends(addr(&s["client"])?, addr(&s["server"])?)))
            .collect();
        assert_eq!(tshark.subflows, subflows, "subflow grouping");
        // Not compared: tshark counts data re-sent on another subflow, the dataplane a mapping
        // that goes back in data sequence on its own subflow (a per-subflow rule; the program
        // fixtures check it), and a reinjection onto a subflow that never sent later data is one
        // and not the other. Shown for whoever reads a failure.
        println!("reinjections: tshark {}, dataplane {}", tshark.reinjected_packets, conn["reinjections"]);
        assert_eq!(conn["data_bytes"]["c2s"].as_u64(), Some(BYTES), "client data");
        assert_eq!(conn["data_bytes"]["s2c"].as_u64(), Some(8), "server data");
    }
    Ok(())
}

#[test]
fn tracking_matches_the_kernel_and_tshark_ipv4() -> Result<()> {
    tracking_matches_the_kernel_and_tshark(Family::V4)
}

#[test]
fn tracking_matches_the_kernel_and_tshark_ipv6() -> Result<()> {
    tracking_matches_the_kernel_and_tshark(Family::V6)
}
