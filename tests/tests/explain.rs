//! `mptcp-agent explain`: each cause made in a namespace lab with real kernel MPTCP, and the
//! verdict's cause and fix checked (`--json`) on the host whose connection it explains.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    admission::second_path,
    agent::{self, Daemon, Dataplane},
    balancer::{Balancer, BalancerLab, BalancerLabOptions, connect, join_all, nstat_sum, start_servers},
    craft,
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    netns::{Netns, unique_name},
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};
use serde_json::Value;

/// Time the client's path manager gets to open subflows before a connection is explained.
const SETTLE: Duration = Duration::from_millis(400);

/// The verdicts of `explain --json` in `ns`, the dataplane and balancer instances given (names
/// no other test uses when absent, so another run's pins are never read).
fn explain(ns: &Netns, instance: Option<&str>, selector: Option<&str>) -> Result<Value> {
    explain_with(ns, instance, None, selector)
}

fn explain_with(
    ns: &Netns,
    instance: Option<&str>,
    lb: Option<&str>,
    selector: Option<&str>,
) -> Result<Value> {
    let none = unique_name("none");
    let mut args = vec![
        "explain",
        "--json",
        "--instance",
        instance.unwrap_or(&none),
        "--lb-instance",
        lb.unwrap_or(&none),
    ];
    args.extend(selector);
    let out = agent::run(ns, &args)?;
    serde_json::from_str(&out).with_context(|| format!("explain --json: {out}"))
}

/// The one verdict on the connection whose remote or local end is on `port`.
fn verdict_on(explanation: &Value, port: u16) -> Result<Value> {
    let on_port = |c: &Value| {
        ["local", "remote"]
            .iter()
            .any(|end| c[end].as_str().is_some_and(|a| a.ends_with(&format!(":{port}"))))
    };
    let found: Vec<&Value> = explanation["explained"]
        .as_array()
        .context("explained")?
        .iter()
        .filter(|e| on_port(&e["connection"]))
        .collect();
    ensure!(found.len() == 1, "{} verdicts on port {port}: {explanation}", found.len());
    Ok(found[0]["verdict"].clone())
}

fn check(verdict: &Value, cause: &str, fix_mentions: &str) -> Result<()> {
    ensure!(verdict["cause"] == cause, "expected {cause}: {verdict}");
    let fix = verdict["fix"].as_str().context("fix")?;
    ensure!(fix.contains(fix_mentions), "the fix does not mention {fix_mentions:?}: {verdict}");
    Ok(())
}

/// Holds one MPTCP connection from the client to the server's first address on `port` open
/// (after `wait_subflows` additional subflows, then `SETTLE`) while `look` runs.
fn while_open<T>(
    lab: &DualHomedLab,
    port: u16,
    wait_subflows: u8,
    look: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let server = Server::start(&lab.server, lab.server_addr(0, port), Proto::Mptcp, 1)?;
    let gate = Arc::new(Gate::default());
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: 20_000, wait_subflows, hold: Some(gate.clone()) };
    let seen = thread::scope(|scope| -> Result<T> {
        let client = scope.spawn(|| transfer(&lab.client, server.addr, options));
        let seen = gate.wait_for(1).and_then(|()| {
            thread::sleep(SETTLE);
            look()
        });
        gate.open();
        client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        seen
    })?;
    server.join()?;
    Ok(seen)
}

/// Both ends' verdicts on one held connection.
fn both_ends(lab: &DualHomedLab, port: u16, wait_subflows: u8) -> Result<(Value, Value)> {
    while_open(lab, port, wait_subflows, || {
        Ok((
            verdict_on(&explain(&lab.client, None, None)?, port)?,
            verdict_on(&explain(&lab.server, None, None)?, port)?,
        ))
    })
}

