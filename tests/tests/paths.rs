//! Path management against the real kernel: the agent's daemon in the client's namespace keeps
//! the endpoints (or, with the userspace path manager, each connection's subflows) as its policy
//! says, and acts on link and address changes at once. Compared with what the kernel reports:
//! `ip mptcp endpoint show`, `ss -M`, `ip mptcp monitor`, nstat's MPTcpExt counters, and the
//! dataplane's per-subflow byte counts.

use std::{
    net::IpAddr,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mptcp_tests::{
    agent,
    failover::{self, Agent, Break, ClientPm, Scenario, agent_config},
    kernel::{self, KernelEndpoint},
    lab::{DualHomedLab, Family, LabOptions},
    lock::LabLock,
    netns::Netns,
    traffic::{ClientOptions, Gate, Proto, Server, Transfer, transfer},
};
use serde_json::Value;

/// Faster than any retransmission timeout could find a dead path: Linux's minimum RTO.
const RTO_MIN: Duration = Duration::from_millis(200);

/// 6 MiB at 20 Mbit/s: about 2.5 s on one path, so the break at 1 s comes mid-transfer.
const FAILOVER: Scenario = Scenario {
    bytes: 6 << 20,
    port: 5600,
    break_after: Duration::from_secs(1),
    breaks: Break::LinkDown,
    wait_subflows: 1,
};

/// A `[paths]` table with `keys`, for the lab client's two interfaces in order.
fn policy(keys: &str) -> String {
    format!(
        "[paths]\n{keys}\n[[paths.interface]]\nname = \"{{if0}}\"\n[[paths.interface]]\nname = \"{{if1}}\"\n"
    )
}

/// Two 20 Mbit/s paths and no endpoints: the path manager under test decides.
fn lab(family: Family) -> Result<DualHomedLab> {
    let lab =
        DualHomedLab::new(LabOptions { family, client_subflow_endpoint: false, ..LabOptions::default() })?;
    lab.shape_client("20mbit")?;
    Ok(lab)
}

fn endpoint(endpoints: &[KernelEndpoint], addr: IpAddr) -> Option<&KernelEndpoint> {
    endpoints.iter().find(|e| e.addr == addr)
}

/// The dataplane's subflow whose client (this host) end has `addr`.
fn subflow_from(subflows: &Value, addr: IpAddr) -> Result<&Value> {
    subflows
        .as_array()
        .context("subflows")?
        .iter()
        .find(|s| {
            s["client"].as_str().and_then(|c| c.parse::<std::net::SocketAddr>().ok()).map(|c| c.ip())
                == Some(addr)
        })
        .with_context(|| format!("no subflow from {addr} in {subflows}"))
}

fn sent(subflow: &Value) -> u64 {
    subflow["c2s"]["bytes"].as_u64().unwrap_or(0)
}

/// Polls `check` every 20 ms for up to 3 s.
fn eventually(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !check()? {
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn contains_in_order(kinds: &[String], expected: &[&str]) -> bool {
    let mut rest = kinds.iter();
    expected.iter().all(|want| rest.any(|kind| kind == want))
}

fn backup_mode_keeps_the_backup_idle_then_fails_over_at_once(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let (primary, backup) = (lab.paths[0].client_addr, lab.paths[1].client_addr);
    let pm = ClientPm::Agent(policy("mode = \"backup\"")).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let endpoints = kernel::endpoints(&lab.client)?;
    let first = endpoint(&endpoints, primary).context("primary endpoint")?;
    let second = endpoint(&endpoints, backup).context("backup endpoint")?;
    assert!(first.has("subflow") && !first.has("backup"), "{endpoints:?}");
    assert!(second.has("subflow") && second.has("backup"), "{endpoints:?}");

    let (failover, before) = failover::run(&lab, FAILOVER, || agent.dataplane.json(&["subflows"]))?;
    // While the primary works, the backup subflow is open and carries no data.
    let idle = subflow_from(&before, backup)?;
    assert_eq!(idle["backup"], true, "{idle}");
    assert_eq!(sent(idle), 0, "data on the backup subflow while the primary was up: {idle}");
    assert!(sent(subflow_from(&before, primary)?) > 0);
    assert_eq!(failover.joins_before_break(), 1);

    // After: the data went over the backup path, promoted, without a retransmission timeout.
    let after = agent.dataplane.json(&["subflows"])?;
    assert!(sent(subflow_from(&after, backup)?) > 1 << 20, "{after}");
    assert!(failover.stall < RTO_MIN, "stalled {:?}", failover.stall);
    let endpoints = kernel::endpoints(&lab.client)?;
    assert!(endpoint(&endpoints, primary).is_none(), "{endpoints:?}");
    let promoted = endpoint(&endpoints, backup).context("promoted endpoint")?;
    assert!(promoted.has("subflow") && !promoted.has("backup"), "{endpoints:?}");
    let counters = kernel::counters(&lab.client)?;
    assert!(counters.get("MPTcpExtMPPrioTx") >= Some(&1), "no MP_PRIO sent: {counters:?}");
    assert!(counters.get("MPTcpExtRmAddrTx") >= Some(&1), "no REMOVE_ADDR sent");
    let kinds = agent.event_kinds()?;
    assert!(
        contains_in_order(
            &kinds,
            &["endpoint_added", "path_link_down", "path_primary", "endpoint_flags", "endpoint_removed"]
        ),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "pm_sub_established"), "{kinds:?}");

    // `paths` tells the same as the kernel, with the policy and the bytes per path.
    let report = agent.dataplane.json(&["paths"])?;
    let listed: Vec<(String, Value)> = report["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .map(|e| (e["addr"].as_str().unwrap_or("").to_owned(), e["flags"].clone()))
        .collect();
    assert_eq!(listed, [(backup.to_string(), serde_json::json!(["subflow"]))], "{report}");
    assert_eq!(report["daemon"]["policy"]["mode"], "backup");
    assert_eq!(report["daemon"]["primary"], lab.paths[1].client_if.as_str());
    let path_bytes = report["subflows"]
        .as_array()
        .context("subflows")?
        .iter()
        .filter(|s| s["iface"] == lab.paths[1].client_if.as_str())
        .map(|s| s["bytes_sent"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(path_bytes, sent(subflow_from(&agent.dataplane.json(&["subflows"])?, backup)?));
    // Subflows are named by the client's token there, as the kernel's events name the connection.
    let established =
        agent.events()?.into_iter().find(|e| e["kind"] == "pm_established").context("no pm_established")?;
    let subflows = report["subflows"].as_array().context("subflows")?;
    assert!(subflows.iter().all(|s| s["token"] == established["token"]), "{subflows:?} vs {established}");
    eprintln!("backup failover: stall {:?}", failover.stall);
    Ok(())
}

fn full_mode_failover_completes_over_the_remaining_path(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let pm = ClientPm::Agent(policy("")).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let endpoints = kernel::endpoints(&lab.client)?;
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints.iter().all(|e| e.has("subflow") && !e.has("backup")), "{endpoints:?}");
    let (primary, other) = (lab.paths[0].client_addr, lab.paths[1].client_addr);
    let (failover, before) = failover::run(&lab, FAILOVER, || agent.dataplane.json(&["subflows"]))?;
    assert!(sent(subflow_from(&before, primary)?) > 0 && sent(subflow_from(&before, other)?) > 0, "{before}");
    let after = agent.dataplane.json(&["subflows"])?;
    assert!(sent(subflow_from(&after, other)?) > sent(subflow_from(&before, other)?));
    let endpoints = kernel::endpoints(&lab.client)?;
    assert!(
        endpoint(&endpoints, primary).is_none() && endpoint(&endpoints, other).is_some(),
        "{endpoints:?}"
    );
    assert!(contains_in_order(&agent.event_kinds()?, &["path_link_down", "endpoint_removed"]));
    eprintln!("full-mode failover: stall {:?}", failover.stall);
    Ok(())
}

/// The largest send buffer (`tcp_wmem`'s third value) of every TCP socket to `port` in `ns`,
/// from the `tb` field of `ss -tm`'s socket memory.
fn send_buffers(ns: &Netns, port: u16) -> Result<Vec<u64>> {
    let out = ns.exec("ss", &["-tmH", "state", "established", &format!("( dport = :{port} )")])?;
    out.split("skmem:(")
        .skip(1)
        .map(|fields| {
            let tb = fields.split([',', ')']).find_map(|f| f.strip_prefix("tb"));
            tb.and_then(|tb| tb.parse().ok()).with_context(|| format!("no tb in {fields:?}"))
        })
        .collect()
}

/// `send-buffer-max` caps every subflow's send buffer through the namespace's `tcp_wmem`, which
/// the kernel grows a buffer towards (to about 1 MB per subflow here without it), and both
/// paths' transfer survives the break.
fn send_buffer_max_bounds_every_subflows_send_buffer(family: Family) -> Result<()> {
    const MAX: u64 = 131_072;
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let before = lab.client.exec("sysctl", &["-n", "net.ipv4.tcp_wmem"])?;
    let before: Vec<&str> = before.split_whitespace().collect();
    assert!(before[2].parse::<u64>()? > MAX, "the kernel's default is already at most {MAX}: {before:?}");
    let pm = ClientPm::Agent(policy(&format!("send-buffer-max = {MAX}"))).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let wmem = lab.client.exec("sysctl", &["-n", "net.ipv4.tcp_wmem"])?;
    let wmem: Vec<&str> = wmem.split_whitespace().collect();
    assert_eq!(wmem, [before[0], before[1], &MAX.to_string()], "before: {before:?}");
    let set = agent.events()?.into_iter().find(|e| e["kind"] == "sysctl_set").context("no sysctl_set")?;
    assert_eq!(set["name"], "net.ipv4.tcp_wmem");
    assert_eq!(set["previous"].as_str(), Some(before.join(" ").as_str()));
    let report = agent.dataplane.json(&["paths"])?;
    assert_eq!(
        (report["send_buffer_max"].as_u64(), report["daemon"]["policy"]["send_buffer_max"].as_u64()),
        (Some(MAX), Some(MAX)),
        "{report}"
    );

    let port = 5609;
    let (failover, buffers) =
        failover::run(&lab, Scenario { port, ..FAILOVER }, || send_buffers(&lab.client, port))?;
    // The initial subflow and the join, both sending for a second at 20 Mbit/s.
    assert_eq!(buffers.len(), 2, "{buffers:?}");
    assert!(buffers.iter().all(|tb| *tb <= MAX), "send buffers above {MAX}: {buffers:?}");
    eprintln!(
        "full-mode failover, send buffers at most {MAX}: stall {:?}, buffers {buffers:?}",
        failover.stall
    );
    Ok(())
}

fn single_path_opens_the_second_path_only_after_the_primary_fails(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let pm = ClientPm::Agent(policy("mode = \"single-path\"")).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let (primary, second) = (lab.paths[0].client_addr, lab.paths[1].client_addr);
    let scenario = Scenario { wait_subflows: 0, port: 5601, ..FAILOVER };
    let (failover, endpoints_before) = failover::run(&lab, scenario, || kernel::endpoints(&lab.client))?;
    assert_eq!(endpoints_before.iter().map(|e| e.addr).collect::<Vec<_>>(), [primary]);
    assert_eq!(failover.joins_before_break(), 0, "a second subflow before the primary failed");
    let joins: Vec<_> = failover.events.iter().filter(|e| e.kind == "SF_ESTABLISHED").collect();
    assert_eq!(joins.len(), 1, "{joins:?}");
    assert_eq!(joins[0].ends().map(|(local, _)| local.ip()), Some(second), "{joins:?}");
    assert!(failover.stall < RTO_MIN, "stalled {:?}", failover.stall);
    let endpoints = kernel::endpoints(&lab.client)?;
    assert_eq!(endpoints.iter().map(|e| e.addr).collect::<Vec<_>>(), [second]);
    let kinds = agent.event_kinds()?;
    assert!(
        contains_in_order(&kinds, &["path_link_down", "endpoint_added", "endpoint_removed"]),
        "{kinds:?}"
    );
    eprintln!("single-path failover: stall {:?}", failover.stall);
    Ok(())
}

/// A transfer held open until `gate` opens; returns the client thread's result.
fn held_transfer<'s>(
    scope: &'s thread::Scope<'s, '_>,
    lab: &'s DualHomedLab,
    server: std::net::SocketAddr,
    gate: &Arc<Gate>,
    wait_subflows: u8,
) -> thread::ScopedJoinHandle<'s, Result<Transfer>> {
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: 200_000, wait_subflows, hold: Some(gate.clone()) };
    scope.spawn(move || transfer(&lab.client, server, options))
}

fn addresses_that_come_and_go_add_and_remove_endpoints(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let pm = ClientPm::Agent(policy("")).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let path = &lab.paths[1];
    let old = path.client_addr;
    let new = lab.spare_client_addr(1);
    let prefix = lab.prefix_len();
    if family == Family::V4 {
        // The new address is a secondary one of the same subnet: it must outlive the old one.
        lab.client.sysctl(&format!("net.ipv4.conf.{}.promote_secondaries", path.client_if), "1")?;
    }
    lab.client.ip(&["addr", "add", &format!("{new}/{prefix}"), "dev", &path.client_if, "nodad"])?;
    lab.client.ip(&[lab.ip_family(), "rule", "add", "from", &new.to_string(), "table", "101"])?;
    eventually("the new address has an endpoint", || {
        Ok(endpoint(&kernel::endpoints(&lab.client)?, new).is_some_and(|e| e.has("subflow")))
    })?;

    let server = Server::start(&lab.server, lab.server_addr(0, 5602), Proto::Mptcp, 1)?;
    let gate = Arc::new(Gate::default());
    thread::scope(|scope| -> Result<()> {
        // A new connection uses the new address (and, make before break, still the old one).
        let client = held_transfer(scope, &lab, server.addr, &gate, 2);
        let checked = (|| -> Result<()> {
            gate.wait_for(1)?;
            let locals: Vec<IpAddr> = kernel::subflows(&lab.client)?.iter().map(|s| s.local.ip()).collect();
            ensure!(locals.contains(&new) && locals.contains(&old), "subflows from {locals:?}");
            // The old address goes: its endpoint and its subflows go with it.
            lab.client.ip(&["addr", "del", &format!("{old}/{prefix}"), "dev", &path.client_if])?;
            eventually("the old address's endpoint and subflows are gone", || {
                let endpoints = kernel::endpoints(&lab.client)?;
                let subflows = kernel::subflows(&lab.client)?;
                Ok(endpoint(&endpoints, old).is_none() && subflows.iter().all(|s| s.local.ip() != old))
            })
        })();
        gate.open();
        client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        checked
    })?;
    server.join()?;
    let kinds = agent.event_kinds()?;
    assert!(
        contains_in_order(
            &kinds,
            &["path_address_added", "endpoint_added", "path_address_removed", "endpoint_removed"]
        ),
        "{kinds:?}"
    );
    let removed = agent.events()?.into_iter().find(|e| e["kind"] == "endpoint_removed").context("removal")?;
    assert_eq!(removed["addr"], old.to_string());
    assert!(kernel::counters(&lab.client)?.get("MPTcpExtRmAddrTx") >= Some(&1));
    Ok(())
}

fn make_before_break_off_replaces_an_address_at_once(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let pm = ClientPm::Agent(policy("make-before-break = false")).start(&lab)?;
    let path = &lab.paths[1];
    let new = lab.spare_client_addr(1);
    let cidr = format!("{new}/{}", lab.prefix_len());
    lab.client.ip(&["addr", "add", &cidr, "dev", &path.client_if, "nodad"])?;
    eventually("the newest address alone has the interface's endpoint", || {
        let endpoints = kernel::endpoints(&lab.client)?;
        Ok(endpoint(&endpoints, new).is_some() && endpoint(&endpoints, path.client_addr).is_none())
    })?;
    let kinds = pm.agent().context("agent")?.event_kinds()?;
    assert!(
        contains_in_order(&kinds, &["path_address_added", "endpoint_added", "endpoint_removed"]),
        "{kinds:?}"
    );
    Ok(())
}

/// Whether `ip addr` lists `addr` on `iface` with `flag` (`tentative`, `deprecated`).
fn address_has(ns: &Netns, iface: &str, addr: IpAddr, flag: &str) -> Result<bool> {
    let shown = ns.ip(&["-6", "addr", "show", "dev", iface])?;
    let addr = addr.to_string();
    Ok(shown.lines().any(|l| {
        l.split_whitespace().nth(1).is_some_and(|a| a.starts_with(&format!("{addr}/"))) && l.contains(flag)
    }))
}

/// IPv6 only: duplicate address detection and preferred lifetimes have no IPv4 counterpart. An
/// address still in DAD gets no endpoint until it is valid; a deprecated one loses its endpoint,
/// so new connections never join from it.
#[test]
fn tentative_and_deprecated_ipv6_addresses_are_not_used() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(Family::V6)?;
    let pm = ClientPm::Agent(policy("")).start(&lab)?;
    let path = &lab.paths[1];
    // Three probes 500 ms apart: the address stays tentative for 1.5 s or more.
    lab.client.sysctl(&format!("net.ipv6.conf.{}.dad_transmits", path.client_if), "3")?;
    lab.client.sysctl(&format!("net.ipv6.neigh.{}.retrans_time_ms", path.client_if), "500")?;
    let new = lab.spare_client_addr(1);
    let cidr = format!("{new}/{}", lab.prefix_len());
    lab.client.ip(&["addr", "add", &cidr, "dev", &path.client_if])?;
    lab.client.ip(&["-6", "rule", "add", "from", &new.to_string(), "table", "101"])?;
    // Time for the agent to act on the address's RTM_NEWADDR, while DAD still runs.
    thread::sleep(Duration::from_millis(500));
    ensure!(address_has(&lab.client, &path.client_if, new, "tentative")?, "DAD ended too early to test");
    let endpoints = kernel::endpoints(&lab.client)?;
    ensure!(endpoint(&endpoints, new).is_none(), "an endpoint for a tentative address: {endpoints:?}");
    ensure!(address_has(&lab.client, &path.client_if, new, "tentative")?, "DAD ended during the check");
    eventually("DAD is over and the address has an endpoint", || {
        Ok(endpoint(&kernel::endpoints(&lab.client)?, new).is_some_and(|e| e.has("subflow")))
    })?;
    ensure!(!address_has(&lab.client, &path.client_if, new, "tentative")?);

    lab.client.ip(&["addr", "change", &cidr, "dev", &path.client_if, "preferred_lft", "0"])?;
    ensure!(address_has(&lab.client, &path.client_if, new, "deprecated")?);
    eventually("the deprecated address loses its endpoint", || {
        Ok(endpoint(&kernel::endpoints(&lab.client)?, new).is_none())
    })?;
    let endpoints = kernel::endpoints(&lab.client)?;
    ensure!(endpoint(&endpoints, path.client_addr).is_some(), "{endpoints:?}");
    // A new connection joins from the path's valid address only, as `ip mptcp monitor` shows.
    let monitor = kernel::Monitor::start(&lab.client)?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5606), Proto::Mptcp, 1)?;
    let done = transfer(
        &lab.client,
        server.addr,
        ClientOptions { proto: Proto::Mptcp, bytes: 300_000, wait_subflows: 1, hold: None },
    )?;
    server.join()?;
    ensure!(done.subflows == 1, "MPTCP_INFO reports {} additional subflows", done.subflows);
    let joins: Vec<IpAddr> = monitor
        .events()
        .iter()
        .filter(|e| e.kind == "SF_ESTABLISHED")
        .filter_map(|e| e.ends().map(|(local, _)| local.ip()))
        .collect();
    ensure!(joins == [path.client_addr], "joins from {joins:?}");
    let kinds = pm.agent().context("agent")?.event_kinds()?;
    ensure!(contains_in_order(&kinds, &["endpoint_added", "endpoint_removed"]), "{kinds:?}");
    Ok(())
}

