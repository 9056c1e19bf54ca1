//! The token-steering load balancer: configuration, loading and attaching its XDP program,
//! filling its maps (VIPs, backends, Maglev tables), runtime backend changes and statistics.
//! Its state lives in pinned maps under `/sys/fs/bpf/mptcp/INSTANCE/`, so every command reads
//! and changes the running balancer without a daemon.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{TcAttachType, Xdp},
};
use futures::TryStreamExt as _;
use mptcp_common::{
    lb::{
        BACKEND_COUNTER_NAMES, Backend, BackendCounters, LB_BACKEND_COUNTERS_MAP, LB_BACKENDS_MAP,
        LB_COUNTER_NAMES, LB_COUNTERS_MAP, LB_MAGLEV_MAP, LB_MAP_NAMES, LB_VIPS_MAP, LbCounters, MAGLEV_SIZE,
        MAX_BACKENDS, MAX_VIPS, NO_BACKEND, Vip, VipKey, backend_state, steering,
    },
    maps::{addr_bytes, ipv4_mapped},
};
use rtnetlink::packet_route::{
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute},
};
use serde::{Deserialize, Serialize};

use crate::{
    bpf::maps as bpf_maps,
    bpf::{
        self, BALANCER_OBJECT, IngressHook, Instance, LoaderError, Privilege, XdpAttachMode, check_bpffs,
        check_privileges,
    },
    lb::maglev,
};

/// The balancer's programs: XDP, and the tcx classifier for interfaces where XDP does not pay.
pub(crate) const LB_XDP_PROGRAM: &str = "mptcp_lb";
const LB_TC_PROGRAM: &str = "mptcp_lb_tc";
/// Their links, per interface (`detach` takes whatever links an interface's directory holds).
const LB_XDP_LINK: &str = "lb_xdp";
const LB_TC_LINK: &str = "lb_tc";

#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("reading {path}")]
    ReadConfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TOML error is the whole message (it names the line): shown, not chained.
    #[error("{path}: {error}")]
    ParseConfig { path: String, error: toml::de::Error },
    #[error("configuration: {0}")]
    Config(String),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("no balancer runs as instance {0}: start one with `mptcp-agent lb --config FILE`")]
    NotRunning(String),
    #[error("a balancer already runs as instance {0}; stop it with `mptcp-agent lb stop`")]
    AlreadyRunning(String),
    #[error("no backend named {0}")]
    NoSuchBackend(String),
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> SteeringError {
    move |source| SteeringError::Map { name, source }
}

/// How VIPs steer joins (`steering = "token" | "hash-only"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Steering {
    /// Each MP_JOIN SYN to the backend owning its token.
    Token,
    /// 5-tuple hashing for every SYN, as other L4 balancers do: the baseline.
    HashOnly,
}

impl Steering {
    fn code(self) -> u32 {
        match self {
            Steering::Token => steering::TOKEN,
            Steering::HashOnly => steering::HASH_ONLY,
        }
    }
}

/// `lb.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LbConfig {
    /// Client-facing interfaces, where the XDP program runs.
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: Option<crate::config::XdpModeName>,
    #[serde(rename = "vip")]
    pub vips: Vec<VipConfig>,
    #[serde(rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VipConfig {
    /// `ADDR:PORT` or `[ADDR]:PORT`.
    pub address: SocketAddr,
    #[serde(default = "default_steering")]
    pub steering: Steering,
    /// Names of the backends serving this VIP.
    pub backends: Vec<String>,
}

