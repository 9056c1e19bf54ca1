//! A bulk transfer from the dual-homed client while its first path breaks, under a given path
//! manager: how long the receiving application got no data, and what the kernel reported. The
//! path management tests and `cargo xtask bench failover` share it.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    TempDir,
    agent::{Daemon, Dataplane},
    kernel::{Monitor, MonitorEvent},
    lab::DualHomedLab,
    mptcpd::Mptcpd,
    netns::Netns,
    traffic::{ClientOptions, Proto, Server, transfer},
};

/// How the first path breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// `ip link set dev IF down` on the client.
    LinkDown,
    /// The client's address on that path goes (`ip addr flush`), as when a lease is lost.
    AddressRemoved,
}

impl Break {
    pub fn apply(self, lab: &DualHomedLab, path: usize) -> Result<()> {
        let iface = &lab.paths[path].client_if;
        match self {
            Self::LinkDown => lab.client.ip(&["link", "set", "dev", iface, "down"]),
            Self::AddressRemoved => lab.client.ip(&["addr", "flush", "dev", iface]),
        }
        .map(drop)
    }
}

/// Who manages the client's paths.
#[derive(Debug, Clone)]
pub enum ClientPm {
    /// The kernel alone, with static endpoints: (path index, `ip mptcp endpoint` flags).
    Kernel(Vec<(usize, &'static str)>),
    /// mptcpd with these arguments.
    Mptcpd(Vec<&'static str>),
    /// The agent's daemon with this `[paths]` configuration, where `{if0}` and `{if1}` stand
    /// for the client's interfaces; the dataplane is attached to them as its own instance.
    Agent(String),
}

/// The agent's daemon with a configuration file, its dataplane attached to the namespace's
/// interfaces as an instance of its own; all undone on drop.
pub struct Agent<'n> {
    pub daemon: Daemon,
    pub dataplane: Dataplane<'n>,
    config: TempDir,
}

impl<'n> Agent<'n> {
    /// Attaches the dataplane to `ifaces` of `ns` and starts `mptcp-agent run --config` with
    /// `config` (TOML text); returns once the daemon is ready.
    pub fn start(ns: &'n Netns, ifaces: &[&str], config: &str) -> Result<Self> {
        let dir = TempDir::new("cfg")?;
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config)?;
        let dataplane = Dataplane::attach(ns, ifaces)?;
        let daemon = Daemon::start(&dataplane, &["--config", path.to_str().context("config path")?])?;
        Ok(Self { daemon, dataplane, config: dir })
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.config.path().join("agent.toml")
    }

    /// The daemon's event log (`events --json`), one object per event.
    pub fn events(&self) -> Result<Vec<serde_json::Value>> {
        self.dataplane
            .run(&["events", "--json"])?
            .lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("event line {line}")))
            .collect()
    }

    /// Kinds of the logged events, in order.
    pub fn event_kinds(&self) -> Result<Vec<String>> {
        Ok(self.events()?.iter().filter_map(|e| e["kind"].as_str().map(str::to_owned)).collect())
    }
}

/// A path manager running for the client; stopped (and the dataplane detached) on drop.
pub enum RunningPm<'l> {
    Kernel,
    Mptcpd(Mptcpd),
    Agent(Agent<'l>),
}

impl RunningPm<'_> {
    pub fn agent(&self) -> Option<&Agent<'_>> {
        match self {
            Self::Agent(agent) => Some(agent),
            _ => None,
        }
    }
}

/// The agent's configuration with the lab's client interfaces in place of `{if0}` and `{if1}`.
pub fn agent_config(lab: &DualHomedLab, template: &str) -> String {
    template.replace("{if0}", &lab.paths[0].client_if).replace("{if1}", &lab.paths[1].client_if)
}

impl ClientPm {
    pub fn start<'l>(&self, lab: &'l DualHomedLab) -> Result<RunningPm<'l>> {
        match self {
            Self::Kernel(endpoints) => {
                for (path, flags) in endpoints {
                    let path = &lab.paths[*path];
                    let addr = path.client_addr.to_string();
                    let mut args = vec!["mptcp", "endpoint", "add", &addr, "dev", &path.client_if];
                    args.extend(flags.split_whitespace());
                    lab.client.ip(&args)?;
                }
                Ok(RunningPm::Kernel)
            }
            Self::Mptcpd(args) => Ok(RunningPm::Mptcpd(Mptcpd::start(&lab.client, args)?)),
            Self::Agent(template) => Ok(RunningPm::Agent(Agent::start(
                &lab.client,
                &lab.client_ifaces(),
                &agent_config(lab, template),
            )?)),
        }
    }
}

/// One transfer across a break.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub bytes: u64,
    pub port: u16,
    /// The break comes this long after the transfer starts.
    pub break_after: Duration,
    pub breaks: Break,
    /// Additional subflows the kernel must report before the bulk is sent.
    pub wait_subflows: u8,
}

/// What the break did to the transfer.
#[derive(Debug, Clone)]
pub struct Failover {
    /// The longest time the receiving application got no new data after the break.
    pub stall: Duration,
    pub bytes: u64,
    /// The client's `ip mptcp monitor` events over the whole transfer, and those before the break.
    pub events: Vec<MonitorEvent>,
    pub events_before_break: usize,
}

impl Failover {
    /// Subflows the client's kernel established beside the initial one (SF_ESTABLISHED).
    pub fn joins(&self) -> usize {
        self.events.iter().filter(|e| e.kind == "SF_ESTABLISHED").count()
    }

    pub fn joins_before_break(&self) -> usize {
        self.events[..self.events_before_break].iter().filter(|e| e.kind == "SF_ESTABLISHED").count()
    }
}

/// Runs the transfer, calls `before_break` while it is under way, breaks path 0 and waits for the
/// transfer to complete; fails if the application saw any error or lost data.
pub fn run<T>(
    lab: &DualHomedLab,
    scenario: Scenario,
    before_break: impl FnOnce() -> Result<T>,
) -> Result<(Failover, T)> {
    let monitor = Monitor::start(&lab.client)?;
    let server = Server::start_recording(&lab.server, lab.server_addr(0, scenario.port), Proto::Mptcp, 1)?;
    let options = ClientOptions {
        proto: Proto::Mptcp,
        bytes: scenario.bytes,
        wait_subflows: scenario.wait_subflows,
        hold: None,
    };
    let (seen, events_before_break, broken_at) = thread::scope(|scope| -> Result<_> {
        let client = scope.spawn(|| transfer(&lab.client, server.addr, options));
        thread::sleep(scenario.break_after);
        let seen = before_break();
        let events_before_break = monitor.events().len();
        let broken_at = Instant::now();
        let broken = scenario.breaks.apply(lab, 0);
        let done = client.join().map_err(|_| anyhow::anyhow!("client panicked"))?;
        let done = done.context("the transfer across the break failed")?;
        ensure!(done.bytes == scenario.bytes, "{} of {} bytes", done.bytes, scenario.bytes);
        broken?;
        Ok((seen?, events_before_break, broken_at))
    })?;
    let received = server.join_received()?.pop().context("the server saw no connection")?;
    let stall = received.longest_gap_after(broken_at).context("no data arrived after the break")?;
    let failover = Failover { stall, bytes: received.bytes, events: monitor.events(), events_before_break };
    Ok((failover, seen))
}