/// The subflows `ss -M` shows for the connection with local token `token`.
fn subflows_of(ns: &Netns, token: u32) -> Result<Vec<kernel::KernelSubflow>> {
    Ok(kernel::subflows(ns)?.into_iter().filter(|s| s.token == token).collect())
}

fn userspace_pm_opens_each_connections_subflows_as_the_policy_says(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    // Two subflows per address pair, at most three beside the initial one: one more over the
    // first path, two over the second.
    let pm = ClientPm::Agent(policy("pm = \"userspace\"\nndiffports = 2\nmax-subflows = 3")).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    assert_eq!(lab.client.exec("sysctl", &["-n", "net.mptcp.pm_type"])?.trim(), "1");
    assert!(kernel::endpoints(&lab.client)?.is_empty(), "the userspace path manager uses no endpoints");
    let server = Server::start(&lab.server, lab.server_addr(0, 5603), Proto::Mptcp, 2)?;
    let gate = Arc::new(Gate::default());
    let tokens = thread::scope(|scope| -> Result<Vec<u32>> {
        let clients = [
            held_transfer(scope, &lab, server.addr, &gate, 3),
            held_transfer(scope, &lab, server.addr, &gate, 3),
        ];
        let checked = (|| -> Result<Vec<u32>> {
            gate.wait_for(2)?;
            let tokens = kernel::connection_tokens(&lab.client)?;
            ensure!(tokens.len() == 2, "connections {tokens:?}");
            for token in &tokens {
                let subflows = subflows_of(&lab.client, *token)?;
                let from = |addr: IpAddr| subflows.iter().filter(|s| s.local.ip() == addr).count();
                ensure!(
                    subflows.len() == 4
                        && from(lab.paths[0].client_addr) == 2
                        && from(lab.paths[1].client_addr) == 2,
                    "connection {token:08x}: {subflows:?}"
                );
            }
            Ok(tokens)
        })();
        gate.open();
        for client in clients {
            let done = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
            ensure!(done.subflows == 3, "MPTCP_INFO reports {} additional subflows", done.subflows);
        }
        checked
    })?;
    server.join()?;
    let created: Vec<Value> =
        agent.events()?.into_iter().filter(|e| e["kind"] == "subflow_created").collect();
    for token in tokens {
        let token = format!("0x{token:08x}");
        let count = created.iter().filter(|e| e["token"] == token.as_str()).count();
        assert_eq!(count, 3, "subflows created for {token}: {created:?}");
    }
    assert!(agent.events()?.iter().all(|e| e["kind"] != "path_error"));
    Ok(())
}