/// The causes the kernel's own configuration makes, one connection after the other in one lab:
/// each step changes one knob, and the MIB counters the later steps read only grow.
#[test]
fn kernel_configuration_causes() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let second = lab.paths[1].clone();

    // The server sets the C flag: the client, with a subflow endpoint, sends no join at all.
    lab.server.sysctl("net.mptcp.allow_join_initial_addr_port", "0")?;
    let (client, server) = both_ends(&lab, 5600, 0)?;
    check(&client, "server-c-flag", "allow_join_initial_addr_port=1")?;
    check(&server, "server-c-flag", "allow_join_initial_addr_port=1")?;
    // With the dataplane on the client, the flag itself is the evidence: it saw the SYN-ACK.
    let dataplane = Dataplane::attach(&lab.client, &lab.client_ifaces())?;
    let client = while_open(&lab, 5607, 0, || {
        verdict_on(&explain(&lab.client, Some(dataplane.instance()), None)?, 5607)
    })?;
    check(&client, "server-c-flag", "allow_join_initial_addr_port=1")?;
    ensure!(client["evidence"][0].as_str().is_some_and(|e| e.contains("C flag")), "{client}");
    drop(dataplane);
    lab.server.sysctl("net.mptcp.allow_join_initial_addr_port", "1")?;

    // Healthy: the client joins from its second address.
    let (client, server) = both_ends(&lab, 5601, 1)?;
    check(&client, "all-paths-in-use", "none needed")?;
    check(&server, "all-paths-in-use", "none needed")?;
    // The text form, and the sources it could not read, said.
    let text = while_open(&lab, 5608, 1, || {
        agent::run(
            &lab.client,
            &["explain", "--instance", &unique_name("none"), "--lb-instance", &unique_name("none")],
        )
    })?;
    ensure!(text.contains("cause: all-paths-in-use") && text.contains("fix: none needed"), "{text}");
    ensure!(text.contains("unavailable: dataplane") && text.contains("not attached"), "{text}");

    // The client's subflow limit is 0.
    lab.client.ip(&["mptcp", "limits", "set", "subflows", "0", "add_addr_accepted", "8"])?;
    let client = while_open(&lab, 5602, 0, || verdict_on(&explain(&lab.client, None, None)?, 5602))?;
    check(&client, "subflow-limit-zero", "ip mptcp limits set subflows")?;
    lab.client.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])?;

    // No endpoint on a dual-homed client; the server sees a client that opened nothing.
    lab.client.ip(&["mptcp", "endpoint", "flush"])?;
    let (client, server) = both_ends(&lab, 5603, 0)?;
    check(&client, "no-endpoint", &format!("ip mptcp endpoint add {} dev IF subflow", second.client_addr))?;
    check(&server, "peer-opened-nothing", "subflow")?;

    // An endpoint, but `signal` only.
    let addr = second.client_addr.to_string();
    lab.client.ip(&["mptcp", "endpoint", "add", &addr, "dev", &second.client_if, "signal"])?;
    let client = while_open(&lab, 5604, 0, || verdict_on(&explain(&lab.client, None, None)?, 5604))?;
    check(&client, "endpoint-not-subflow", "subflow")?;

    // Single-homed now, and the server announces nothing.
    lab.client.ip(&["mptcp", "endpoint", "flush"])?;
    lab.client.ip(&["addr", "flush", "dev", &second.client_if])?;
    let client = while_open(&lab, 5605, 0, || verdict_on(&explain(&lab.client, None, None)?, 5605))?;
    check(&client, "peer-announced-nothing", "signal")?;

    // The server announces its second address; the client accepts no ADD_ADDR.
    let server_addr = second.server_addr.to_string();
    lab.server.ip(&["mptcp", "endpoint", "add", &server_addr, "dev", &second.server_if, "signal"])?;
    lab.client.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "0"])?;
    let client = while_open(&lab, 5606, 0, || verdict_on(&explain(&lab.client, None, None)?, 5606))?;
    check(&client, "add-addr-accepted-limit-zero", "add_addr_accepted")?;
    Ok(())
}

