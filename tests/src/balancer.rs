//! The load-balancer lab: a dual-homed client, a balancer namespace and backends that hold the
//! VIP on loopback (direct server return), dual-stack, from documentation ranges.
//!
//! ```text
//!  client  c0 192.0.2.1/25      2001:db8:1::1 ---- l0 192.0.2.126     2001:db8:1::ff  balancer
//!          c1 198.51.100.1/25   2001:db8:2::1 ---- l1 198.51.100.126  2001:db8:2::ff
//!  backend i: b 203.0.113.(16i+1)/28 2001:db8:3:i::1 ---- 203.0.113.(16i+14) 2001:db8:3:i::ff
//!  VIPs 203.0.113.200:80 and [2001:db8:ff::10]:80 on every backend's loopback
//! ```
//!
//! The balancer forwards VIP traffic (at tcx ingress on these veths); the backends answer
//! through their default route, the balancer's ordinary forwarding.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    thread,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    TempDir, agent, kernel,
    netns::{Netns, v4, v6, veth},
    traffic::{ClientOptions, Proto, Server, Transfer, transfer},
};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
pub const VIP_PORT: u16 = 80;

/// A client path: the client's and the balancer's ends.
#[derive(Debug, Clone)]
pub struct ClientPath {
    pub client_if: String,
    pub balancer_if: String,
    pub client: [IpAddr; 2],
    pub balancer: [IpAddr; 2],
}

/// A backend: its namespace, its link to the balancer and its name in the balancer's config.
pub struct Backend {
    pub name: String,
    pub ns: Netns,
    pub balancer_if: String,
    pub addr: [IpAddr; 2],
}

/// How the lab is set up.
#[derive(Debug, Clone, Copy)]
pub struct BalancerLabOptions {
    pub backends: usize,
    /// The client's second address is a `subflow` endpoint.
    pub client_subflow_endpoint: bool,
}

impl Default for BalancerLabOptions {
    fn default() -> Self {
        Self { backends: 3, client_subflow_endpoint: true }
    }
}

pub struct BalancerLab {
    pub client: Netns,
    pub balancer: Netns,
    pub backends: Vec<Backend>,
    pub paths: Vec<ClientPath>,
    config_dir: TempDir,
}