fn userspace_backup_mode_promotes_the_backup_subflow_on_link_down(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let pm = ClientPm::Agent(policy("pm = \"userspace\"\nmode = \"backup\"")).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let backup = lab.paths[1].client_addr;
    let scenario = Scenario { port: 5604, ..FAILOVER };
    let (failover, (before, ss)) = failover::run(&lab, scenario, || {
        Ok((agent.dataplane.json(&["subflows"])?, kernel::subflows(&lab.client)?))
    })?;
    let idle = subflow_from(&before, backup)?;
    assert_eq!(sent(idle), 0, "data on the backup subflow while the primary was up: {idle}");
    // ss marks a subflow that asked to be a backup with 'b'.
    let kernel_backup = ss.iter().find(|s| s.local.ip() == backup).context("backup subflow in ss")?;
    assert!(kernel_backup.flags.contains('b'), "{kernel_backup:?}");
    // No stall bound here: in about one run in eight the kernel's MPTCP-level retransmission
    // timer (~200 ms) still holds the data back after a subflow-destroy, although the agent acts
    // within a millisecond; `cargo xtask bench failover` reports the distribution.
    let after = agent.dataplane.json(&["subflows"])?;
    assert!(sent(subflow_from(&after, backup)?) > 1 << 20);
    let kinds = agent.event_kinds()?;
    assert!(
        contains_in_order(
            &kinds,
            &[
                "subflow_created",
                "path_link_down",
                "subflow_priority",
                "address_withdrawn",
                "subflow_destroyed"
            ]
        ),
        "{kinds:?}"
    );
    let counters = kernel::counters(&lab.client)?;
    assert!(counters.get("MPTcpExtMPPrioTx") >= Some(&1) && counters.get("MPTcpExtRmAddrTx") >= Some(&1));
    eprintln!("userspace backup failover: stall {:?}", failover.stall);
    Ok(())
}