fn default_steering() -> Steering {
    Steering::Token
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendConfig {
    pub name: String,
    pub address: IpAddr,
    /// The balancer's interface towards the backend.
    pub interface: String,
    /// The backend's MAC; resolved from the neighbour table when absent.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl LbConfig {
    pub fn load(path: &Path) -> Result<Self, SteeringError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| SteeringError::ReadConfig { path: display.clone(), source })?;
        Self::parse(&text, &display)
    }

    /// Parses and checks the text of `lb.toml`; `path` names it in errors.
    fn parse(text: &str, path: &str) -> Result<Self, SteeringError> {
        let config: Self = toml::from_str(text)
            .map_err(|error| SteeringError::ParseConfig { path: path.to_owned(), error })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), SteeringError> {
        let bad = |what: String| Err(SteeringError::Config(what));
        if self.interfaces.is_empty() {
            return bad("`interfaces` lists no interface".into());
        }
        if self.vips.is_empty() || self.vips.len() > MAX_VIPS {
            return bad(format!("between 1 and {MAX_VIPS} `[[vip]]` entries are needed"));
        }
        if self.backends.len() > MAX_BACKENDS {
            return bad(format!("at most {MAX_BACKENDS} `[[backend]]` entries"));
        }
        for backend in &self.backends {
            backend.validate()?;
            if self.backends.iter().filter(|b| b.name == backend.name).count() > 1 {
                return bad(format!("backend {} is defined twice", backend.name));
            }
        }
        for vip in &self.vips {
            if self.vips.iter().filter(|v| v.address == vip.address).count() > 1 {
                return bad(format!("vip {} is defined twice", vip.address));
            }
            for name in &vip.backends {
                if !self.backends.iter().any(|b| &b.name == name) {
                    return bad(format!("vip {}: no backend named {name}", vip.address));
                }
            }
        }
        Ok(())
    }
}

impl BackendConfig {
    fn validate(&self) -> Result<(), SteeringError> {
        let bad = |what: String| Err(SteeringError::Config(format!("backend {:?}: {what}", self.name)));
        if self.name.is_empty() || self.name.len() > 15 {
            return bad("`name` must have 1 to 15 bytes".into());
        }
        if self.weight == 0 || self.weight > 1000 {
            return bad(format!("`weight` {} is not within 1..=1000", self.weight));
        }
        if let Some(mac) = &self.mac
            && parse_mac(mac).is_none()
        {
            return bad(format!("`mac` {mac:?} is not six hex bytes separated by colons"));
        }
        Ok(())
    }
}

/// A backend's map entry, active.
fn backend_entry(backend: &BackendConfig, link: &Link, vip_mask: u32) -> Backend {
    Backend {
        ifindex: link.ifindex,
        state: backend_state::ACTIVE,
        vip_mask,
        weight: backend.weight,
        mac: link.mac,
        src_mac: link.own_mac,
        _pad: [0; 4],
        name: name_bytes(&backend.name),
        addr: addr_of(backend.address).0,
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    bytes.try_into().ok()
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn addr_of(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => (addr_bytes(ipv4_mapped(v4.octets())), 4),
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

fn vip_key(address: SocketAddr) -> VipKey {
    let (addr, family) = addr_of(address.ip());
    VipKey { addr, port: address.port(), family, _pad: [0; 5] }
}

fn name_bytes(name: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (dst, src) in bytes.iter_mut().zip(name.bytes()) {
        *dst = src;
    }
    bytes
}

fn name_of(backend: &Backend) -> String {
    let end = backend.name.iter().position(|&b| b == 0).unwrap_or(backend.name.len());
    String::from_utf8_lossy(&backend.name[..end]).into_owned()
}

/// Where a backend's frames go: out of `ifindex`, from `own_mac` to `mac`.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub ifindex: u32,
    pub own_mac: [u8; 6],
    pub mac: [u8; 6],
}

impl Link {
    /// The backend's link: its interface from the kernel, its MAC from the configuration or the
    /// neighbour table.
    async fn resolve(backend: &BackendConfig) -> Result<Self, SteeringError> {
        let (ifindex, own_mac, neighbour_mac) = resolve(&backend.interface, backend.address).await?;
        let mac = backend.mac.as_deref().and_then(parse_mac).unwrap_or(neighbour_mac);
        Ok(Self { ifindex, own_mac, mac })
    }
}

/// The interface index and MAC of `iface`, and the MAC of `neighbour` on it (probed with a UDP
/// datagram when the neighbour table lacks it).
async fn resolve(iface: &str, neighbour: IpAddr) -> Result<(u32, [u8; 6], [u8; 6]), SteeringError> {
    let netlink = |e: rtnetlink::Error| SteeringError::Netlink(e.to_string());
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| SteeringError::Netlink(e.to_string()))?;
    tokio::spawn(connection);
    let link = handle
        .link()
        .get()
        .match_name(iface.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(|_| SteeringError::Config(format!("interface {iface} does not exist")))?
        .ok_or_else(|| SteeringError::Config(format!("interface {iface} does not exist")))?;
    let own_mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| SteeringError::Config(format!("interface {iface} has no MAC address")))?;
    let index = link.header.index;
    for attempt in 0..20 {
        let mut neighbours = handle.neighbours().get().execute();
        while let Some(entry) = neighbours.try_next().await.map_err(netlink)? {
            let found = entry.header.ifindex == index
                && entry.attributes.iter().any(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        IpAddr::V4(*v4) == neighbour
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        IpAddr::V6(*v6) == neighbour
                    }
                    _ => false,
                });
            let mac = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            });
            if let (true, Some(mac)) = (found, mac) {
                return Ok((index, own_mac, mac));
            }
        }
        if attempt == 0 {
            // Any datagram makes the kernel resolve the neighbour (discard port).
            let socket = std::net::UdpSocket::bind(SocketAddr::new(
                if neighbour.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) },
                0,
            ))
            .map_err(|e| SteeringError::Netlink(e.to_string()))?;
            let _ = socket.send_to(&[0], SocketAddr::new(neighbour, 9));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(SteeringError::Config(format!(
        "no neighbour entry for {neighbour} on {iface}: give its `mac` in the configuration"
    )))
}

