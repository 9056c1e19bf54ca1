//! The systemd units, installed by `mptcp-agent install` and run by a real systemd (PID 1 of a
//! private PID and mount namespace; see `mptcp_tests::systemd`): `systemd-analyze verify` and
//! `security` on what was installed; the daemon's unit attaches, tracks real MPTCP traffic in a
//! lab namespace, is restarted after a crash and resumes its pins; the balancer's units start
//! it, its sync daemon with it, and stop both, pins and all.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    agent::{self, Dataplane, capability, capability_mask, instance_dir, run_dir},
    balancer::{BalancerLab, BalancerLabOptions, start_servers, stop_servers},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    netns::{Netns, unique_name},
    prometheus,
    sync::random_key,
    systemd::SystemdHost,
    traffic::{ClientOptions, Proto, Server, transfer},
};

/// `systemd-analyze security` scores units from 0 (locked down) to 10; the daemon needs BPF and
/// network administration, which cost about 2 of them on their own.
const MAX_EXPOSURE: f64 = 4.0;
/// Where the daemon's and the balancer's metrics units listen (loopback of the lab namespace).
const METRICS_PORT: u16 = 9464;
const LB_METRICS_PORT: u16 = 9465;

/// One scrape of a metrics unit; its body must name `family`.
fn scrape(ns: &Netns, port: u16, family: &str) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let response = prometheus::get(ns, addr, "/metrics", None)?;
    ensure!(response.body.contains(family), "no {family} at {addr}: {}", response.body);
    Ok(())
}

/// Stops a balancer instance a unit started, if the unit did not (a failed test).
struct BalancerInstance<'a> {
    ns: &'a Netns,
    instance: String,
}

impl Drop for BalancerInstance<'_> {
    fn drop(&mut self) {
        if instance_dir(&self.instance).exists()
            && let Err(error) = agent::run(self.ns, &["lb", "stop", "--instance", &self.instance])
        {
            eprintln!("cleanup: {error:#}");
            let _ = std::fs::remove_dir_all(instance_dir(&self.instance));
        }
        let _ = std::fs::remove_dir_all(Path::new("/run/mptcp-agent").join(format!("lb-{}", self.instance)));
    }
}

/// Boots systemd and installs the agent in it the way an operator does.
fn installed_host() -> Result<SystemdHost> {
    let host = SystemdHost::boot(&agent::binary())?;
    let out = host.run(SystemdHost::AGENT, &["install"])?;
    ensure!(out.contains("/usr/local/bin/mptcp-agent"), "{out}");
    Ok(host)
}

/// `systemd-analyze verify` of the installed unit, and its exposure score.
fn verify(host: &SystemdHost, unit: &str) -> Result<f64> {
    host.run("systemd-analyze", &["verify", unit]).with_context(|| format!("verifying {unit}"))?;
    let out = host
        .command("systemd-analyze")
        .args(["security", "--offline=yes", unit])
        .output()
        .context("systemd-analyze security")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|line| {
            line.split_once("Overall exposure level for ")?.1.split_once(": ")?.1.split_whitespace().next()
        })
        .and_then(|score| score.parse().ok())
        .with_context(|| format!("no exposure level for {unit}: {text}"))?;
    Ok(score)
}

/// The lab's own additions: the unit joins the lab's network namespace, and stays out of the
/// boot ordering this private systemd never runs (no sysinit.target here).
fn lab_drop_in(host: &SystemdHost, unit: &str, ns: &Netns) -> Result<()> {
    host.write(
        &format!("/etc/systemd/system/{unit}.d/50-lab.conf"),
        format!("[Unit]\nDefaultDependencies=no\n[Service]\nNetworkNamespacePath={}\n", ns.path()).as_bytes(),
        "0644",
    )
}

fn mptcp_transfer(lab: &DualHomedLab, port: u16) -> Result<()> {
    let server = Server::start(&lab.server, lab.server_addr(0, port), Proto::Mptcp, 1)?;
    let options = ClientOptions { proto: Proto::Mptcp, bytes: 256 * 1024, wait_subflows: 1, hold: None };
    transfer(&lab.client, lab.server_addr(0, port), options)?;
    server.join()?;
    Ok(())
}

