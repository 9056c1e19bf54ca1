//! The XDP/TC option counters against tshark on the same real kernel MPTCP traffic.

use std::{collections::BTreeMap, net::IpAddr, path::Path, thread, time::Duration};

use anyhow::{Result, ensure};
use mptcp_tests::{
    TempDir,
    agent::Dataplane,
    capture::{Capture, tshark_fields},
    lab::{DualHomedLab, Family, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Proto, Server, transfer},
};

type Counts = BTreeMap<String, u64>;

/// The counter name the dataplane uses for an MPTCP subtype number.
fn subtype_counter(subtype: u8) -> &'static str {
    match subtype {
        0 => "mp_capable",
        1 => "mp_join",
        2 => "dss",
        3 => "add_addr",
        4 => "remove_addr",
        5 => "mp_prio",
        6 => "mp_fail",
        7 => "mp_fastclose",
        8 => "mp_tcprst",
        15 => "mp_experimental",
        _ => "mp_unknown",
    }
}

/// What tshark sees on one interface, split by direction (egress: sent by one of `local`).
fn tshark_counts(pcap: &Path, local: &[IpAddr]) -> Result<(Counts, Counts)> {
    let (mut ingress, mut egress) = (Counts::new(), Counts::new());
    for row in tshark_fields(pcap, &["ip.src", "ipv6.src", "tcp.options.mptcp.subtype"])? {
        let src: Option<IpAddr> = row.iter().take(2).find_map(|field| field.parse().ok());
        let counts = if src.is_some_and(|src| local.contains(&src)) { &mut egress } else { &mut ingress };
        *counts.entry("tcp_packets".into()).or_default() += 1;
        let subtypes = row.get(2).map(String::as_str).unwrap_or("");
        if subtypes.is_empty() {
            *counts.entry("tcp_without_mptcp".into()).or_default() += 1;
        }
        for subtype in subtypes.split(',').filter(|s| !s.is_empty()) {
            *counts.entry(subtype_counter(subtype.parse()?).into()).or_default() += 1;
        }
    }
    Ok((ingress, egress))
}

/// Counters a capture can be compared with; the others count table and admission work.
const OPTION_COUNTERS: &[&str] = &[
    "tcp_packets",
    "tcp_without_mptcp",
    "mp_capable",
    "mp_join",
    "dss",
    "add_addr",
    "remove_addr",
    "mp_prio",
    "mp_fail",
    "mp_fastclose",
    "mp_tcprst",
    "mp_experimental",
    "mp_unknown",
    "malformed",
];

/// The agent's option counters of one direction, as name -> value, zeros dropped like tshark's.
fn agent_counts(stats: &serde_json::Value, direction: &str) -> Counts {
    stats[direction]
        .as_object()
        .map(|counters| {
            counters
                .iter()
                .filter(|(name, _)| OPTION_COUNTERS.contains(&name.as_str()))
                .filter_map(|(name, value)| Some((name.clone(), value.as_u64()?)))
                .filter(|(_, value)| *value > 0)
                .collect()
        })
        .unwrap_or_default()
}

fn sum(counts: &[&Counts], name: &str) -> u64 {
    counts.iter().map(|c| c.get(name).copied().unwrap_or(0)).sum()
}