impl BalancerLab {
    pub fn new(options: BalancerLabOptions) -> Result<Self> {
        let client = Netns::new("cli")?;
        let balancer = Netns::new("lb")?;
        client.no_dad()?;
        balancer.no_dad()?;
        balancer.sysctl("net.ipv4.ip_forward", "1")?;
        balancer.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let mut paths = Vec::new();
        for index in 0..2u8 {
            let (client_if, balancer_if) =
                veth(&client, &format!("c{index}"), &balancer, &format!("l{index}"))?;
            let net4 = [[192, 0, 2], [198, 51, 100]][usize::from(index)];
            let net6 = 1 + u16::from(index);
            let path = ClientPath {
                client_if,
                balancer_if,
                client: [v4(net4[0], net4[1], net4[2], 1), v6([0x2001, 0xdb8, net6, 0, 0, 0, 0, 1])],
                balancer: [v4(net4[0], net4[1], net4[2], 126), v6([0x2001, 0xdb8, net6, 0, 0, 0, 0, 0xff])],
            };
            for (addr, prefix) in path.client.iter().zip([25, 64]) {
                client.add_addr(&path.client_if, *addr, prefix)?;
            }
            for (addr, prefix) in path.balancer.iter().zip([25, 64]) {
                balancer.add_addr(&path.balancer_if, *addr, prefix)?;
            }
            paths.push(path);
        }
        // The client: default routes over path 0, and source routing so that what leaves from a
        // path's address takes that path (a join from the second address uses the second path).
        for (family, which) in [("-4", 0), ("-6", 1)] {
            client.ip(&[family, "route", "add", "default", "via", &paths[0].balancer[which].to_string()])?;
            for (table, path) in (100..).zip(&paths) {
                client.route_from(
                    &path.client[which].to_string(),
                    path.balancer[which],
                    &path.client_if,
                    table,
                )?;
            }
        }
        client.sysctl("net.mptcp.enabled", "1")?;
        client.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])?;
        if options.client_subflow_endpoint {
            for addr in &paths[1].client {
                client.ip(&[
                    "mptcp",
                    "endpoint",
                    "add",
                    &addr.to_string(),
                    "dev",
                    &paths[1].client_if,
                    "subflow",
                ])?;
            }
        }

        let mut backends = Vec::new();
        for index in 0..options.backends {
            let name = format!("backend{}", index + 1);
            let ns = Netns::new(&format!("be{index}"))?;
            ns.no_dad()?;
            let (balancer_if, backend_if) = veth(&balancer, &format!("b{index}"), &ns, "eth")?;
            let i = index as u8;
            let addr = [v4(203, 0, 113, 16 * i + 1), v6([0x2001, 0xdb8, 3, u16::from(i), 0, 0, 0, 1])];
            let gateway = [v4(203, 0, 113, 16 * i + 14), v6([0x2001, 0xdb8, 3, u16::from(i), 0, 0, 0, 0xff])];
            for ((own, gw), prefix) in addr.iter().zip(&gateway).zip([28, 64]) {
                ns.add_addr(&backend_if, *own, prefix)?;
                balancer.add_addr(&balancer_if, *gw, prefix)?;
            }
            ns.ip(&["route", "add", "default", "via", &gateway[0].to_string()])?;
            ns.ip(&["-6", "route", "add", "default", "via", &gateway[1].to_string()])?;
            // The VIP is local on loopback but never answered for on the wire: only the
            // balancer attracts it.
            ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            ns.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
            ns.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
            ns.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
            ns.sysctl("net.mptcp.enabled", "1")?;
            ns.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "0"])?;
            backends.push(Backend { name, ns, balancer_if, addr });
        }
        Ok(Self { client, balancer, backends, paths, config_dir: TempDir::new("lbc")? })
    }

    pub fn vip(&self, family: usize) -> SocketAddr {
        let ip = if family == 0 { IpAddr::V4(VIP4) } else { IpAddr::V6(VIP6) };
        SocketAddr::new(ip, VIP_PORT)
    }

    /// The balancer's `lb.toml` for this lab: both VIPs served by every backend.
    pub fn config(&self, steering: &str) -> String {
        let mut text = String::new();
        let interfaces: Vec<String> = self.paths.iter().map(|p| format!("{:?}", p.balancer_if)).collect();
        text.push_str(&format!("interfaces = [{}]\n", interfaces.join(", ")));
        let names: Vec<String> = self.backends.iter().map(|b| format!("{:?}", b.name)).collect();
        for vip in [self.vip(0), self.vip(1)] {
            text.push_str(&format!(
                "\n[[vip]]\naddress = \"{vip}\"\nsteering = \"{steering}\"\nbackends = [{}]\n",
                names.join(", ")
            ));
        }
        // One entry per backend serves both VIPs: forwarding is at L2, its MAC is what counts.
        for backend in &self.backends {
            text.push_str(&format!(
                "\n[[backend]]\nname = \"{}\"\naddress = \"{}\"\ninterface = \"{}\"\n",
                backend.name, backend.addr[0], backend.balancer_if
            ));
        }
        text
    }

    /// Writes the configuration to a file and returns its path.
    pub fn write_config(&self, steering: &str) -> Result<PathBuf> {
        let path = self.config_dir.path().join(format!("lb-{steering}.toml"));
        std::fs::write(&path, self.config(steering))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// A balancer instance running in a namespace; stopped, pins and all, on drop.
pub struct Balancer<'a> {
    ns: &'a Netns,
    instance: String,
    config: PathBuf,
}

impl<'a> Balancer<'a> {
    /// `mptcp-agent lb start --config FILE` in the lab's balancer namespace, with this lab's
    /// configuration for `steering`.
    pub fn start(lab: &'a BalancerLab, steering: &str) -> Result<Self> {
        Self::start_with(&lab.balancer, lab.write_config(steering)?)
    }

    /// `mptcp-agent lb start --config FILE` in `ns`.
    pub fn start_with(ns: &'a Netns, config: PathBuf) -> Result<Self> {
        let balancer = Self { ns, instance: crate::netns::unique_name("lbi"), config };
        balancer.run(&["lb", "start", "--config", balancer.config_arg()?])?;
        Ok(balancer)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ns(&self) -> &Netns {
        self.ns
    }

    /// The pin of one of its maps (`LB_TOKENS`, ...).
    pub fn map_pin(&self, name: &str) -> PathBuf {
        agent::instance_dir(&self.instance).join("maps").join(name)
    }

    /// The `lb.toml` it was started with.
    pub fn config_arg(&self) -> Result<&str> {
        self.config.to_str().context("config path is not UTF-8")
    }

    /// Runs `mptcp-agent ARGS --instance INSTANCE` in the balancer's namespace.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        agent::run(self.ns, &[args, &["--instance", &self.instance]].concat())
    }