/// A join with the connection's token and a made-up HMAC, judged by a daemon under
/// `--admission verified`: the server's verdict on that connection (selected by its token).
#[test]
fn a_forged_join_is_an_hmac_failure() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &["--admission", "verified"])?;
    let verdict = while_open(&lab, 5610, 1, || {
        let conns = dataplane.json(&["conns"])?;
        let token = conns[0]["server_token"].as_str().context("a tracked connection")?;
        craft::forged_join(&second_path(&lab)?, 5610, u32::from_str_radix(&token[2..], 16)?, 41000, 3)?;
        thread::sleep(Duration::from_millis(300));
        let explanation = explain(&lab.server, Some(dataplane.instance()), Some(token))?;
        ensure!(explanation["explained"].as_array().map(Vec::len) == Some(1), "{explanation}");
        Ok(explanation["explained"][0]["verdict"].clone())
    })?;
    check(&verdict, "hmac-failure", "--admission verified")
}

/// Join SYNs flooding from the client's second address keep the per-source rate limit's bucket
/// empty: the real join from that address is dropped, and the server says so.
#[test]
fn a_rate_limited_join_is_an_admission_drop() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &["--join-rate", "1", "--join-burst", "1"])?;
    let dropped = || -> Result<u64> {
        Ok(dataplane.stats(ifaces[1])?["ingress"]["joins_dropped_rate_limit"].as_u64().unwrap_or(0))
    };
    let path = second_path(&lab)?;
    thread::scope(|scope| -> Result<()> {
        let flood = scope.spawn(|| craft::join_syns(&path, 5620, 3000, None, 20000));
        let judged = (|| -> Result<()> {
            for _ in 0..100 {
                if dropped()? > 0 {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            ensure!(dropped()? > 0, "the flood did not start");
            let verdict = while_open(&lab, 5621, 0, || {
                verdict_on(&explain(&lab.server, Some(dataplane.instance()), None)?, 5621)
            })?;
            check(&verdict, "admission-drop", "--join-rate")
        })();
        flood.join().map_err(|_| anyhow::anyhow!("flooder panicked"))??;
        judged
    })
}

/// Behind a hash-only balancer most joins land on a backend that does not own their token: the
/// balancer says it hashed them, and a backend that refused joins explains its connections
/// without one by it.
#[test]
fn a_hash_only_balancer_refuses_joins() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    let balancer = Balancer::start(&lab, "hash-only")?;
    let backends: Vec<&Netns> = lab.backends.iter().map(|b| &b.ns).collect();
    let servers = start_servers(&backends, &[lab.vip(0)], Proto::Mptcp)?;
    let total = 12;
    let gate = Arc::new(Gate::default());
    let options =
        ClientOptions { proto: Proto::Mptcp, bytes: 20_000, wait_subflows: 0, hold: Some(gate.clone()) };
    let judged = thread::scope(|scope| -> Result<()> {
        let handles = connect(scope, &lab.client, lab.vip(0), total, total, &options)?;
        let judged = (|| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while nstat_sum(&backends, "MPTcpExtMPJoinSynRx")?
                + nstat_sum(&backends, "MPTcpExtMPJoinNoTokenFound")?
                < total as u64
            {
                ensure!(Instant::now() < deadline, "not every join SYN reached a backend");
                thread::sleep(Duration::from_millis(50));
            }
            let on_balancer = explain_with(&lab.balancer, None, Some(balancer.instance()), None)?;
            let verdict = on_balancer["explained"]
                .as_array()
                .and_then(|all| all.iter().find(|e| e["connection"].is_null()))
                .context(format!("no balancer verdict: {on_balancer}"))?;
            check(&verdict["verdict"], "hash-only-balancer", "steering = \"token\"")?;
            let mut refused_here = 0;
            for backend in &backends {
                if nstat_sum(&[backend], "MPTcpExtMPJoinNoTokenFound")? == 0 {
                    continue;
                }
                let explanation = explain(backend, None, None)?;
                for explained in explanation["explained"].as_array().context("explained")? {
                    if explained["connection"]["subflows"] == 0 {
                        check(&explained["verdict"], "hash-only-balancer", "steering")?;
                        refused_here += 1;
                    }
                }
            }
            ensure!(refused_here > 0, "no backend that refused a join had a connection without one");
            println!("hash-only: {refused_here} of {total} connections explained by a refused join");
            Ok(())
        })();
        gate.open();
        join_all(handles)?;
        judged
    });
    for server in servers {
        server.stop()?;
    }
    judged
}
