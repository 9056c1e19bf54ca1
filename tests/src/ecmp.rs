//! The balancer behind ECMP: several balancer instances that a router spreads clients' flows
//! over by L4 hash, in front of backends on a shared LAN that answer by direct server return.
//! Dual-stack, from documentation ranges.
//!
//! ```text
//!  client k  c0 192.0.2.(16k+1)/28    2001:db8:1:k::1 ---- router 192.0.2.(16k+14)    2001:db8:1:k::ff
//!            c1 198.51.100.(16k+1)/28 2001:db8:2:k::1 ---- router 198.51.100.(16k+14) 2001:db8:2:k::ff
//!  router -- instance i: 192.0.2.(128+8i+1) / .(128+8i+2), 2001:db8:4:i::1 / ::2
//!            (VIPs and the join prefix: a resilient nexthop group over the live instances)
//!  LAN (a bridge in the router's namespace) 198.51.100.128/25, 2001:db8:5::/64:
//!            router .254 ::ff, instance i .(200+i) ::1:i, backend j .(129+j) ::a:j
//!  VIPs 203.0.113.200:80 and [2001:db8:ff::10]:80 on every backend's loopback
//!  join addresses of backend j: 203.0.113.(1+j) and 2001:db8:ff:1::(1+j), on its loopback
//! ```
//!
//! Each instance runs the balancer program on its router-facing veth and forwards out of its
//! LAN veth; the backends answer through the router.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    TempDir, agent,
    balancer::{
        Balancer, VIP_PORT, VIP4, VIP6, backend_connections, connect, join_all, nstat_sum, start_servers,
    },
    kernel::{self, KernelSubflow},
    netns::{Netns, unique_name, v4, v6, veth},
    sync::{SyncDaemon, random_key, write_key},
    traffic::{ClientOptions, Gate, Proto, Server, Transfer},
};

/// The sync daemons' UDP port.
pub const SYNC_PORT: u16 = 7946;
/// Buckets of the router's resilient nexthop groups (at least the number of instances).
const ECMP_BUCKETS: &str = "128";

/// How the client's second address opens subflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEndpoint {
    /// `subflow`: one join from the second path.
    Subflow,
    /// `subflow fullmesh`: joins from every endpoint to every address the server announces.
    SubflowFullmesh,
}

/// How the lab is set up.
#[derive(Debug, Clone, Copy)]
pub struct EcmpOptions {
    /// Balancer instances behind the router, 1 to 4.
    pub instances: usize,
    /// Dual-homed client namespaces, 1 to 4.
    pub clients: usize,
    pub backends: usize,
    /// The backends announce join addresses of their own, which every instance forwards.
    pub join_addresses: bool,
    /// `[sync]` in every instance's lb.toml.
    pub sync: bool,
    /// `[joins] unknown-token`: `"hash"` or `"retry-once"`.
    pub unknown_token: &'static str,
    /// The VIPs' `steering`: `"token"` or `"hash-only"` (the baseline).
    pub steering: &'static str,
    /// The clients' second-path endpoints; None: added later ([`EcmpLab::add_client_endpoints`]).
    pub client_endpoint: Option<ClientEndpoint>,
}

impl Default for EcmpOptions {
    fn default() -> Self {
        Self {
            instances: 3,
            clients: 3,
            backends: 3,
            join_addresses: true,
            sync: false,
            unknown_token: "hash",
            steering: "token",
            client_endpoint: Some(ClientEndpoint::Subflow),
        }
    }
}

/// A dual-homed client: path p's interface and its addresses (v4, v6).
pub struct EcmpClient {
    pub ns: Netns,
    pub ifaces: [String; 2],
    pub addrs: [[IpAddr; 2]; 2],
    /// The router's interfaces towards it.
    pub router_ifs: [String; 2],
}

impl EcmpClient {
    /// MPTCP endpoints on the second path's addresses (v4, v6).
    fn add_endpoints(&self, endpoint: ClientEndpoint) -> Result<()> {
        let flags: &[&str] = match endpoint {
            ClientEndpoint::Subflow => &["subflow"],
            ClientEndpoint::SubflowFullmesh => &["subflow", "fullmesh"],
        };
        for addr in &self.addrs[1] {
            let addr = addr.to_string();
            self.ns.ip(&[&["mptcp", "endpoint", "add", &addr, "dev", &self.ifaces[1]][..], flags].concat())?;
        }
        Ok(())
    }
}