fn mptcp_counters_match_tshark(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions { family, ..LabOptions::default() })?;
    let scratch = TempDir::new("pcap")?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|path| path.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let mut captures: Vec<Capture> = lab
        .paths
        .iter()
        .map(|path| {
            Capture::start(
                &lab.server,
                &path.server_if,
                &scratch.path().join(format!("{}.pcap", path.server_if)),
            )
        })
        .collect::<Result<_>>()?;

    let connections = 3;
    let server = Server::start(&lab.server, lab.server_addr(0, 5201), Proto::Mptcp, connections)?;
    for _ in 0..connections {
        let done = transfer(
            &lab.client,
            server.addr,
            ClientOptions { proto: Proto::Mptcp, bytes: 256 * 1024, wait_subflows: 1 },
        )?;
        ensure!(done.subflows >= 1, "the kernel opened no second subflow");
    }
    server.join()?;
    // Let the connections finish closing, then check nothing moves any more.
    thread::sleep(Duration::from_millis(500));
    let before: Vec<_> = ifaces.iter().map(|iface| dataplane.stats(iface)).collect::<Result<_>>()?;
    for capture in &mut captures {
        capture.stop()?;
    }
    let server_addrs: Vec<IpAddr> = lab.paths.iter().map(|p| p.server_addr).collect();
    let mut all = Vec::new();
    for ((iface, stats), capture) in ifaces.iter().zip(&before).zip(&captures) {
        ensure!(
            dataplane.stats(iface)? == *stats,
            "counters on {iface} still moving after the traffic ended"
        );
        let (ingress, egress) = tshark_counts(capture.path(), &server_addrs)?;
        let (agent_ingress, agent_egress) = (agent_counts(stats, "ingress"), agent_counts(stats, "egress"));
        println!("{iface}: ingress {agent_ingress:?}\n{iface}: egress {agent_egress:?}");
        assert_eq!(agent_ingress, ingress, "ingress counters on {iface} differ from tshark");
        assert_eq!(agent_egress, egress, "egress counters on {iface} differ from tshark");
        all.extend([agent_ingress, agent_egress]);
    }
    let all: Vec<&Counts> = all.iter().collect();
    // The traffic really exercised the handshakes on both paths.
    assert!(sum(&all, "mp_capable") >= 3 * connections as u64);
    assert!(sum(&all, "mp_join") >= 3 * connections as u64);
    assert!(sum(&all, "dss") > 100);
    assert_eq!(sum(&all, "malformed"), 0);
    Ok(())
}

#[test]
fn mptcp_option_counters_match_tshark_ipv4() -> Result<()> {
    mptcp_counters_match_tshark(Family::V4)
}

#[test]
fn mptcp_option_counters_match_tshark_ipv6() -> Result<()> {
    mptcp_counters_match_tshark(Family::V6)
}

#[test]
fn plain_tcp_moves_only_the_non_mptcp_counter() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let scratch = TempDir::new("pcap")?;
    let path = &lab.paths[0];
    let dataplane = Dataplane::attach(&lab.server, &[&path.server_if])?;
    let mut capture = Capture::start(&lab.server, &path.server_if, &scratch.path().join("tcp.pcap"))?;
    let before = dataplane.stats(&path.server_if)?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5202), Proto::Tcp, 1)?;
    transfer(
        &lab.client,
        server.addr,
        ClientOptions { proto: Proto::Tcp, bytes: 256 * 1024, wait_subflows: 0 },
    )?;
    server.join()?;
    thread::sleep(Duration::from_millis(300));
    let after = dataplane.stats(&path.server_if)?;
    capture.stop()?;
    let captured = tshark_fields(capture.path(), &["frame.number"])?.len() as u64;
    let mut moved = 0;
    for direction in ["ingress", "egress"] {
        let (b, a) = (agent_counts(&before, direction), agent_counts(&after, direction));
        let delta = |name: &str| a.get(name).copied().unwrap_or(0) - b.get(name).copied().unwrap_or(0);
        ensure!(delta("tcp_packets") > 0, "no {direction} TCP packets counted");
        assert_eq!(delta("tcp_packets"), delta("tcp_without_mptcp"), "{direction}");
        for name in a.keys().filter(|n| !["tcp_packets", "tcp_without_mptcp"].contains(&n.as_str())) {
            assert_eq!(delta(name), 0, "{direction} {name} moved on plain TCP");
        }
        moved += delta("tcp_packets");
    }
    assert_eq!(moved, captured, "counted packets differ from the capture");
    Ok(())
}