/// The balancer's pinned maps.
pub struct LbMaps {
    vips: HashMap<MapData, VipKey, Vip>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    counters: PerCpuArray<MapData, LbCounters>,
    backend_counters: PerCpuArray<MapData, BackendCounters>,
}

impl LbMaps {
    /// The maps, each from `open(name)`.
    pub fn open(
        mut open: impl FnMut(&'static str) -> Result<Map, SteeringError>,
    ) -> Result<Self, SteeringError> {
        Ok(Self {
            vips: HashMap::try_from(open(LB_VIPS_MAP)?).map_err(map_error(LB_VIPS_MAP))?,
            backends: Array::try_from(open(LB_BACKENDS_MAP)?).map_err(map_error(LB_BACKENDS_MAP))?,
            maglev: Array::try_from(open(LB_MAGLEV_MAP)?).map_err(map_error(LB_MAGLEV_MAP))?,
            counters: PerCpuArray::try_from(open(LB_COUNTERS_MAP)?).map_err(map_error(LB_COUNTERS_MAP))?,
            backend_counters: PerCpuArray::try_from(open(LB_BACKEND_COUNTERS_MAP)?)
                .map_err(map_error(LB_BACKEND_COUNTERS_MAP))?,
        })
    }

    /// The maps of the balancer running as `instance`.
    pub fn pinned(instance: &Instance) -> Result<Self, SteeringError> {
        check_privileges(Privilege::ReadMaps)?;
        if !instance.map_path(LB_VIPS_MAP).exists() {
            return Err(SteeringError::NotRunning(instance.name.clone()));
        }
        Self::open(|name| Ok(instance.open_map(name)?))
    }

    fn backend_slots(&self) -> Result<Vec<(u32, Backend)>, SteeringError> {
        (0..MAX_BACKENDS as u32)
            .map(|slot| Ok((slot, self.backends.get(&slot, 0).map_err(map_error(LB_BACKENDS_MAP))?)))
            .collect()
    }

    fn slot_of(&self, name: &str) -> Result<u32, SteeringError> {
        self.backend_slots()?
            .into_iter()
            .find(|(_, b)| b.state != backend_state::UNUSED && name_of(b) == name)
            .map(|(slot, _)| slot)
            .ok_or_else(|| SteeringError::NoSuchBackend(name.to_owned()))
    }

    /// Rebuilds the Maglev table of every VIP from the active backends serving it.
    fn rebuild(&mut self) -> Result<(), SteeringError> {
        let backends = self.backend_slots()?;
        let vips: Vec<Vip> = self
            .vips
            .iter()
            .map(|r| r.map(|(_, v)| v))
            .collect::<Result<_, _>>()
            .map_err(map_error(LB_VIPS_MAP))?;
        for vip in vips {
            let names: Vec<(u32, String, u32)> = backends
                .iter()
                .filter(|(_, b)| b.state == backend_state::ACTIVE && b.vip_mask & (1 << vip.index) != 0)
                .map(|(slot, b)| (*slot, name_of(b), b.weight))
                .collect();
            let members: Vec<maglev::Member<'_>> = names
                .iter()
                .map(|(slot, name, weight)| maglev::Member { slot: *slot, name, weight: *weight })
                .collect();
            let table = maglev::table(&members, MAGLEV_SIZE, NO_BACKEND);
            let base = vip.index * MAGLEV_SIZE as u32;
            for (i, backend) in table.iter().enumerate() {
                self.maglev.set(base + i as u32, backend, 0).map_err(map_error(LB_MAGLEV_MAP))?;
            }
        }
        Ok(())
    }

    /// Fills empty maps from `config`, backend `i` reached through `links[i]`.
    pub fn configure(
        &mut self,
        config: &LbConfig,
        links: &[Link],
        steering_override: Option<Steering>,
    ) -> Result<(), SteeringError> {
        for (index, vip) in config.vips.iter().enumerate() {
            let steering = steering_override.unwrap_or(vip.steering);
            self.vips
                .insert(vip_key(vip.address), Vip { index: index as u32, steering: steering.code() }, 0)
                .map_err(map_error(LB_VIPS_MAP))?;
        }
        for (slot, (backend, link)) in config.backends.iter().zip(links).enumerate() {
            let vip_mask = config
                .vips
                .iter()
                .enumerate()
                .filter(|(_, vip)| vip.backends.contains(&backend.name))
                .fold(0u32, |mask, (index, _)| mask | 1 << index);
            self.set_backend(slot as u32, &backend_entry(backend, link, vip_mask))?;
        }
        self.rebuild()
    }

    fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), SteeringError> {
        self.backends.set(slot, backend, 0).map_err(map_error(LB_BACKENDS_MAP))
    }