/// The dataplane's subflow from `addr` (this host) to server port `port`.
fn subflow_to(subflows: &Value, addr: IpAddr, port: u16) -> Result<&Value> {
    let end = |s: &Value, key: &str| s[key].as_str().and_then(|e| e.parse::<std::net::SocketAddr>().ok());
    subflows
        .as_array()
        .context("subflows")?
        .iter()
        .find(|s| {
            end(s, "client").map(|c| c.ip()) == Some(addr) && end(s, "server").map(|e| e.port()) == Some(port)
        })
        .with_context(|| format!("no subflow from {addr} to port {port} in {subflows}"))
}

/// Two applications on one host, each under its own `[[paths.rule]]`: one found by its process
/// name (and port) gets backup mode, one by its cgroup (and port) full mode; the table's own
/// mode, single-path, would give neither a second subflow before the break. Both are this test
/// process: its name and cgroup are what the agent finds from the socket (sock_diag, /proc).
fn per_application_rules_give_each_connection_its_own_mode(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(family)?;
    let comm = std::fs::read_to_string("/proc/self/comm")?.trim_end().to_owned();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .context("no cgroup v2 in /proc/self/cgroup")?;
    let (backup_port, full_port) = (5611, 5612);
    let config = format!(
        "[paths]\npm = \"userspace\"\nmode = \"single-path\"\n\
         [[paths.interface]]\nname = \"{{if0}}\"\n[[paths.interface]]\nname = \"{{if1}}\"\n\
         [[paths.rule]]\ndport = {backup_port}\nprocess = \"{comm}\"\nmode = \"backup\"\n\
         interfaces = [\"{{if0}}\", \"{{if1}}\"]\n\
         [[paths.rule]]\ndport = \"{full_port}-5613\"\ncgroup = \"{cgroup}\"\nmode = \"full\"\n\
         interfaces = [\"{{if0}}\", \"{{if1}}\"]\n"
    );
    let pm = ClientPm::Agent(config).start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let (path0, path1) = (lab.paths[0].client_addr, lab.paths[1].client_addr);
    let backup_server =
        Server::start_recording(&lab.server, lab.server_addr(0, backup_port), Proto::Mptcp, 1)?;
    let full_server = Server::start_recording(&lab.server, lab.server_addr(0, full_port), Proto::Mptcp, 1)?;
    let options = ClientOptions { proto: Proto::Mptcp, bytes: 6 << 20, wait_subflows: 1, hold: None };
    let (before, ss, report, text, counters, broken_at) = thread::scope(|scope| -> Result<_> {
        let backup_client = scope.spawn(|| transfer(&lab.client, backup_server.addr, options.clone()));
        let full_client = scope.spawn(|| transfer(&lab.client, full_server.addr, options.clone()));
        thread::sleep(Duration::from_secs(1));
        let seen = (|| -> Result<_> {
            Ok((
                agent.dataplane.json(&["subflows"])?,
                kernel::subflows(&lab.client)?,
                (agent.dataplane.json(&["paths"])?, agent.dataplane.run(&["paths"])?),
                kernel::counters(&lab.client)?,
            ))
        })();
        let broken_at = Instant::now();
        let broken = Break::LinkDown.apply(&lab, 0);
        for client in [backup_client, full_client] {
            client
                .join()
                .map_err(|_| anyhow::anyhow!("client panicked"))?
                .context("transfer across the break")?;
        }
        broken?;
        let (before, ss, (report, text), counters) = seen?;
        Ok((before, ss, report, text, counters, broken_at))
    })?;
    let stall = |server: Server| -> Result<Duration> {
        let received = server.join_received()?.pop().context("no connection")?;
        received.longest_gap_after(broken_at).context("no data after the break")
    };
    let (backup_stall, full_stall) = (stall(backup_server)?, stall(full_server)?);

    // The kernel's view before the break: two subflows each; only the backup rule's second one
    // is a backup (`b`), and it carried nothing while the full rule's carried data. The kernel
    // sends on a backup subflow while the active one is stale (after losses on the shared
    // 20 Mbit/s path, MPTcpExtSubflowStale): then it carries less than the active one.
    let token_of = |port: u16| ss.iter().find(|s| s.peer.port() == port).map(|s| s.token);
    let (backup_token, full_token) = (
        token_of(backup_port).context("backup rule's connection in ss")?,
        token_of(full_port).context("full")?,
    );
    for (token, backup_flag) in [(backup_token, true), (full_token, false)] {
        let subflows: Vec<_> = ss.iter().filter(|s| s.token == token).collect();
        ensure!(subflows.len() == 2, "connection {token:08x}: {subflows:?}");
        let second = subflows.iter().find(|s| s.local.ip() == path1).context("subflow on the second path")?;
        ensure!(second.flags.contains('b') == backup_flag, "{second:?}");
        ensure!(subflows.iter().all(|s| s.local.ip() == path1 || !s.flags.contains('b')), "{subflows:?}");
    }
    let (idle, active) =
        (sent(subflow_to(&before, path1, backup_port)?), sent(subflow_to(&before, path0, backup_port)?));
    let stale = counters.get("MPTcpExtSubflowStale").copied().unwrap_or(0);
    ensure!(
        idle == 0 || (stale > 0 && idle < active),
        "backup subflow sent {idle}, active {active}, stale {stale}"
    );
    ensure!(
        sent(subflow_to(&before, path0, full_port)?) > 0 && sent(subflow_to(&before, path1, full_port)?) > 0
    );

    // The rules as the agent logged and reported them, with the owner it found.
    let events = agent.events()?;
    let hex = |token: u32| format!("0x{token:08x}");
    let rule_of =
        |token: u32| events.iter().find(|e| e["kind"] == "path_rule" && e["token"] == hex(token).as_str());
    let backup_rule = rule_of(backup_token).context("no path_rule for the backup connection")?;
    let full_rule = rule_of(full_token).context("no path_rule for the full connection")?;
    ensure!(backup_rule["rule"] == 1 && backup_rule["mode"] == "backup", "{backup_rule}");
    ensure!(backup_rule["owner"]["process"] == comm.as_str(), "{backup_rule}");
    ensure!(backup_rule["owner"]["pid"] == std::process::id(), "{backup_rule}");
    ensure!(
        full_rule["rule"] == 2 && full_rule["mode"] == "full" && full_rule["owner"]["cgroup_id"].is_u64(),
        "{full_rule}"
    );
    let connections = report["daemon"]["connections"].as_array().context("connections")?;
    for (token, rule) in [(backup_token, 1), (full_token, 2)] {
        let listed =
            connections.iter().find(|c| c["token"] == hex(token).as_str()).context("connection in paths")?;
        ensure!(listed["rule"] == rule, "{listed}");
    }
    ensure!(report["daemon"]["policy"]["rules"][1]["cgroup"] == cgroup.as_str(), "{report}");
    for line in
        [format!("{} client rule 1 ", hex(backup_token)), format!("{} client rule 2 ", hex(full_token))]
    {
        ensure!(text.contains(&line), "no {line:?} in\n{text}");
    }
    ensure!(text.contains(&format!("dport {full_port}-5613, cgroup {cgroup}")), "{text}");

    // Link down: the backup rule's connection promoted its backup subflow (MP_PRIO), which then
    // carried the rest; the full rule's had nothing to promote.
    let promoted = |token: u32| {
        events.iter().any(|e| {
            e["kind"] == "subflow_priority" && e["token"] == hex(token).as_str() && e["backup"] == false
        })
    };
    ensure!(promoted(backup_token) && !promoted(full_token), "{events:?}");
    let after = agent.dataplane.json(&["subflows"])?;
    ensure!(sent(subflow_to(&after, path1, backup_port)?) > 1 << 20, "{after}");
    ensure!(events.iter().all(|e| e["kind"] != "path_error"), "{events:?}");
    eprintln!(
        "per-rule failover: backup rule stall {backup_stall:?}, full rule stall {full_stall:?}; \
         backup subflow sent {idle} bytes before the break (SubflowStale {stale})"
    );
    Ok(())
}

