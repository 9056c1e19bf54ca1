//! The congestion-control lab: a dual-homed client, a router and a server joined to the router
//! by two links, shaped with TBF at the router, so that the client's two paths either share one
//! bottleneck or each have their own.
//!
//! ```text
//!  client c0 192.0.2.1/24    ---- 192.0.2.254     router  l0 .129 ---- .130  server (203.0.113.1
//!         c1 198.51.100.1/24 ---- 198.51.100.254          l1 .133 ---- .134   on loopback)
//!  (source routing; `subflow`                      links 203.0.113.128/30 and .132/30
//!   endpoints 198.51.100.1.. on c1)
//! ```
//!
//! Shared: the router sends both paths over link 0, limited. Disjoint: it sends what comes from
//! the client's second address over link 1; each link limited. The server answers over link 0.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    kernel::parse_addr,
    netns::{Netns, veth},
    traffic::{Proto, Server, send_for},
};

/// The bottleneck queues hold this long at their rate.
const QUEUE_MS: u32 = 50;

pub struct BottleneckLab {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    /// The client's interfaces and addresses, path by path.
    pub client_ifs: [String; 2],
    pub client_addrs: [IpAddr; 2],
    pub server_addr: IpAddr,
    /// Last: the namespaces are gone before the host's list is restored.
    _allowed: AllowedCongestionControl,
}

/// Where the lab limits the rate.
#[derive(Debug, Clone, Copy)]
pub enum Bottleneck {
    /// The router's link to the server: both paths share it.
    Shared { mbit: u32 },
    /// Each client link on its own.
    Disjoint { mbit: u32 },
}