    /// Drains (no new flows; existing flows and MPTCP connections stay) or removes the backend
    /// `name`, and rebuilds the Maglev tables.
    pub fn set_backend_state(&mut self, name: &str, state: u32) -> Result<(), SteeringError> {
        let slot = self.slot_of(name)?;
        let mut backend = self.backends.get(&slot, 0).map_err(map_error(LB_BACKENDS_MAP))?;
        backend.state = state;
        if state == backend_state::UNUSED {
            backend = Backend::default();
        }
        self.set_backend(slot, &backend)?;
        self.rebuild()
    }

    /// One backend slot's counters, summed over CPUs.
    pub fn backend_counters(&self, slot: u32) -> Result<BackendCounters, SteeringError> {
        let mut total = BackendCounters::default();
        for cpu in self.backend_counters.get(&slot, 0).map_err(map_error(LB_BACKEND_COUNTERS_MAP))?.iter() {
            total.accumulate(cpu);
        }
        Ok(total)
    }

    /// The balancer's counters, summed over CPUs.
    pub fn counters(&self) -> Result<LbCounters, SteeringError> {
        let mut total = LbCounters::default();
        for cpu in self.counters.get(&0, 0).map_err(map_error(LB_COUNTERS_MAP))?.iter() {
            total.accumulate(cpu);
        }
        Ok(total)
    }

    /// One VIP slot's Maglev table (for tests and operators).
    pub fn maglev_table(&self, vip_index: u32) -> Result<Vec<u32>, SteeringError> {
        let base = vip_index * MAGLEV_SIZE as u32;
        (0..MAGLEV_SIZE as u32)
            .map(|i| self.maglev.get(&(base + i), 0).map_err(map_error(LB_MAGLEV_MAP)))
            .collect()
    }
}