fn a_server_announces_its_other_addresses(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab =
        DualHomedLab::new(LabOptions { family, client_subflow_endpoint: false, ..LabOptions::default() })?;
    let server_ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let config = format!(
        "[paths]\nserver = true\n[[paths.interface]]\nname = \"{}\"\n[[paths.interface]]\nname = \"{}\"\n",
        server_ifaces[0], server_ifaces[1]
    );
    let agent = Agent::start(&lab.server, &server_ifaces, &config)?;
    let endpoints = kernel::endpoints(&lab.server)?;
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints.iter().all(|e| e.has("signal") && !e.has("subflow")), "{endpoints:?}");
    let monitor = kernel::Monitor::start(&lab.client)?;
    // Joins to the announced address need a listener there too: the server listens on all.
    let any = lab.any_addr(5605);
    let server = Server::start(&lab.server, any, Proto::Mptcp, 1)?;
    let done = transfer(
        &lab.client,
        lab.server_addr(0, 5605),
        ClientOptions { proto: Proto::Mptcp, bytes: 300_000, wait_subflows: 1, hold: None },
    )?;
    server.join()?;
    assert_eq!(done.subflows, 1);
    let events = monitor.events();
    let announced: Vec<_> = events.iter().filter(|e| e.kind == "ANNOUNCED").collect();
    assert_eq!(announced.len(), 1, "{events:?}");
    assert_eq!(
        announced[0].fields.get(if family == Family::V6 { "daddr6" } else { "daddr4" }).map(String::as_str),
        Some(lab.paths[1].server_addr.to_string().as_str())
    );
    let joined = events.iter().find(|e| e.kind == "SF_ESTABLISHED").context("no join")?;
    assert_eq!(joined.ends().map(|(_, remote)| remote.ip()), Some(lab.paths[1].server_addr));
    let kinds = agent.event_kinds()?;
    assert!(kinds.iter().filter(|k| *k == "endpoint_added").count() == 2, "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "add_addr"), "the dataplane saw no ADD_ADDR: {kinds:?}");
    Ok(())
}

