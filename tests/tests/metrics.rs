//! The Prometheus endpoints against a real Prometheus: after real kernel MPTCP traffic has
//! stopped, what PromQL returns equals `stats --json` / `lb stats --json`; promtool accepts the
//! raw output; the dashboard names only what the endpoints expose; addresses and paths.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use mptcp_tests::{
    TempDir,
    agent::{self, Daemon, Dataplane},
    balancer::{
        Balancer, BalancerLab, BalancerLabOptions, backend_counter, connect, counter, join_all, start_servers,
    },
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    netns::Netns,
    prometheus::{self, Prometheus, dashboard, dashboard_metric_names, exposed_names, promtool_check},
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};
use serde_json::Value;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path events in the daemon's event log, by kind (the dataplane's events have kinds of
/// their own, none of which a path event has).
fn path_events(instance: &str) -> Result<Value> {
    const DATAPLANE: &[&str] = &[
        "mp_capable",
        "join_syn",
        "join_synack",
        "join_ack",
        "add_addr",
        "remove_addr",
        "mp_prio",
        "mp_fail",
        "mp_fastclose",
        "mp_tcprst",
        "fallback",
        "unknown",
    ];
    let log = std::fs::read_to_string(agent::run_dir(instance).join("events.jsonl"))?;
    let mut kinds = serde_json::Map::new();
    for line in log.lines() {
        let record: Value =
            serde_json::from_str(line).with_context(|| format!("an event log line: {line}"))?;
        let kind = record["kind"].as_str().with_context(|| format!("no kind: {line}"))?;
        if !DATAPLANE.contains(&kind) {
            let count = kinds.get(kind).and_then(Value::as_u64).unwrap_or(0);
            kinds.insert(kind.to_owned(), Value::from(count + 1));
        }
    }
    Ok(Value::Object(kinds))
}

/// Reads `read` until two reads 300 ms apart agree (10 s at most): the traffic's last packets
/// (FINs, TIME-WAIT ACKs) are counted.
fn still(what: &str, read: &impl Fn() -> Result<Value>) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read()?;
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = read()?;
        if now == last {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("{what} still moving after 10 s: {now}");
        }
        last = now;
    }
}

/// Once `read` is still and Prometheus scraped after that, runs `compare` on what it read; again
/// (5 times at most) when `read` moved meanwhile, since then the comparison proves nothing.
fn compare_when_still(
    prometheus: &Prometheus<'_>,
    what: &str,
    read: impl Fn() -> Result<Value>,
    compare: impl Fn(&Value) -> Result<()>,
) -> Result<()> {
    for _ in 0..5 {
        let before = still(what, &read)?;
        prometheus.scraped_after(SystemTime::now())?;
        let compared = compare(&before);
        if read()? == before {
            return compared;
        }
    }
    bail!("{what} kept moving while Prometheus was queried")
}