/// Loads the balancer, fills its maps from `config` and attaches it to the configured interfaces.
pub async fn start(
    instance: &Instance,
    config: &LbConfig,
    steering_override: Option<Steering>,
) -> Result<(), SteeringError> {
    check_privileges(Privilege::Attach)?;
    check_bpffs()?;
    if instance.exists() {
        return Err(SteeringError::AlreadyRunning(instance.name.clone()));
    }
    let mut links = Vec::new();
    for backend in &config.backends {
        links.push(Link::resolve(backend).await?);
    }
    let mode: XdpAttachMode = config.xdp_mode.map(Into::into).unwrap_or(XdpAttachMode::Auto);
    let guard = bpf::Claim::new(instance)?;
    let mut ebpf_loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> =
        LB_MAP_NAMES.iter().map(|name| (*name, instance.map_path(name))).collect();
    for (name, path) in &paths {
        ebpf_loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = ebpf_loader.load(BALANCER_OBJECT).map_err(LoaderError::Load)?;
    let mut maps =
        LbMaps::open(|name| ebpf.take_map(name).ok_or(SteeringError::Config(format!("map {name} missing"))))?;

    maps.configure(config, &links, steering_override)?;
    for iface in &config.interfaces {
        let dir = instance.iface_dir(iface)?;
        std::fs::create_dir_all(&dir).map_err(|source| LoaderError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        match mode.hook(iface) {
            IngressHook::Xdp(xdp_mode) => {
                let xdp: &mut Xdp = bpf::program(&mut ebpf, LB_XDP_PROGRAM)?;
                if xdp.fd().is_err() {
                    xdp.load().map_err(|source| LoaderError::Program {
                        what: "loading the balancer".into(),
                        source,
                    })?;
                }
                bpf::attach_xdp(xdp, iface, xdp_mode, &dir.join(LB_XDP_LINK))?;
            }
            IngressHook::Tc => bpf::attach_tcx(
                &mut ebpf,
                LB_TC_PROGRAM,
                iface,
                TcAttachType::Ingress,
                &dir.join(LB_TC_LINK),
            )?,
        }
    }
    guard.keep();
    Ok(())
}

/// Detaches the balancer from every interface and removes its pins.
pub fn stop(instance: &Instance) -> Result<(), SteeringError> {
    if !instance.map_path(LB_VIPS_MAP).exists() {
        return Err(SteeringError::NotRunning(instance.name.clone()));
    }
    for iface in instance.interfaces()? {
        bpf::detach(instance, &iface)?;
    }
    bpf::remove_instance(instance)?;
    Ok(())
}

/// Adds a backend to the running balancer, serving `vips` (addresses as configured).
pub async fn add_backend(
    instance: &Instance,
    backend: &BackendConfig,
    vips: &[SocketAddr],
) -> Result<(), SteeringError> {
    backend.validate()?;
    let mut maps = LbMaps::pinned(instance)?;
    if maps.slot_of(&backend.name).is_ok() {
        return Err(SteeringError::Config(format!("backend {} exists", backend.name)));
    }
    let slots = maps.backend_slots()?;
    let slot = slots
        .iter()
        .find(|(_, b)| b.state == backend_state::UNUSED)
        .map(|(slot, _)| *slot)
        .ok_or_else(|| SteeringError::Config(format!("all {MAX_BACKENDS} backend slots are used")))?;
    let mut vip_mask = 0u32;
    for address in vips {
        let vip = maps
            .vips
            .get(&vip_key(*address), 0)
            .map_err(|_| SteeringError::Config(format!("no VIP {address}")))?;
        vip_mask |= 1 << vip.index;
    }
    let link = Link::resolve(backend).await?;
    maps.set_backend(slot, &backend_entry(backend, &link, vip_mask))?;
    maps.rebuild()
}

/// Drains (no new flows; existing flows and MPTCP connections stay) or removes a backend.
pub fn set_backend_state(instance: &Instance, name: &str, state: u32) -> Result<(), SteeringError> {
    LbMaps::pinned(instance)?.set_backend_state(name, state)
}

/// The balancer's statistics.
#[derive(Debug, Serialize)]
pub struct LbStats {
    #[serde(serialize_with = "lb_counters_by_name")]
    pub counters: LbCounters,
    pub vips: Vec<VipStats>,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Serialize)]
pub struct VipStats {
    pub address: SocketAddr,
    pub steering: Steering,
    /// SHA-256 (first 8 bytes, hex) of the Maglev table by backend name: balancer instances
    /// with equal digests place new flows alike.
    pub maglev_digest: String,
}

#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub name: String,
    pub address: IpAddr,
    pub state: &'static str,
    pub mac: String,
    pub weight: u32,
    /// Share of its VIPs' Maglev entries, in percent.
    pub maglev_share: f64,
    #[serde(flatten, serialize_with = "backend_counters_by_name")]
    pub counters: BackendCounters,
}