/// Monitor SF_ESTABLISHED events as (local, remote) addresses.
fn joins(events: &[kernel::MonitorEvent]) -> Vec<(IpAddr, IpAddr)> {
    events
        .iter()
        .filter(|e| e.kind == "SF_ESTABLISHED")
        .filter_map(|e| e.ends())
        .map(|(local, remote)| (local.ip(), remote.ip()))
        .collect()
}

/// A transfer from the client to the server's first address whose connection is held open while
/// `look` reads `ss -M` on the client; returns what it read and the transfer.
fn look_while_open<T>(
    lab: &DualHomedLab,
    port: u16,
    wait_subflows: u8,
    look: impl FnOnce() -> Result<T>,
) -> Result<(T, Transfer)> {
    let server = Server::start(&lab.server, lab.any_addr(port), Proto::Mptcp, 1)?;
    let gate = Arc::new(Gate::default());
    let (seen, done) = thread::scope(|scope| -> Result<(T, Transfer)> {
        let client = held_transfer(scope, lab, lab.server_addr(0, port), &gate, wait_subflows);
        let seen = gate.wait_for(1).and_then(|()| look());
        gate.open();
        let done = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        Ok((seen?, done))
    })?;
    server.join()?;
    Ok((seen, done))
}

/// RFC 8684 3.1: with `deny-join-initial` the server's MP_CAPABLE SYN-ACK sets the C flag, and
/// the kernel client, whose `subflow` endpoint would otherwise join the server's initial
/// address, joins only the address the server announces.
fn deny_join_initial_keeps_joins_off_the_servers_initial_address(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    // The client's second address is a `subflow` endpoint: it joins the server's initial
    // address unless told not to.
    let lab = DualHomedLab::new(LabOptions { family, ..LabOptions::default() })?;
    let server_ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let config = format!(
        "[paths]\nserver = true\ndeny-join-initial = true\n[[paths.interface]]\nname = \"{}\"\n\
         [[paths.interface]]\nname = \"{}\"\n",
        server_ifaces[0], server_ifaces[1]
    );
    let switch = "net.mptcp.allow_join_initial_addr_port";
    assert_eq!(lab.server.exec("sysctl", &["-n", switch])?.trim(), "1", "the kernel's default");
    let agent = Agent::start(&lab.server, &server_ifaces, &config)?;
    assert_eq!(lab.server.exec("sysctl", &["-n", switch])?.trim(), "0");
    let set = agent.events()?.into_iter().find(|e| e["kind"] == "sysctl_set").context("no sysctl_set")?;
    assert_eq!(
        (set["name"].as_str(), set["value"].as_str(), set["previous"].as_str()),
        (Some(switch), Some("0"), Some("1"))
    );
    let report = agent.dataplane.json(&["paths"])?;
    assert_eq!(report["allow_join_initial"], false, "{report}");
    assert_eq!(report["daemon"]["policy"]["deny_join_initial"], true);

    let (initial, announced) = (lab.paths[0].server_addr, lab.paths[1].server_addr);
    let dir = mptcp_tests::TempDir::new("pcap")?;
    let mut capture =
        mptcp_tests::capture::Capture::start(&lab.server, server_ifaces[0], &dir.path().join("c.pcap"))?;
    let monitor = kernel::Monitor::start(&lab.client)?;
    let (ss, done) = look_while_open(&lab, 5606, 1, || kernel::subflows(&lab.client))?;
    capture.stop()?;
    assert_eq!(done.subflows, 1, "one join: to the announced address");
    let peers: Vec<IpAddr> = ss.iter().map(|s| s.peer.ip()).collect();
    assert_eq!(peers.iter().filter(|p| **p == initial).count(), 1, "only the initial subflow: {ss:?}");
    assert!(peers.contains(&announced), "no subflow to the announced address: {ss:?}");
    let joined = joins(&monitor.events());
    assert!(!joined.is_empty() && joined.iter().all(|(_, remote)| *remote == announced), "{joined:?}");

    // tshark: the SYN-ACK's MP_CAPABLE (subtype 0) has C set, "do not attempt to establish new
    // subflows to this address and port".
    let rows = mptcp_tests::capture::tshark_fields(
        capture.path(),
        &[
            "tcp.flags.syn",
            "tcp.flags.ack",
            "tcp.options.mptcp.subtype",
            "tcp.options.mptcp.nomoresubflows.flag",
        ],
    )?;
    let syn_ack = rows
        .iter()
        .find(|r| r[0] == "1" && r[1] == "1" && r[2].split(',').any(|t| t == "0"))
        .with_context(|| format!("no MP_CAPABLE SYN-ACK in {rows:?}"))?;
    assert_eq!(syn_ack[3], "1", "C flag of the SYN-ACK: {syn_ack:?}");

    // The same client joins the initial address once the switch is back at its default: the
    // C flag is what kept it away.
    lab.server.sysctl(switch, "1")?;
    let monitor = kernel::Monitor::start(&lab.client)?;
    let to_initial = (lab.paths[1].client_addr, initial);
    look_while_open(&lab, 5607, 1, || {
        eventually("the endpoint joins the initial address", || {
            Ok(joins(&monitor.events()).contains(&to_initial))
        })
    })?;
    Ok(())
}