impl BottleneckLab {
    /// `joins` subflows join from addresses of the client's second link (198.51.100.1, .2, ...).
    /// `competitor` is the client's default congestion control (`reno`, `cubic`, `bbr`): the
    /// regular TCP flows run it, and so do the MPTCP subflows unless the agent's `--cc` sets
    /// theirs.
    pub fn new(bottleneck: Bottleneck, joins: u8, competitor: &str) -> Result<Self> {
        let allowed = AllowedCongestionControl::allow(competitor)?;
        let client = Netns::new("cli")?;
        let router = Netns::new("rtr")?;
        let server = Netns::new("srv")?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        let nets = [[192, 0, 2], [198, 51, 100]];
        let mut client_ifs = Vec::new();
        let mut client_addrs = Vec::new();
        for (index, net) in nets.iter().enumerate() {
            let (client_if, router_if) = veth(&client, &format!("c{index}"), &router, &format!("r{index}"))?;
            let addr = IpAddr::from([net[0], net[1], net[2], 1]);
            let gateway = IpAddr::from([net[0], net[1], net[2], 254]);
            client.ip(&["addr", "add", &format!("{addr}/24"), "dev", &client_if])?;
            // Segment by segment: a 64 KiB GSO burst arriving at a full bottleneck queue loses
            // dozens of segments of one flow at once, which biases the comparison.
            client.exec("ethtool", &["-K", &client_if, "gso", "off", "tso", "off"])?;
            router.ip(&["addr", "add", &format!("{gateway}/24"), "dev", &router_if])?;
            let table = (100 + index).to_string();
            client.ip(&[
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                &client_if,
                "table",
                &table,
            ])?;
            client.ip(&[
                "rule",
                "add",
                "from",
                &format!("{}/24", IpAddr::from([net[0], net[1], net[2], 0])),
                "table",
                &table,
            ])?;
            if index == 0 {
                client.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
            }
            client_ifs.push(client_if);
            client_addrs.push(addr);
        }
        let server_addr = IpAddr::from([203, 0, 113, 1]);
        server.ip(&["addr", "add", &format!("{server_addr}/32"), "dev", "lo"])?;
        let mut router_server_ifs = Vec::new();
        for (index, base) in [128u8, 132].into_iter().enumerate() {
            let (router_if, server_if) = veth(&router, &format!("l{index}"), &server, &format!("s{index}"))?;
            let (router_end, server_end) = ([203, 0, 113, base + 1], [203, 0, 113, base + 2]);
            router.ip(&["addr", "add", &format!("{}/30", IpAddr::from(router_end)), "dev", &router_if])?;
            server.ip(&["addr", "add", &format!("{}/30", IpAddr::from(server_end)), "dev", &server_if])?;
            let via = IpAddr::from(server_end).to_string();
            if index == 0 {
                router.ip(&["route", "add", &server_addr.to_string(), "via", &via])?;
                server.ip(&["route", "add", "default", "via", &IpAddr::from(router_end).to_string()])?;
            } else if matches!(bottleneck, Bottleneck::Disjoint { .. }) {
                router.ip(&["route", "add", &server_addr.to_string(), "via", &via, "table", "101"])?;
                router.ip(&["rule", "add", "from", "198.51.100.0/24", "table", "101"])?;
            }
            router_server_ifs.push(router_if);
        }
        // Packets of the second path arrive on link 1 but are answered over link 0.
        for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
            server.sysctl(key, "0")?;
            router.sysctl(key, "0")?;
        }
        // Both ends: where both share the host, both sockets of a subflow have its key and share
        // one congestion-control entry, so they must agree on how it is coupled.
        for ns in [&client, &server] {
            ns.sysctl("net.ipv4.tcp_congestion_control", competitor)?;
        }
        for ns in [&client, &server] {
            ns.sysctl("net.mptcp.enabled", "1")?;
            ns.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])?;
        }
        for n in 1..=joins {
            let addr = IpAddr::from([198, 51, 100, n]);
            if n > 1 {
                client.ip(&["addr", "add", &format!("{addr}/24"), "dev", &client_ifs[1]])?;
            }
            client.ip(&["mptcp", "endpoint", "add", &addr.to_string(), "dev", &client_ifs[1], "subflow"])?;
        }
        match bottleneck {
            Bottleneck::Shared { mbit } => {
                router.limit_rate(&router_server_ifs[0], mbit, QUEUE_MS)?;
            }
            Bottleneck::Disjoint { mbit } => {
                for iface in &router_server_ifs {
                    router.limit_rate(iface, mbit, QUEUE_MS)?;
                }
            }
        }
        let [a, b]: [String; 2] = client_ifs.try_into().map_err(|_| anyhow::anyhow!("two client paths"))?;
        let [x, y]: [IpAddr; 2] = client_addrs.try_into().map_err(|_| anyhow::anyhow!("two client paths"))?;
        Ok(Self {
            client,
            router,
            server,
            client_ifs: [a, b],
            client_addrs: [x, y],
            server_addr,
            _allowed: allowed,
        })
    }

    pub fn server(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_addr, port)
    }
}

/// What a measurement run carried, in Mbit/s.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub mptcp: f64,
    /// The regular TCP flows together (0 without any).
    pub tcp: f64,
}

impl Rates {
    /// MPTCP's share of what both carried.
    pub fn mptcp_share(&self) -> f64 {
        self.mptcp / (self.mptcp + self.tcp)
    }
}

fn mbit(bytes: u64, duration: Duration) -> f64 {
    bytes as f64 * 8.0 / duration.as_secs_f64() / 1e6
}

impl BottleneckLab {
    /// One MPTCP connection and `tcp_flows` regular TCP flows (from the client's first address,
    /// so over path 0) sending at once for `duration`; `probe` runs while they do.
    pub fn run(
        &self,
        tcp_flows: usize,
        duration: Duration,
        probe: impl FnOnce() -> Result<()>,
    ) -> Result<Rates> {
        let mptcp_server = Server::start(&self.server, self.server(5201), Proto::Mptcp, 1)?;
        let tcp_server = Server::start(&self.server, self.server(5202), Proto::Tcp, tcp_flows)?;
        let (mptcp, tcp, probed) = std::thread::scope(|scope| {
            let mptcp = scope.spawn(|| send_for(&self.client, self.server(5201), Proto::Mptcp, duration));
            let tcp: Vec<_> = (0..tcp_flows)
                .map(|_| scope.spawn(|| send_for(&self.client, self.server(5202), Proto::Tcp, duration)))
                .collect();
            let probed = probe();
            let join = |h: std::thread::ScopedJoinHandle<'_, Result<u64>>| {
                h.join().map_err(|_| anyhow::anyhow!("sender panicked"))?
            };
            let tcp: Result<u64> = tcp.into_iter().map(join).sum();
            (join(mptcp), tcp, probed)
        });
        probed?;
        let rates = Rates { mptcp: mbit(mptcp?, duration), tcp: mbit(tcp?, duration) };
        mptcp_server.join()?;
        tcp_server.join()?;
        Ok(rates)
    }
}