    /// `mptcp-agent lb stats --json`.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let out = self.run(&["lb", "stats", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("parsing lb stats: {out}"))
    }
}

impl Drop for Balancer<'_> {
    fn drop(&mut self) {
        if agent::instance_dir(&self.instance).exists()
            && let Err(error) = self.run(&["lb", "stop"])
        {
            eprintln!("cleanup: {error:#}");
            let _ = std::fs::remove_dir_all(agent::instance_dir(&self.instance));
        }
    }
}

/// A balancer-wide counter of `lb stats --json`.
pub fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name].as_u64().unwrap_or(0)
}

/// A backend's counter of `lb stats --json`.
pub fn backend_counter(stats: &Value, backend: &str, name: &str) -> u64 {
    stats["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == backend))
        .and_then(|b| b[name].as_u64())
        .unwrap_or(0)
}

/// MPTCP servers on `addrs` in every namespace of `backends`, until stopped.
pub fn start_servers(backends: &[&Netns], addrs: &[SocketAddr], proto: Proto) -> Result<Vec<Server>> {
    let mut servers = Vec::new();
    for ns in backends {
        for addr in addrs {
            servers.push(Server::start_until_stopped(ns, *addr, proto)?);
        }
    }
    Ok(servers)
}

pub fn stop_servers(servers: Vec<Server>) -> Result<()> {
    for server in servers {
        server.stop()?;
    }
    Ok(())
}

/// Client threads of [`connect`].
pub type Clients<'s> = Vec<thread::ScopedJoinHandle<'s, Result<Transfer>>>;

/// Starts `count` connections from `client` to `server` in bursts of `burst` at once; each is
/// held open at its gate once its data is sent, and a burst starts when the previous one is held.
pub fn connect<'s>(
    scope: &'s thread::Scope<'s, '_>,
    client: &'s Netns,
    server: SocketAddr,
    count: usize,
    burst: usize,
    options: &ClientOptions,
) -> Result<Clients<'s>> {
    let gate = options.hold.clone().context("connections are held at a gate")?;
    let already = gate.arrived();
    let mut handles = Vec::new();
    for first in (0..count).step_by(burst.max(1)) {
        let n = burst.min(count - first);
        let start = Arc::new(std::sync::Barrier::new(n));
        for _ in 0..n {
            let (options, start) = (options.clone(), start.clone());
            handles.push(scope.spawn(move || {
                start.wait();
                transfer(client, server, options)
            }));
        }
        gate.wait_for(already + first + n)?;
    }
    Ok(handles)
}

/// Waits for every client thread; fails with the first failure.
pub fn join_all(handles: Clients<'_>) -> Result<Vec<Transfer>> {
    handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?).collect()
}

/// Per backend namespace: the MPTCP connections established on it (by its token) with the kinds
/// of their subflows (`M` initial, `J` joined).
pub fn backend_connections(backends: &[&Netns]) -> Result<Vec<BTreeMap<u32, Vec<String>>>> {
    backends
        .iter()
        .map(|ns| {
            let mut connections: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            for subflow in kernel::subflows(ns)? {
                let kind = if subflow.flags.contains('J') { "J" } else { "M" };
                connections.entry(subflow.token).or_default().push(kind.to_owned());
            }
            Ok(connections)
        })
        .collect()
}

/// The sum of an nstat counter over namespaces.
pub fn nstat_sum(namespaces: &[&Netns], name: &str) -> Result<u64> {
    let mut sum = 0;
    for ns in namespaces {
        sum += kernel::nstat(ns)?.get(name).copied().unwrap_or(0);
    }
    Ok(sum)
}

/// Waits until `total` join SYNs reached the backends, accepted or refused for an unknown token
/// (at most 10 s).
pub fn wait_joins_answered(backends: &[&Netns], total: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while nstat_sum(backends, "MPTcpExtMPJoinSynRx")? + nstat_sum(backends, "MPTcpExtMPJoinNoTokenFound")?
        < total as u64
    {
        anyhow::ensure!(std::time::Instant::now() < deadline, "not every join SYN reached a backend");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