/// A laminar endpoint (Linux 6.18) answers the server's announcement with a subflow from its
/// own address, against what routing would pick, and opens none to the initial address.
fn a_laminar_endpoint_answers_the_servers_announcement(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions {
        family,
        client_subflow_endpoint: false,
        server_signal_endpoint: true,
        ..LabOptions::default()
    })?;
    let (first, second) = (&lab.paths[0], &lab.paths[1]);
    // Routing sends what goes to the announced address over the first path, from its address:
    // without the laminar endpoint that is where the kernel's answer would come from.
    let host = if family == Family::V6 { "128" } else { "32" };
    lab.client.ip(&[
        lab.ip_family(),
        "route",
        "add",
        &format!("{}/{host}", second.server_addr),
        "via",
        &first.server_addr.to_string(),
        "dev",
        &first.client_if,
        "src",
        &first.client_addr.to_string(),
    ])?;
    let route = lab.client.ip(&["route", "get", &second.server_addr.to_string()])?;
    ensure!(route.contains(&format!("src {}", first.client_addr)), "route: {route}");

    let pm =
        ClientPm::Agent(policy("").replacen("name = \"{if1}\"", "name = \"{if1}\"\nrole = \"laminar\"", 1))
            .start(&lab)?;
    let agent = pm.agent().context("agent")?;
    let report = agent.dataplane.json(&["paths"])?;
    let flags_of = |addr: IpAddr| -> Vec<String> {
        report["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["addr"] == addr.to_string())
            .flat_map(|e| e["flags"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect()
    };
    // The kernel's endpoints as iproute2 prints them, and as the agent reads them back.
    let endpoints = kernel::endpoints(&lab.client)?;
    let kernel_flags = |addr| endpoint(&endpoints, addr).map(|e| e.flags.clone());
    assert_eq!(kernel_flags(second.client_addr), Some(vec!["laminar".to_owned()]), "{endpoints:?}");
    assert_eq!(kernel_flags(first.client_addr), Some(vec!["subflow".to_owned()]), "{endpoints:?}");
    assert_eq!(flags_of(second.client_addr), ["laminar"], "{report}");
    assert_eq!(flags_of(first.client_addr), ["subflow"], "{report}");
    let added: Vec<Value> = agent.events()?.into_iter().filter(|e| e["kind"] == "endpoint_added").collect();
    assert!(
        added
            .iter()
            .any(|e| e["addr"] == second.client_addr.to_string()
                && e["flags"] == serde_json::json!(["laminar"])),
        "{added:?}"
    );
    let role = report["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == second.client_if.as_str());
    assert_eq!(role.map(|i| &i["role"]), Some(&serde_json::json!("laminar")));

    let monitor = kernel::Monitor::start(&lab.client)?;
    let (ss, done) = look_while_open(&lab, 5608, 1, || kernel::subflows(&lab.client))?;
    assert_eq!(done.subflows, 1);
    let pairs: Vec<(IpAddr, IpAddr)> = ss.iter().map(|s| (s.local.ip(), s.peer.ip())).collect();
    assert_eq!(
        pairs.iter().copied().collect::<std::collections::BTreeSet<_>>(),
        [(first.client_addr, first.server_addr), (second.client_addr, second.server_addr)].into(),
        "ss -M: {ss:?}"
    );
    let events = monitor.events();
    assert!(events.iter().any(|e| e.kind == "ANNOUNCED"), "{events:?}");
    assert_eq!(joins(&events), [(second.client_addr, second.server_addr)], "{events:?}");
    Ok(())
}

#[test]
fn bad_input_is_a_clear_error() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = lab(Family::V4)?;
    let dir = mptcp_tests::TempDir::new("cfg")?;
    let write = |name: &str, text: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, agent_config(&lab, text))?;
        Ok(path.to_str().context("path")?.to_owned())
    };
    let good = write("good.toml", &policy("mode = \"backup\""))?;
    let instance = mptcp_tests::netns::unique_name("ins");
    let iface = lab.paths[0].client_if.clone();
    let fails = |args: &[&str]| -> Result<String> {
        let out = agent::output(&lab.client, args)?;
        if out.status.success() {
            bail!("mptcp-agent {args:?} unexpectedly succeeded");
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let run = |config: &str| fails(&["run", "--instance", &instance, "--iface", &iface, "--config", config]);

    // A configuration error names the key and the line; nothing gets attached.
    let error = run(&write("mode.toml", "[paths]\nmode = \"sometimes\"\n")?)?;
    assert!(error.contains("sometimes") && error.contains("line 2"), "{error}");
    let error =
        run(&write("ndiffports.toml", "[paths]\nndiffports = 4\n[[paths.interface]]\nname = \"{if0}\"\n")?)?;
    assert!(error.contains("paths.ndiffports (line 2)") && error.contains("userspace"), "{error}");
    let laminar = "[paths]\npm = \"userspace\"\n[[paths.interface]]\nname = \"{if0}\"\nrole = \"laminar\"\n";
    let error = run(&write("laminar.toml", laminar)?)?;
    assert!(error.contains("paths.interface.role (line 4)") && error.contains("pm = \"kernel\""), "{error}");
    assert!(!agent::instance_dir(&instance).exists());

    // MPTCP disabled in the namespace.
    lab.client.sysctl("net.mptcp.enabled", "0")?;
    let error = run(&good)?;
    assert!(error.contains("MPTCP is disabled in this network namespace"), "{error}");
    assert!(!agent::instance_dir(&instance).exists(), "attached although the path manager cannot start");
    let error = fails(&["paths", "--instance", &instance])?;
    assert!(error.contains("net.mptcp.enabled = 0"), "{error}");
    lab.client.sysctl("net.mptcp.enabled", "1")?;

    // No privilege: managing paths needs CAP_NET_ADMIN, named before anything is tried.
    let agent_bin = agent::binary();
    let out = lab
        .client
        .nsenter_cmd("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(&agent_bin)
        .args(["run", "--instance", &instance, "--iface", &iface, "--config", &good])
        .output()?;
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(error.contains("missing privileges: this needs CAP_NET_ADMIN"), "{error}");
    assert!(!agent::instance_dir(&instance).exists());
    Ok(())
}

/// Each path test once per address family: `NAME::v4` and `NAME::v6`.
macro_rules! both_families {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn v4() -> Result<()> {
                super::$name(Family::V4)
            }
            #[test]
            fn v6() -> Result<()> {
                super::$name(Family::V6)
            }
        }
    )*};
}

both_families!(
    backup_mode_keeps_the_backup_idle_then_fails_over_at_once,
    full_mode_failover_completes_over_the_remaining_path,
    single_path_opens_the_second_path_only_after_the_primary_fails,
    addresses_that_come_and_go_add_and_remove_endpoints,
    make_before_break_off_replaces_an_address_at_once,
    userspace_pm_opens_each_connections_subflows_as_the_policy_says,
    userspace_backup_mode_promotes_the_backup_subflow_on_link_down,
    per_application_rules_give_each_connection_its_own_mode,
    send_buffer_max_bounds_every_subflows_send_buffer,
    a_server_announces_its_other_addresses,
    deny_join_initial_keeps_joins_off_the_servers_initial_address,
    a_laminar_endpoint_answers_the_servers_announcement
);