/// The raw endpoint: OpenMetrics by default, the text format promtool lints on request, 404
/// elsewhere; and the dashboard's names with `prefix` among what it exposes.
fn check_raw_endpoint(ns: &Netns, addr: SocketAddr, dashboard_names: impl Fn(&str) -> bool) -> Result<()> {
    let openmetrics = prometheus::get(ns, addr, "/metrics", None)?;
    ensure!(openmetrics.status == 200, "GET /metrics: {openmetrics:?}");
    assert_eq!(openmetrics.headers.get("content-type").map(String::as_str), Some(OPENMETRICS));
    ensure!(openmetrics.body.ends_with("# EOF\n"), "no # EOF at the end:\n{}", openmetrics.body);
    let text = prometheus::get(ns, addr, "/metrics", Some("text/plain"))?;
    ensure!(text.status == 200, "GET /metrics (text/plain): {text:?}");
    assert_eq!(
        text.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_check(&text.body)?;
    let exposed = exposed_names(&openmetrics.body);
    let wanted: BTreeSet<String> =
        dashboard_metric_names(&dashboard()?).into_iter().filter(|name| dashboard_names(name)).collect();
    ensure!(!wanted.is_empty(), "the dashboard names none of these metrics");
    let missing: Vec<&String> = wanted.difference(&exposed).collect();
    ensure!(missing.is_empty(), "the dashboard uses metrics the endpoint lacks: {missing:?}");
    for path in ["/", "/metrics/x", "/stats"] {
        let other = prometheus::get(ns, addr, path, None)?;
        ensure!(other.status == 404, "GET {path}: {other:?}");
    }
    Ok(())
}

#[test]
fn tracker_metrics_in_prometheus_equal_stats_json() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|path| path.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;

    // An address not on this host is a start-up error that names it.
    let unbindable = "192.0.2.77:9464";
    let error = match Daemon::start(&dataplane, &["--metrics", unbindable]) {
        Ok(_) => bail!("the daemon started with --metrics {unbindable}"),
        Err(error) => format!("{error:#}"),
    };
    ensure!(error.contains(&format!("binding the metrics endpoint to {unbindable}")), "{error}");

    // Only a port: loopback, not the lab's addresses. With path management, for its metrics:
    // the server announces its second address.
    let port = prometheus::free_port(&lab.server)?;
    let scratch = TempDir::new("mtr")?;
    let config = scratch.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "metrics = \"{port}\"\nmetrics-connections = 2\n[paths]\nserver = true\n\
             [[paths.interface]]\nname = \"{}\"\n[[paths.interface]]\nname = \"{}\"\n",
            ifaces[0], ifaces[1]
        ),
    )?;
    let _daemon = Daemon::start(&dataplane, &["--config", config.to_str().context("config path")?])?;
    let endpoint = SocketAddr::from(([127, 0, 0, 1], port));
    ensure!(prometheus::listening(&lab.server, endpoint), "nothing listens on {endpoint}");
    let outside = lab.server_addr(0, port);
    ensure!(!prometheus::listening(&lab.server, outside), "the endpoint answers on {outside}");
    let prometheus = Prometheus::start(&lab.server, endpoint)?;

    let connections = 3;
    let server = Server::start(&lab.server, lab.server_addr(0, 5301), Proto::Mptcp, connections)?;
    for _ in 0..connections {
        let options = ClientOptions { proto: Proto::Mptcp, bytes: 128 * 1024, wait_subflows: 1, hold: None };
        let done = transfer(&lab.client, server.addr, options)?;
        ensure!(done.subflows >= 1, "the kernel opened no second subflow");
    }
    server.join()?;
    let read_all = || -> Result<Value> {
        let stats: Vec<Value> = ifaces.iter().map(|iface| dataplane.stats(iface)).collect::<Result<_>>()?;
        Ok(serde_json::json!({
            "stats": stats,
            "conns": dataplane.json(&["conns"])?,
            "subflows": dataplane.json(&["subflows"])?,
            "path_events": path_events(dataplane.instance())?,
        }))
    };
    let compare = |before: &Value| -> Result<()> {
        let job = prometheus::JOB;
        let mut compared = 0;
        for (iface, stats) in ifaces.iter().zip(before["stats"].as_array().context("stats")?) {
            for direction in ["ingress", "egress"] {
                let series = |metric: &str, extra: &str| {
                    format!("{metric}{{job=\"{job}\",iface=\"{iface}\",direction=\"{direction}\"{extra}}}")
                };
                let checks = [
                    ("tcp_packets", series("mptcp_tcp_packets_total", "")),
                    ("tcp_without_mptcp", series("mptcp_tcp_packets_without_mptcp_total", "")),
                    ("mp_capable", series("mptcp_options_total", ",subtype=\"mp_capable\"")),
                    ("mp_join", series("mptcp_options_total", ",subtype=\"mp_join\"")),
                    ("dss", series("mptcp_options_total", ",subtype=\"dss\"")),
                    ("add_addr", series("mptcp_options_total", ",subtype=\"add_addr\"")),
                    ("subflows_created", series("mptcp_subflows_created_total", "")),
                    ("joins_admitted", series("mptcp_admission_joins_admitted_total", "")),
                    ("events_dropped", series("mptcp_ring_events_dropped_total", "")),
                ];
                for (counter, promql) in checks {
                    let expected =
                        stats[direction][counter].as_u64().with_context(|| format!("{counter}: {stats}"))?;
                    let got = prometheus.value(&promql)?;
                    ensure!(
                        got == expected as f64,
                        "{promql} = {got}, stats --json says {counter} = {expected}"
                    );
                    compared += 1;
                }
            }
        }
        let total_packets: u64 = before["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| ["ingress", "egress"].map(|d| s[d]["tcp_packets"].as_u64().unwrap_or(0)))
            .sum();
        ensure!(total_packets > 100, "too little traffic counted: {total_packets}");
        let summed = prometheus.value(&format!("sum(mptcp_tcp_packets_total{{job=\"{job}\"}})"))?;
        ensure!(
            summed == total_packets as f64,
            "sum(mptcp_tcp_packets_total) = {summed}, stats: {total_packets}"
        );
        let conns = before["conns"].as_array().context("conns")?.len();
        ensure!(conns >= connections, "{conns} connections tracked");
        ensure!(prometheus.value("mptcp_connections")? == conns as f64, "mptcp_connections != {conns}");
        let subflows = before["subflows"].as_array().context("subflows")?.len();
        let entries = prometheus.value("sum(mptcp_table_entries{table=~\"SUBFLOWS|HALF_OPEN_SUBFLOWS\"})")?;
        ensure!(
            entries == subflows as f64,
            "subflow table entries {entries}, subflows --json lists {subflows}"
        );
        let tracked = prometheus.value("sum(mptcp_subflows)")?;
        ensure!(
            tracked == subflows as f64,
            "sum(mptcp_subflows) = {tracked}, subflows --json lists {subflows}"
        );
        let joins_verified = before["subflows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["kind"] == "join" && s["hmac"] == "verified")
            .count();
        ensure!(joins_verified >= 1, "no join verified: {}", before["subflows"]);
        let verified = prometheus.value("mptcp_hmac_verdicts{option=\"mp_join\",verdict=\"verified\"}")?;
        ensure!(
            verified == joins_verified as f64,
            "{verified} joins verified, subflows --json: {joins_verified}"
        );
        // The agent's checks of every tracked connection, summed.
        for (result, field) in [("matched", "keys_matched"), ("mismatched", "keys_mismatched")] {
            let sum: u64 = before["conns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["agent_checks"][field].as_u64().unwrap_or(0))
                .sum();
            let got = prometheus.value(&format!("mptcp_key_checks{{result=\"{result}\"}}"))?;
            ensure!(
                got == sum as f64,
                "mptcp_key_checks{{result={result}}} = {got}, conns --json sums {sum}"
            );
        }
        ensure!(prometheus.value("mptcp_key_checks{result=\"matched\"}")? > 0.0, "no key check matched");
        // Path management: the policy's interfaces, and every path event the log holds.
        let interfaces = prometheus.query("mptcp_path_interface_info")?;
        ensure!(interfaces.len() == 2, "path interfaces: {interfaces:?}");
        let logged = before["path_events"].as_object().context("path events")?;
        ensure!(logged.contains_key("paths_started"), "path events logged: {logged:?}");
        for (labels, value) in prometheus.query("mptcp_path_events_total")? {
            let kind = &labels["kind"];
            let count = logged.get(kind.as_str()).and_then(Value::as_u64).unwrap_or(0);
            ensure!(
                value == count as f64,
                "mptcp_path_events_total{{kind={kind}}} = {value}, logged {count}"
            );
        }
        let counted = prometheus.value("sum(mptcp_path_events_total)")?;
        let total: u64 = logged.values().filter_map(Value::as_u64).sum();
        ensure!(counted == total as f64, "{counted} path events counted, {total} logged");
        // Per-connection series: at most --metrics-connections of them.
        let per_connection = prometheus.query("mptcp_connection_subflows")?;
        ensure!(per_connection.len() == conns.min(2), "{} per-connection series", per_connection.len());
        println!(
            "compared {compared} per-interface counters, {total_packets} packets, {conns} connections, \
             {total} path events {logged:?}"
        );
        Ok(())
    };
    compare_when_still(&prometheus, "the counters and tables", read_all, compare)?;

    check_raw_endpoint(&lab.server, endpoint, |name| !name.starts_with("mptcp_lb_"))?;
    Ok(())
}

#[test]
fn balancer_metrics_in_prometheus_equal_lb_stats_json() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    let balancer = Balancer::start(&lab, "token")?;
    let port = prometheus::free_port(&lab.balancer)?;
    let endpoint = SocketAddr::from(([127, 0, 0, 1], port));
    let args = ["lb", "metrics", "--listen", &port.to_string(), "--instance", balancer.instance()];
    let exporter = Daemon::spawn(&lab.balancer, &args, |_| prometheus::listening(&lab.balancer, endpoint))?;
    let prometheus = Prometheus::start(&lab.balancer, endpoint)?;

    let backends: Vec<&Netns> = lab.backends.iter().map(|b| &b.ns).collect();
    let servers = start_servers(&backends, &[lab.vip(0), lab.vip(1)], Proto::Mptcp)?;
    let gate = Arc::new(Gate::default());
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: 20_000, wait_subflows: 1, hold: Some(gate.clone()) };
    let per_family = 12;
    let transfers = thread::scope(|scope| -> Result<_> {
        let mut handles = connect(scope, &lab.client, lab.vip(0), per_family, 6, &options)?;
        handles.extend(connect(scope, &lab.client, lab.vip(1), per_family, 6, &options)?);
        gate.open();
        join_all(handles)
    })?;
    for server in servers {
        server.stop()?;
    }
    ensure!(transfers.len() == 2 * per_family, "{} transfers", transfers.len());
    // A packet now and then (neighbour discovery, a late ACK) moves the counters: compared again
    // when they moved while Prometheus was queried.
    let compare = |stats: &Value| -> Result<()> {
        for name in [
            "packets",
            "forwarded",
            "flows_hashed",
            "tokens_learned",
            "joins_steered_by_token",
            "half_open_promoted",
        ] {
            let got = prometheus.value(&format!("mptcp_lb_{name}_total"))?;
            ensure!(got == counter(stats, name) as f64, "mptcp_lb_{name}_total = {got}, lb stats: {stats}");
        }
        ensure!(counter(stats, "joins_steered_by_token") >= 2 * per_family as u64, "lb stats: {stats}");
        for backend in &lab.backends {
            for name in ["connections", "subflows", "packets", "plain_flows"] {
                let promql = format!("mptcp_lb_backend_{name}_total{{backend=\"{}\"}}", backend.name);
                let expected = backend_counter(stats, &backend.name, name);
                let got = prometheus.value(&promql)?;
                ensure!(got == expected as f64, "{promql} = {got}, lb stats says {expected}");
            }
            let share = stats["backends"]
                .as_array()
                .and_then(|all| all.iter().find(|b| b["name"] == backend.name.as_str()))
                .and_then(|b| b["maglev_share"].as_f64())
                .context("maglev_share")?;
            let promql = format!("mptcp_lb_backend_maglev_share_ratio{{backend=\"{}\"}}", backend.name);
            let got = prometheus.value(&promql)?;
            ensure!((got - share / 100.0).abs() < 1e-9, "{promql} = {got}, lb stats says {share}%");
        }
        // The Maglev digests as info series, one per VIP.
        let digests: BTreeSet<(String, String)> = prometheus
            .query("mptcp_lb_maglev_info")?
            .into_iter()
            .map(|(labels, _)| (labels["vip"].clone(), labels["digest"].clone()))
            .collect();
        let expected: BTreeSet<(String, String)> = stats["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|vip| {
                (
                    vip["address"].as_str().unwrap_or("").to_owned(),
                    vip["maglev_digest"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        ensure!(digests == expected && digests.len() == 2, "digests {digests:?}, lb stats: {expected:?}");
        Ok(())
    };
    compare_when_still(&prometheus, "the balancer's counters", || balancer.stats(), compare)?;

    check_raw_endpoint(&lab.balancer, endpoint, |name| name.starts_with("mptcp_lb_"))?;
    // SIGTERM stops it, cleanly.
    let status = exporter.stop()?.context("lb metrics had to be killed")?;
    ensure!(status.success(), "lb metrics exited with {status}");
    Ok(())
}

#[test]
fn bad_metrics_addresses_are_errors_that_name_them() -> Result<()> {
    for args in [
        &["run", "--iface", "lo", "--metrics", "nowhere:9464"][..],
        &["run", "--iface", "lo", "--metrics", "2001:db8::1:9464"],
        &["lb", "metrics", "--listen", "70000"],
    ] {
        let out = Command::new(agent::binary()).args(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let bad = args.last().context("args")?;
        ensure!(!out.status.success(), "{args:?} succeeded");
        ensure!(stderr.contains(&format!("bad metrics address \"{bad}\"")), "{args:?}: {stderr}");
    }
    Ok(())
}