/// Counters go out as name -> value, the names bpftool prints; the code reads the fields.
fn lb_counters_by_name<S: serde::Serializer>(
    counters: &LbCounters,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(LB_COUNTER_NAMES.into_iter().zip(counters.values()))
}

fn backend_counters_by_name<S: serde::Serializer>(
    counters: &BackendCounters,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(BACKEND_COUNTER_NAMES.into_iter().zip(counters.values()))
}

pub fn stats(instance: &Instance) -> Result<LbStats, SteeringError> {
    let maps = LbMaps::pinned(instance)?;
    let total = maps.counters()?;
    let mut vips: Vec<(VipKey, Vip)> = bpf_maps::entries(&maps.vips).map_err(map_error(LB_VIPS_MAP))?;
    vips.sort_by_key(|(_, vip)| vip.index);
    let tables: Vec<Vec<u32>> =
        vips.iter().map(|(_, v)| maps.maglev_table(v.index)).collect::<Result<_, _>>()?;
    let slots = maps.backend_slots()?;
    let names: BTreeMap<u32, String> = slots.iter().map(|(slot, b)| (*slot, name_of(b))).collect();
    let vips = vips
        .iter()
        .zip(&tables)
        .map(|((key, vip), table)| VipStats {
            address: vip_address(key),
            steering: if vip.steering == steering::HASH_ONLY { Steering::HashOnly } else { Steering::Token },
            maglev_digest: table_digest(table, &names),
        })
        .collect();
    let mut backends = Vec::new();
    for (slot, backend) in slots {
        if backend.state == backend_state::UNUSED {
            continue;
        }
        let counters = maps.backend_counters(slot)?;
        let owned: usize = tables.iter().map(|t| t.iter().filter(|&&e| e == slot).count()).sum();
        let entries = tables.len().max(1) * MAGLEV_SIZE;
        let ip = std::net::Ipv6Addr::from(backend.addr);
        backends.push(BackendStats {
            name: name_of(&backend),
            address: ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4),
            state: if backend.state == backend_state::DRAINING { "draining" } else { "active" },
            mac: format_mac(&backend.mac),
            weight: backend.weight,
            maglev_share: 100.0 * owned as f64 / entries as f64,
            counters,
        });
    }
    Ok(LbStats { counters: total, vips, backends })
}

fn vip_address(key: &VipKey) -> SocketAddr {
    let ip = std::net::Ipv6Addr::from(key.addr);
    let ip =
        if key.family == 4 { ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4) } else { IpAddr::V6(ip) };
    SocketAddr::new(ip, key.port)
}