fn ready_pid(instance: &str) -> Option<String> {
    std::fs::read_to_string(run_dir(instance).join("ready")).ok().map(|pid| pid.trim().to_owned())
}

#[test]
fn the_daemon_unit_runs_sandboxed_restarts_and_resumes() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let instance = unique_name("svc");
    let unit = format!("mptcp-agent-daemon@{instance}.service");
    let dataplane = Dataplane::adopt(&lab.server, &instance, &ifaces);
    let host = installed_host()?;
    let exposure = verify(&host, &unit)?;
    println!("{unit}: exposure {exposure}");
    ensure!(exposure <= MAX_EXPOSURE, "{unit}: exposure {exposure} > {MAX_EXPOSURE}");

    let interfaces: Vec<String> = ifaces.iter().map(|i| format!("{i:?}")).collect();
    host.write(
        &format!("/etc/mptcp-agent/{instance}.toml"),
        format!(
            "interfaces = [{}]\nadmission = \"known-token\"\nmetrics = \"{METRICS_PORT}\"\n",
            interfaces.join(", ")
        )
        .as_bytes(),
        "0644",
    )?;
    lab_drop_in(&host, &unit, &lab.server)?;
    host.systemctl(&["daemon-reload"])?;
    host.systemctl(&["start", &unit])?;
    let main_pid = host.property(&unit, "MainPID")?;
    host.wait_for("the daemon's ready file", Duration::from_secs(20), || {
        Ok(ready_pid(&instance).as_deref() == Some(main_pid.as_str()))
    })
    .with_context(|| host.journal(&unit))?;

    // The shared sandbox drop-in applies, and the daemon holds no capability outside the unit's.
    ensure!(host.property(&unit, "ProtectSystem")? == "strict", "{unit}: ProtectSystem");
    ensure!(host.property(&unit, "NoNewPrivileges")? == "yes", "{unit}: NoNewPrivileges");
    let status = host.run("cat", &[&format!("/proc/{main_pid}/status")])?;
    let allowed = [capability::BPF, capability::PERFMON, capability::NET_ADMIN, capability::SETPCAP]
        .iter()
        .fold(0u64, |m, c| m | 1 << c);
    for field in ["CapBnd:", "CapEff:", "CapPrm:"] {
        let mask = capability_mask(&status, field)?;
        ensure!(mask & !allowed == 0, "{field} {mask:#x} outside the unit's {allowed:#x}");
    }

    // It tracks real traffic; killed, systemd restarts it and it resumes what is pinned.
    let conns = |at_least: usize| -> Result<bool> {
        Ok(dataplane.json(&["conns"])?.as_array().map_or(0, Vec::len) >= at_least)
    };
    mptcp_transfer(&lab, 5801)?;
    host.wait_for("the first connection tracked", Duration::from_secs(5), || conns(1))?;
    scrape(&lab.server, METRICS_PORT, "mptcp_connections ")?;
    host.systemctl(&["kill", "--signal=KILL", &unit])?;
    host.wait_for("a restart", Duration::from_secs(15), || {
        let pid = host.property(&unit, "MainPID")?;
        Ok(pid != "0" && pid != main_pid && ready_pid(&instance).as_deref() == Some(pid.as_str()))
    })
    .with_context(|| host.journal(&unit))?;
    ensure!(host.property(&unit, "NRestarts")? == "1", "NRestarts: {}", host.property(&unit, "NRestarts")?);
    mptcp_transfer(&lab, 5802)?;
    host.wait_for("both connections tracked after the restart", Duration::from_secs(5), || conns(2))?;

    host.systemctl(&["stop", &unit])?;
    ensure!(host.property(&unit, "ActiveState")? == "inactive", "{unit} still active");
    ensure!(ready_pid(&instance).is_none(), "the ready file outlived the unit");
    // The daemon leaves its programs attached when it stops, by design: they stay pinned.
    ensure!(instance_dir(&instance).exists(), "the pins went with the daemon");
    Ok(())
}