const ALLOWED_CC: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// A namespace other than the host's may make only an algorithm of the host's
/// `tcp_allowed_congestion_control` its default (`reno bbr` on the lab machine): this adds one
/// for as long as it lives and then puts the list back.
struct AllowedCongestionControl {
    /// The list before, when it lacked the algorithm.
    restore: Option<String>,
}

impl AllowedCongestionControl {
    fn allow(algorithm: &str) -> Result<Self> {
        let list = std::fs::read_to_string(ALLOWED_CC).with_context(|| format!("reading {ALLOWED_CC}"))?;
        let list = list.trim().to_owned();
        if list.split_whitespace().any(|allowed| allowed == algorithm) {
            return Ok(Self { restore: None });
        }
        std::fs::write(ALLOWED_CC, format!("{list} {algorithm}"))
            .with_context(|| format!("adding {algorithm} to {ALLOWED_CC} (is it available?)"))?;
        Ok(Self { restore: Some(list) })
    }
}

impl Drop for AllowedCongestionControl {
    fn drop(&mut self) {
        if let Some(list) = &self.restore
            && let Err(error) = std::fs::write(ALLOWED_CC, list)
        {
            eprintln!("cleanup: restoring {ALLOWED_CC} to {list:?}: {error}");
        }
    }
}

/// What a TCP socket sent and where its sending time went, from the kernel's `tcp_info`
/// (`ss -ti`: `bytes_acked`; `busy`, `rwnd_limited`, `sndbuf_limited` in ms; whatever of busy
/// is neither is cwnd-limited, and time not busy is time with nothing to send).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub bytes_acked: u64,
    pub busy_ms: u64,
    pub rwnd_limited_ms: u64,
    pub sndbuf_limited_ms: u64,
}

impl SendStats {
    pub fn since(self, before: Self) -> Self {
        Self {
            bytes_acked: self.bytes_acked.saturating_sub(before.bytes_acked),
            busy_ms: self.busy_ms.saturating_sub(before.busy_ms),
            rwnd_limited_ms: self.rwnd_limited_ms.saturating_sub(before.rwnd_limited_ms),
            sndbuf_limited_ms: self.sndbuf_limited_ms.saturating_sub(before.sndbuf_limited_ms),
        }
    }
}

/// The [`SendStats`] of every TCP socket of `ns` connected to `peer`, by local address
/// (`ss -tni`; MPTCP subflows are among them).
pub fn send_stats(ns: &Netns, peer: SocketAddr) -> Result<Vec<(SocketAddr, SendStats)>> {
    let out = ns.exec("ss", &["-tni", "state", "established"])?;
    let mut times = Vec::new();
    let mut local = None;
    for line in out.lines() {
        // Socket lines: Recv-Q Send-Q Local Peer; the detail line is indented.
        if !line.starts_with(char::is_whitespace) {
            let mut addrs = line.split_whitespace().filter_map(parse_addr);
            local = addrs.next().filter(|_| addrs.next() == Some(peer));
            continue;
        }
        let Some(local) = local.take() else { continue };
        // `bytes_acked:1234`, `busy:12ms`, `rwnd_limited:3ms(25.0%)`; absent when zero.
        let value = |name: &str| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.split("ms").next()?.parse().ok())
                .unwrap_or(0)
        };
        let time = SendStats {
            bytes_acked: value("bytes_acked"),
            busy_ms: value("busy"),
            rwnd_limited_ms: value("rwnd_limited"),
            sndbuf_limited_ms: value("sndbuf_limited"),
        };
        times.push((local, time));
    }
    Ok(times)
}