fn table_digest(table: &[u32], names: &BTreeMap<u32, String>) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for slot in table {
        hasher.update(names.get(slot).map_or("-", String::as_str));
        hasher.update([0]);
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A table of the statistics for humans.
pub fn stats_table(stats: &LbStats) -> String {
    let mut out = String::new();
    for (name, value) in LB_COUNTER_NAMES.into_iter().zip(stats.counters.values()) {
        out.push_str(&format!("{name:<24} {value:>12}\n"));
    }
    out.push_str(&format!("\n{:<46} {:<10} {:<16}\n", "vip", "steering", "maglev-digest"));
    for vip in &stats.vips {
        let steering = if vip.steering == Steering::Token { "token" } else { "hash-only" };
        out.push_str(&format!(
            "{:<46} {:<10} {:<16}\n",
            vip.address.to_string(),
            steering,
            vip.maglev_digest
        ));
    }
    out.push_str(&format!(
        "\n{:<16} {:<40} {:<9} {:>7} {:>10} {:>12} {:>9} {:>12}\n",
        "backend", "address", "state", "maglev%", "plain", "connections", "subflows", "packets"
    ));
    for b in &stats.backends {
        out.push_str(&format!(
            "{:<16} {:<40} {:<9} {:>7.1} {:>10} {:>12} {:>9} {:>12}\n",
            b.name,
            b.address.to_string(),
            b.state,
            b.maglev_share,
            b.counters.plain_flows,
            b.counters.connections,
            b.counters.subflows,
            b.counters.packets
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_names_every_counter() {
        let stats = LbStats {
            counters: LbCounters { tokens_learned: 7, ..LbCounters::default() },
            vips: Vec::new(),
            backends: vec![BackendStats {
                name: "b1".into(),
                address: "203.0.113.1".parse().unwrap(),
                state: "active",
                mac: "02:00:00:00:00:01".into(),
                weight: 1,
                maglev_share: 100.0,
                counters: BackendCounters { subflows: 3, ..BackendCounters::default() },
            }],
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["counters"].as_object().unwrap().len(), LB_COUNTER_NAMES.len());
        assert_eq!(json["counters"]["tokens_learned"], 7);
        assert_eq!(json["backends"][0]["subflows"], 3);
        assert_eq!(json["backends"][0]["plain_flows"], 0);
        assert_eq!(json["backends"][0]["name"], "b1");
    }

    const GOOD: &str = r#"
interfaces = ["eth0"]

[[vip]]
address = "203.0.113.200:80"
backends = ["b1", "b2"]

[[vip]]
address = "[2001:db8:ff::10]:443"
steering = "hash-only"
backends = ["b2"]

[[backend]]
name = "b1"
address = "203.0.113.1"
interface = "eth1"
mac = "02:00:00:00:00:01"

[[backend]]
name = "b2"
address = "2001:db8:3::1"
interface = "eth1"
weight = 3
"#;

    fn error(text: &str) -> String {
        match LbConfig::parse(text, "lb.toml") {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(error) => format!("{error}"),
        }
    }

    #[test]
    fn a_full_configuration_parses_with_defaults() {
        let config = LbConfig::parse(GOOD, "lb.toml").expect("valid");
        assert_eq!(config.vips[0].steering, Steering::Token);
        assert_eq!(config.vips[1].steering, Steering::HashOnly);
        assert_eq!(config.backends[0].weight, 1);
        assert_eq!(
            parse_mac(config.backends[0].mac.as_deref().unwrap_or_default()),
            Some([2, 0, 0, 0, 0, 1])
        );
        assert_eq!(vip_key(config.vips[1].address).family, 6);
        assert_eq!(vip_address(&vip_key(config.vips[0].address)), config.vips[0].address);
    }

    #[test]
    fn bad_configurations_name_what_is_wrong() {
        assert!(error(&GOOD.replace("weight = 3", "wieght = 3")).contains("wieght"));
        assert!(error(&GOOD.replace("weight = 3", "weight = 0")).contains("`weight` 0"));
        assert!(error(&GOOD.replace("\"b1\", \"b2\"]", "\"b1\", \"b9\"]")).contains("no backend named b9"));
        assert!(error(&GOOD.replace("02:00:00:00:00:01", "02:00:00:00:01")).contains("`mac`"));
        assert!(error(&GOOD.replace("name = \"b2\"", "name = \"b1\"")).contains("defined twice"));
        assert!(
            error(&GOOD.replace("[2001:db8:ff::10]:443", "203.0.113.200:80"))
                .contains("vip 203.0.113.200:80 is defined twice")
        );
        assert!(error(&GOOD.replace("interfaces = [\"eth0\"]", "interfaces = []")).contains("`interfaces`"));
        assert!(
            error(&GOOD.replace("name = \"b1\"", "name = \"a-very-long-backend-name\""))
                .contains("1 to 15 bytes")
        );
    }
}