/// A balancer instance's host: its namespace, its link to the router and its LAN interface.
pub struct EcmpInstance {
    /// Its name among its peers (`[sync] name`).
    pub name: String,
    pub ns: Netns,
    /// Its router-facing interface, where the balancer program runs.
    pub uplink: String,
    /// The router's end of that link.
    pub router_if: String,
    pub uplink_addrs: [IpAddr; 2],
    /// Its LAN interface, out of which it forwards to the backends.
    pub lan_if: String,
    /// Its port on the LAN bridge.
    pub lan_port: String,
    pub lan_addrs: [IpAddr; 2],
    /// Its `lb.toml`.
    pub config: PathBuf,
}

/// A backend on the LAN.
pub struct EcmpBackend {
    pub name: String,
    pub ns: Netns,
    pub addrs: [IpAddr; 2],
    /// Its join addresses (v4, v6), when the lab uses join addressing.
    pub join_addrs: Option<[IpAddr; 2]>,
}

pub struct EcmpLab {
    pub options: EcmpOptions,
    pub clients: Vec<EcmpClient>,
    pub router: Netns,
    pub instances: Vec<EcmpInstance>,
    pub backends: Vec<EcmpBackend>,
    /// The lb.toml files and the sync key.
    dir: TempDir,
}

/// The router's nexthop id of instance `instance` for `family` (0: v4, 1: v6).
fn nexthop_id(family: usize, instance: usize) -> u32 {
    10 * (family as u32 + 1) + instance as u32 + 1
}

/// The router's nexthop groups (v4, v6) that the VIP and join routes use.
const GROUP_IDS: [u32; 2] = [100, 200];

