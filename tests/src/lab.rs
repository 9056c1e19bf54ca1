//! The lab topologies: namespaces, veth paths and MPTCP endpoints, from documentation ranges.

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;

use crate::netns::{Netns, veth};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One client-server path: a veth pair on its own subnet.
#[derive(Debug, Clone)]
pub struct LabPath {
    pub client_if: String,
    pub server_if: String,
    pub client_addr: IpAddr,
    pub server_addr: IpAddr,
}

/// The subnet of path `index` (documentation ranges): (client, server, prefix length).
fn path_addresses(family: Family, index: usize) -> (IpAddr, IpAddr, u8) {
    match family {
        Family::V4 => {
            let net = [[192, 0, 2], [198, 51, 100], [203, 0, 113]][index % 3];
            (IpAddr::from([net[0], net[1], net[2], 1]), IpAddr::from([net[0], net[1], net[2], 2]), 24)
        }
        Family::V6 => {
            let net = 0x10 + index as u16;
            (
                IpAddr::from([0x2001, 0xdb8, 0, net, 0, 0, 0, 1]),
                IpAddr::from([0x2001, 0xdb8, 0, net, 0, 0, 0, 2]),
                64,
            )
        }
    }
}

/// How the dual-homed lab is set up.
#[derive(Debug, Clone, Copy)]
pub struct LabOptions {
    pub family: Family,
    /// The client's second address is a `subflow` endpoint: the client joins over path 1.
    pub client_subflow_endpoint: bool,
    /// That endpoint also has the `backup` flag: its joins ask to be backup subflows.
    pub client_backup: bool,
    /// The server's second address is a `signal` endpoint: the server sends ADD_ADDR.
    pub server_signal_endpoint: bool,
    /// Turn off GRO/GSO/TSO on the veths so every capture sees the packets the programs see.
    pub disable_offloads: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            family: Family::V4,
            client_subflow_endpoint: true,
            client_backup: false,
            server_signal_endpoint: false,
            disable_offloads: true,
        }
    }
}

/// A dual-homed client and a server joined by two paths.
pub struct DualHomedLab {
    pub client: Netns,
    pub server: Netns,
    pub paths: Vec<LabPath>,
    pub options: LabOptions,
}

impl DualHomedLab {
    pub fn new(options: LabOptions) -> Result<Self> {
        let client = Netns::new("cli")?;
        let server = Netns::new("srv")?;
        let mut paths = Vec::new();
        for index in 0..2 {
            let (client_if, server_if) = veth(&client, &format!("c{index}"), &server, &format!("s{index}"))?;
            let (client_addr, server_addr, prefix) = path_addresses(options.family, index);
            for (ns, iface, addr) in [(&client, &client_if, client_addr), (&server, &server_if, server_addr)]
            {
                let cidr = format!("{addr}/{prefix}");
                match options.family {
                    Family::V4 => ns.ip(&["addr", "add", &cidr, "dev", iface])?,
                    Family::V6 => ns.ip(&["addr", "add", &cidr, "dev", iface, "nodad"])?,
                };
                if options.disable_offloads {
                    ns.exec("ethtool", &["-K", iface, "gro", "off", "gso", "off", "tso", "off"])?;
                }
            }
            paths.push(LabPath { client_if, server_if, client_addr, server_addr });
        }
        // Source routing on the client: what leaves from a path's address takes that path, so a
        // join from the second address reaches the server's first address over the second path.
        for (index, path) in paths.iter().enumerate() {
            let table = (100 + index).to_string();
            let gateway = path.server_addr.to_string();
            let family = if options.family == Family::V6 { "-6" } else { "-4" };
            client.ip(&[
                family,
                "route",
                "add",
                "default",
                "via",
                &gateway,
                "dev",
                &path.client_if,
                "table",
                &table,
            ])?;
            client.ip(&[family, "rule", "add", "from", &path.client_addr.to_string(), "table", &table])?;
        }
        for ns in [&client, &server] {
            ns.sysctl("net.mptcp.enabled", "1")?;
            ns.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])?;
        }
        let second = &paths[1];
        if options.client_subflow_endpoint {
            client.ip(&[
                "mptcp",
                "endpoint",
                "add",
                &second.client_addr.to_string(),
                "dev",
                &second.client_if,
                "subflow",
            ])?;
        }
        if options.server_signal_endpoint {
            server.ip(&[
                "mptcp",
                "endpoint",
                "add",
                &second.server_addr.to_string(),
                "dev",
                &second.server_if,
                "signal",
            ])?;
        }
        Ok(Self { client, server, paths, options })
    }

    /// Limits what the client sends on every path to `rate` (tc syntax, e.g. "20mbit") with a
    /// token bucket, so transfers last and paths fill as on real links.
    pub fn shape_client(&self, rate: &str) -> Result<()> {
        for path in &self.paths {
            self.client.exec(
                "tc",
                &[
                    "qdisc",
                    "add",
                    "dev",
                    &path.client_if,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "32kbit",
                    "latency",
                    "100ms",
                ],
            )?;
        }
        Ok(())
    }

    /// The client's interfaces, path by path.
    pub fn client_ifaces(&self) -> Vec<&str> {
        self.paths.iter().map(|p| p.client_if.as_str()).collect()
    }

    /// The prefix length of every path's subnet.
    pub fn prefix_len(&self) -> u8 {
        path_addresses(self.options.family, 0).2
    }

    /// A second client address in path `index`'s subnet (host part 11), for address changes.
    pub fn spare_client_addr(&self, index: usize) -> IpAddr {
        match path_addresses(self.options.family, index).0 {
            IpAddr::V4(v4) => IpAddr::from([v4.octets()[0], v4.octets()[1], v4.octets()[2], 11]),
            IpAddr::V6(v6) => {
                let mut segments = v6.segments();
                segments[7] = 0x11;
                IpAddr::from(segments)
            }
        }
    }

    /// `ip`'s family switch for this lab's addresses.
    pub fn ip_family(&self) -> &'static str {
        if self.options.family == Family::V6 { "-6" } else { "-4" }
    }

    /// The wildcard address of this lab's family, with `port`.
    pub fn any_addr(&self, port: u16) -> SocketAddr {
        match self.options.family {
            Family::V4 => SocketAddr::from(([0, 0, 0, 0], port)),
            Family::V6 => SocketAddr::from(([0u16; 8], port)),
        }
    }

    /// The server's address on path `index`, with `port`.
    pub fn server_addr(&self, index: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.paths[index].server_addr, port)
    }
}