#[test]
fn the_balancer_units_start_it_with_its_sync_and_stop_both() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = BalancerLab::new(BalancerLabOptions::default())?;
    let instance = unique_name("svl");
    let [lb_unit, sync_unit, metrics_unit] =
        ["lb", "lb-sync", "lb-metrics"].map(|unit| format!("mptcp-agent-{unit}@{instance}.service"));
    let _pins = BalancerInstance { ns: &lab.balancer, instance: instance.clone() };
    let host = installed_host()?;
    for unit in [&lb_unit, &sync_unit, &metrics_unit] {
        let exposure = verify(&host, unit)?;
        println!("{unit}: exposure {exposure}");
        ensure!(exposure <= MAX_EXPOSURE, "{unit}: exposure {exposure} > {MAX_EXPOSURE}");
    }
    host.write("/etc/mptcp-agent/lb-sync.key", &random_key()?, "0600")?;
    let config = format!(
        "{}\n[sync]\nlisten = \"127.0.0.1:7946\"\npeers = [\"127.0.0.1:7947\"]\nkey-file = \"/etc/mptcp-agent/lb-sync.key\"\n",
        lab.config("token")
    );
    host.write(&format!("/etc/mptcp-agent/lb-{instance}.toml"), config.as_bytes(), "0644")?;
    // One drop-in for both, by the dash prefix every unit of ours shares.
    lab_drop_in(&host, "mptcp-agent-.service", &lab.balancer)?;
    host.write(
        &format!("/etc/mptcp-agent/lb-{instance}.env"),
        format!("LISTEN={LB_METRICS_PORT}\n").as_bytes(),
        "0644",
    )?;
    host.systemctl(&["daemon-reload"])?;

    // Starting the sync starts the balancer it is bound to.
    host.systemctl(&["start", &sync_unit])
        .with_context(|| format!("{}\n{}", host.journal(&lb_unit), host.journal(&sync_unit)))?;
    ensure!(host.property(&lb_unit, "ActiveState")? == "active", "{}", host.journal(&lb_unit));
    let sync_dir = Path::new("/run/mptcp-agent").join(format!("lb-{instance}"));
    host.wait_for("the sync daemon's state", Duration::from_secs(10), || {
        Ok(sync_dir.join("sync.json").exists())
    })
    .with_context(|| host.journal(&sync_unit))?;
    let stats = || -> Result<serde_json::Value> {
        let out = agent::run(&lab.balancer, &["lb", "stats", "--json", "--instance", &instance])?;
        Ok(serde_json::from_str(&out)?)
    };
    let backends: Vec<&Netns> = lab.backends.iter().map(|b| &b.ns).collect();
    let servers = start_servers(&backends, &[lab.vip(0)], Proto::Mptcp)?;
    let options = ClientOptions { proto: Proto::Mptcp, bytes: 64 * 1024, wait_subflows: 1, hold: None };
    transfer(&lab.client, lab.vip(0), options)?;
    stop_servers(servers)?;
    let forwarded: u64 = stats()?["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .map(|b| b["packets"].as_u64().unwrap_or(0))
        .sum();
    ensure!(forwarded > 0, "nothing forwarded: {}", stats()?);
    ensure!(stats()?["sync"].is_object(), "lb stats shows no sync daemon: {}", stats()?);
    host.systemctl(&["start", &metrics_unit]).with_context(|| host.journal(&metrics_unit))?;
    host.wait_for("the balancer's metrics", Duration::from_secs(10), || {
        Ok(prometheus::listening(&lab.balancer, SocketAddr::from(([127, 0, 0, 1], LB_METRICS_PORT))))
    })
    .with_context(|| host.journal(&metrics_unit))?;
    scrape(&lab.balancer, LB_METRICS_PORT, "mptcp_lb_maglev_info")?;

    // Stopping the balancer stops its sync and metrics too, and `lb stop` removes the pins.
    host.systemctl(&["stop", &lb_unit])?;
    for unit in [&sync_unit, &metrics_unit] {
        ensure!(host.property(unit, "ActiveState")? == "inactive", "{unit} outlived the balancer");
    }
    ensure!(!instance_dir(&instance).exists(), "the balancer's pins outlived its unit");
    Ok(())
}