impl EcmpLab {
    pub fn new(options: EcmpOptions) -> Result<Self> {
        ensure!((1..=4).contains(&options.instances), "1 to 4 instances");
        ensure!((1..=4).contains(&options.clients), "1 to 4 clients");
        ensure!((1..=8).contains(&options.backends), "1 to 8 backends");
        let dir = TempDir::new("ecmp")?;
        let router = Netns::new("rtr")?;
        router.no_dad()?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // L4 hashing, so that a connection's subflows (other ports) spread over the instances.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        router.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        // Replies come from the backends (over the LAN) for flows that went out to the
        // instances: asymmetric by design.
        router.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        router.sysctl("net.ipv4.conf.default.rp_filter", "0")?;

        let clients =
            (0..options.clients).map(|k| Self::client(&router, k, options)).collect::<Result<_>>()?;

        let bridge = unique_name("br");
        router.ip(&["link", "add", &bridge, "type", "bridge", "mcast_snooping", "0"])?;
        // A bridge without an address of its own takes its ports' lowest MAC, and changes it when
        // that port goes: the backends' ARP entries for the router would then point nowhere for
        // seconds after an instance dies, and every reply with them.
        router.ip(&["link", "set", &bridge, "address", "02:00:00:00:00:fe"])?;
        router.ip(&["link", "set", &bridge, "up"])?;
        let router_lan = lan_router();
        for (addr, prefix) in router_lan.iter().zip([25, 64]) {
            router.add_addr(&bridge, *addr, prefix)?;
        }

        let mut instances = Vec::new();
        for i in 0..options.instances {
            let ns = Netns::new(&format!("lb{i}"))?;
            ns.no_dad()?;
            let (router_if, uplink) = veth(&router, &format!("r{i}"), &ns, "up")?;
            let n = 128 + 8 * i as u8;
            let router_addrs = [v4(192, 0, 2, n + 1), v6([0x2001, 0xdb8, 4, i as u16, 0, 0, 0, 1])];
            let uplink_addrs = [v4(192, 0, 2, n + 2), v6([0x2001, 0xdb8, 4, i as u16, 0, 0, 0, 2])];
            for ((r, u), prefix) in router_addrs.iter().zip(&uplink_addrs).zip([29, 64]) {
                router.add_addr(&router_if, *r, prefix)?;
                ns.add_addr(&uplink, *u, prefix)?;
            }
            let (lan_port, lan_if) = veth(&router, &format!("p{i}"), &ns, "lan")?;
            router.ip(&["link", "set", &lan_port, "master", &bridge])?;
            let lan_addrs = [v4(198, 51, 100, 200 + i as u8), v6([0x2001, 0xdb8, 5, 0, 0, 0, 1, i as u16])];
            for (addr, prefix) in lan_addrs.iter().zip([25, 64]) {
                ns.add_addr(&lan_if, *addr, prefix)?;
            }
            for (family, via) in uplink_addrs.iter().enumerate() {
                let (id, via) = (nexthop_id(family, i).to_string(), via.to_string());
                router.ip(&["nexthop", "add", "id", &id, "via", &via, "dev", &router_if])?;
            }
            let name = format!("lb{}", i + 1);
            let config = dir.path().join(format!("{name}.toml"));
            instances.push(EcmpInstance {
                name,
                ns,
                uplink,
                router_if,
                uplink_addrs,
                lan_if,
                lan_port,
                lan_addrs,
                config,
            });
        }
        // A resilient group: when an instance goes, only its buckets move, so the flows of the
        // live instances stay where they are (what a router's consistent ECMP hashing gives).
        for (family, group) in GROUP_IDS.iter().enumerate() {
            let members: Vec<String> =
                (0..options.instances).map(|i| nexthop_id(family, i).to_string()).collect();
            router.ip(&[
                "nexthop",
                "add",
                "id",
                &group.to_string(),
                "group",
                &members.join("/"),
                "type",
                "resilient",
                "buckets",
                ECMP_BUCKETS,
            ])?;
        }
        let mut routes = vec![(0, format!("{VIP4}/32")), (1, format!("{VIP6}/128"))];
        if options.join_addresses {
            routes.extend([(0, "203.0.113.0/25".to_owned()), (1, "2001:db8:ff:1::/64".to_owned())]);
        }
        for (family, prefix) in routes {
            router.ip(&["route", "add", &prefix, "nhid", &GROUP_IDS[family].to_string()])?;
        }

        let mut backends = Vec::new();
        for j in 0..options.backends {
            let name = format!("backend{}", j + 1);
            let ns = Netns::new(&format!("be{j}"))?;
            ns.no_dad()?;
            let (port, backend_if) = veth(&router, &format!("q{j}"), &ns, "eth")?;
            router.ip(&["link", "set", &port, "master", &bridge])?;
            let addrs = [v4(198, 51, 100, 129 + j as u8), v6([0x2001, 0xdb8, 5, 0, 0, 0, 0xa, j as u16])];
            for (addr, prefix) in addrs.iter().zip([25, 64]) {
                ns.add_addr(&backend_if, *addr, prefix)?;
            }
            // Direct server return: replies to clients go through the router.
            ns.ip(&["route", "add", "default", "via", &router_lan[0].to_string()])?;
            ns.ip(&["-6", "route", "add", "default", "via", &router_lan[1].to_string()])?;
            ns.sysctl("net.mptcp.enabled", "1")?;
            ns.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "0"])?;
            let join_addrs = options
                .join_addresses
                .then(|| [v4(203, 0, 113, 1 + j as u8), v6([0x2001, 0xdb8, 0xff, 1, 0, 0, 0, 1 + j as u16])]);
            backends.push(EcmpBackend { name, ns, addrs, join_addrs });
        }

        let lab = Self { options, clients, router, instances, backends, dir };
        let key = lab.dir.path().join("sync.key");
        if options.sync {
            write_key(&key, &random_key()?)?;
        }
        for instance in &lab.instances {
            std::fs::write(&instance.config, lab.config(instance, &key))
                .with_context(|| format!("writing {}", instance.config.display()))?;
        }
        for backend in &lab.backends {
            lab.setup_backend(backend)?;
        }
        Ok(lab)
    }

    fn client(router: &Netns, k: usize, options: EcmpOptions) -> Result<EcmpClient> {
        let ns = Netns::new(&format!("cl{k}"))?;
        ns.no_dad()?;
        let mut ifaces = [String::new(), String::new()];
        let mut router_ifs = [String::new(), String::new()];
        let mut addrs = [[v4(0, 0, 0, 0); 2]; 2];
        let mut gateways = [[v4(0, 0, 0, 0); 2]; 2];
        for path in 0..2 {
            let (client_if, router_if) = veth(&ns, &format!("c{path}"), router, &format!("k{k}{path}"))?;
            let net4 = [[192, 0, 2], [198, 51, 100]][path];
            let base = 16 * k as u8;
            let net6 = [0x2001, 0xdb8, 1 + path as u16, k as u16, 0, 0, 0];
            let own = [
                v4(net4[0], net4[1], net4[2], base + 1),
                v6([net6[0], net6[1], net6[2], net6[3], 0, 0, 0, 1]),
            ];
            let gateway = [
                v4(net4[0], net4[1], net4[2], base + 14),
                v6([net6[0], net6[1], net6[2], net6[3], 0, 0, 0, 0xff]),
            ];
            for (family, prefix) in [28, 64].into_iter().enumerate() {
                ns.add_addr(&client_if, own[family], prefix)?;
                router.add_addr(&router_if, gateway[family], prefix)?;
            }
            (ifaces[path], router_ifs[path], addrs[path], gateways[path]) =
                (client_if, router_if, own, gateway);
        }
        // Default routes over path 0, and source routing so that what leaves from a path's
        // address takes that path (a join from the second address uses the second path).
        for (family, flag) in ["-4", "-6"].into_iter().enumerate() {
            ns.ip(&[flag, "route", "add", "default", "via", &gateways[0][family].to_string()])?;
            for (table, path) in (100..).zip(0..2) {
                ns.route_from(
                    &addrs[path][family].to_string(),
                    gateways[path][family],
                    &ifaces[path],
                    table,
                )?;
            }
        }
        ns.sysctl("net.mptcp.enabled", "1")?;
        ns.ip(&["mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])?;
        let client = EcmpClient { ns, ifaces, addrs, router_ifs };
        if let Some(endpoint) = options.client_endpoint {
            client.add_endpoints(endpoint)?;
        }
        Ok(client)
    }

    /// Every client's second-path endpoints, from now on.
    pub fn add_client_endpoints(&self, endpoint: ClientEndpoint) -> Result<()> {
        self.clients.iter().try_for_each(|client| client.add_endpoints(endpoint))
    }

    /// `mptcp-agent lb backend-setup` in the backend's namespace, from the first instance's
    /// `lb.toml` (every instance's lists the same backends): the VIPs on loopback and, with join
    /// addressing, the join addresses with their signal endpoints.
    fn setup_backend(&self, backend: &EcmpBackend) -> Result<String> {
        let config = self.instances[0].config.to_str().context("config path is not UTF-8")?;
        let args = ["lb", "backend-setup", "--config", config, "--backend", &backend.name];
        agent::run(&backend.ns, &args)
    }

    pub fn vip(&self, family: usize) -> SocketAddr {
        let ip = if family == 0 { IpAddr::V4(VIP4) } else { IpAddr::V6(VIP6) };
        SocketAddr::new(ip, VIP_PORT)
    }

    /// MPTCP servers on both VIPs of every backend, until stopped.
    pub fn start_servers(&self) -> Result<Vec<Server>> {
        let backends: Vec<&Netns> = self.backends.iter().map(|b| &b.ns).collect();
        start_servers(&backends, &[self.vip(0), self.vip(1)], Proto::Mptcp)
    }

    pub fn backend_namespaces(&self) -> Vec<&Netns> {
        self.backends.iter().map(|b| &b.ns).collect()
    }

    /// Instance `instance`'s `lb.toml`: the same VIPs, backends and join addresses on every
    /// instance, its own interfaces and `[sync]`.
    pub fn config(&self, instance: &EcmpInstance, key: &Path) -> String {
        let mut text = format!("interfaces = [{:?}]\n", instance.uplink);
        let names: Vec<String> = self.backends.iter().map(|b| format!("{:?}", b.name)).collect();
        for vip in [self.vip(0), self.vip(1)] {
            text.push_str(&format!(
                "\n[[vip]]\naddress = \"{vip}\"\nsteering = \"{}\"\nbackends = [{}]\n",
                self.options.steering,
                names.join(", ")
            ));
        }
        for backend in &self.backends {
            text.push_str(&format!(
                "\n[[backend]]\nname = \"{}\"\naddress = \"{}\"\ninterface = \"{}\"\n",
                backend.name, backend.addrs[0], instance.lan_if
            ));
            if let Some([a, b]) = backend.join_addrs {
                text.push_str(&format!("join-addresses = [\"{a}\", \"{b}\"]\n"));
            }
        }
        text.push_str(&format!("\n[joins]\nunknown-token = \"{}\"\n", self.options.unknown_token));
        if self.options.sync {
            let peers: Vec<String> = self
                .instances
                .iter()
                .filter(|other| other.name != instance.name)
                .map(|other| format!("\"{}\"", SocketAddr::new(other.lan_addrs[0], SYNC_PORT)))
                .collect();
            text.push_str(&format!(
                "\n[sync]\nname = \"{}\"\nlisten = \"{}\"\npeers = [{}]\nkey-file = \"{}\"\n",
                instance.name,
                SocketAddr::new(instance.lan_addrs[0], SYNC_PORT),
                peers.join(", "),
                key.display()
            ));
        }
        text
    }

    /// `lb start` on every instance.
    pub fn start_balancers(&self) -> Result<Vec<Balancer<'_>>> {
        self.instances.iter().map(|i| Balancer::start_with(&i.ns, i.config.clone())).collect()
    }

    /// `lb sync` next to every balancer, each ready once it hears every peer.
    pub fn start_sync(&self, balancers: &[Balancer<'_>]) -> Result<Vec<SyncDaemon>> {
        let daemons: Vec<SyncDaemon> = balancers.iter().map(SyncDaemon::start).collect::<Result<_>>()?;
        for daemon in &daemons {
            daemon.wait_for("every peer up", |state| {
                state["peers"].as_array().is_some_and(|peers| {
                    peers.len() == self.instances.len() - 1 && peers.iter().all(|p| p["up"] == true)
                })
            })?;
        }
        Ok(daemons)
    }

    /// The instance the router sends a flow from client `client`'s path `path` to a destination
    /// to, by its own routing decision (`ip route get` with the ports): None when no live
    /// instance would get it.
    pub fn instance_for(
        &self,
        client: usize,
        path: usize,
        dst: SocketAddr,
        sport: u16,
    ) -> Result<Option<usize>> {
        let family = usize::from(dst.is_ipv6());
        let c = &self.clients[client];
        let out = self.router.ip(&[
            "-j",
            "route",
            "get",
            &dst.ip().to_string(),
            "from",
            &c.addrs[path][family].to_string(),
            "iif",
            &c.router_ifs[path],
            "ipproto",
            "tcp",
            "sport",
            &sport.to_string(),
            "dport",
            &dst.port().to_string(),
        ])?;
        let routes: serde_json::Value = serde_json::from_str(out.trim()).context("ip -j route get")?;
        let gateway = routes[0]["gateway"].as_str().map(str::parse::<IpAddr>).transpose()?;
        Ok(gateway.and_then(|gw| self.instances.iter().position(|i| i.uplink_addrs[family] == gw)))
    }

    /// The router's live members of its VIP nexthop group (v4 or v6), by instance index.
    pub fn ecmp_members(&self, family: usize) -> Result<Vec<usize>> {
        let out = self.router.ip(&["-j", "nexthop", "show", "id", &GROUP_IDS[family].to_string()])?;
        let groups: serde_json::Value = serde_json::from_str(out.trim()).context("ip -j nexthop show")?;
        let ids: Vec<u64> = groups[0]["group"]
            .as_array()
            .context("no group in ip nexthop show")?
            .iter()
            .filter_map(|member| member["id"].as_u64())
            .collect();
        Ok((0..self.instances.len()).filter(|i| ids.contains(&u64::from(nexthop_id(family, *i)))).collect())
    }

    /// A balancer host dies: its links go away. The kernel itself drops the nexthop of a deleted
    /// device from the groups (a legacy IPv4 multipath route would be deleted whole on device
    /// removal, which is why the lab routes through nexthop groups: no routing daemon has to
    /// replace the route); checked here.
    pub fn kill_instance(&self, index: usize) -> Result<()> {
        let instance = &self.instances[index];
        self.router.ip(&["link", "del", &instance.router_if])?;
        self.router.ip(&["link", "del", &instance.lan_port])?;
        for family in 0..2 {
            let members = self.ecmp_members(family)?;
            ensure!(
                !members.contains(&index) && !members.is_empty(),
                "the router still routes to the dead instance {index} (family {family}): members {members:?}"
            );
        }
        Ok(())
    }
}

fn lan_router() -> [IpAddr; 2] {
    [v4(198, 51, 100, 254), v6([0x2001, 0xdb8, 5, 0, 0, 0, 0, 0xff])]
}

/// The kernels' join counters: the backends' `MPJoinAckRx` (joins established) and
/// `MPJoinNoTokenFound` (refused), the clients' `MPJoinSynAckRx` (joins answered).
#[derive(Debug, Clone, Copy)]
pub struct JoinCounts {
    pub joined: u64,
    pub answered: u64,
    pub refused: u64,
}

impl JoinCounts {
    pub fn since(self, before: Self) -> Self {
        Self {
            joined: self.joined - before.joined,
            answered: self.answered - before.answered,
            refused: self.refused - before.refused,
        }
    }
}

/// What a round of held connections left: per backend its connections (token -> subflow
/// kinds) and its subflows, every instance's stats, the client threads' results.
pub struct HeldRound {
    /// The kernels' join counters when the round started.
    pub before: JoinCounts,
    pub connections: Vec<BTreeMap<u32, Vec<String>>>,
    pub subflows: Vec<Vec<KernelSubflow>>,
    pub stats: Vec<serde_json::Value>,
    pub transfers: Vec<Transfer>,
}

impl HeldRound {
    /// Connections whose initial subflow and a join are both on one backend: the join on its
    /// owner.
    pub fn joined_on_owner(&self) -> usize {
        self.connections.iter().flat_map(|c| c.values()).filter(|kinds| kinds.len() > 1).count()
    }
}

impl EcmpLab {
    pub fn client_namespaces(&self) -> Vec<&Netns> {
        self.clients.iter().map(|c| &c.ns).collect()
    }

    pub fn join_counts(&self) -> Result<JoinCounts> {
        let backends = self.backend_namespaces();
        Ok(JoinCounts {
            joined: nstat_sum(&backends, "MPTcpExtMPJoinAckRx")?,
            answered: nstat_sum(&self.client_namespaces(), "MPTcpExtMPJoinSynAckRx")?,
            refused: nstat_sum(&backends, "MPTcpExtMPJoinNoTokenFound")?,
        })
    }

    /// Opens `total` MPTCP connections spread over every client and both families (bursts of
    /// 25, each held at a gate once its data is sent), waits (15 s at most) until `settled`
    /// says the joins are done, then reads the backends' kernels and the instances' counters
    /// and lets the connections close.
    pub fn hold_connections(
        &self,
        balancers: &[Balancer<'_>],
        total: usize,
        options: ClientOptions,
        settled: impl Fn() -> Result<bool>,
    ) -> Result<HeldRound> {
        let gate = Arc::new(Gate::default());
        let options = ClientOptions { hold: Some(gate.clone()), ..options };
        let streams = 2 * self.clients.len();
        let backends = self.backend_namespaces();
        let before = self.join_counts()?;
        std::thread::scope(|scope| -> Result<HeldRound> {
            let mut handles = Vec::new();
            for stream in 0..streams {
                let count = total / streams + usize::from(stream < total % streams);
                let (client, family) = (&self.clients[stream / 2].ns, stream % 2);
                handles.extend(connect(scope, client, self.vip(family), count, 25, &options)?);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while !settled()? {
                ensure!(Instant::now() < deadline, "the joins did not settle within 15 s");
                std::thread::sleep(Duration::from_millis(50));
            }
            let connections = backend_connections(&backends)?;
            let subflows = backends.iter().map(|ns| kernel::subflows(ns)).collect::<Result<_>>()?;
            let stats = balancers.iter().map(Balancer::stats).collect::<Result<_>>()?;
            gate.open();
            Ok(HeldRound { before, connections, subflows, stats, transfers: join_all(handles)? })
        })
    }
}
