//! The balancer's pinned maps and how the configuration fills them (VIPs, backend slots,
//! Maglev tables).

use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use mptcp_common::{
    lb::{
        Backend, BackendCounters, JoinAddrKey, LB_BACKEND_COUNTERS_MAP, LB_BACKENDS_MAP, LB_COLLISIONS_MAP,
        LB_COUNTERS_MAP, LB_FLOWS_MAP, LB_HALF_OPEN_MAP, LB_JOIN_ADDRS_MAP, LB_MAGLEV_MAP, LB_SETTINGS_MAP,
        LB_TOKENS_MAP, LB_UNKNOWN_TOKENS_MAP, LB_VIPS_MAP, LbCollision, LbCounters, LbFlow, LbSettings,
        LbToken, MAGLEV_SIZE, MAX_BACKENDS, NO_BACKEND, TokenLearn, Vip, VipKey, backend_state, token_learn,
        token_origin,
    },
    maps::{FlowKey, addr_bytes, ipv4_mapped},
};

use super::*;
use crate::bpf::{Instance, Privilege, check_privileges};

/// The update flag of linux/bpf.h that inserts only absent keys (neither libc nor aya exports it).
const BPF_NOEXIST: u64 = 1;

/// A backend's map entry, active.
pub(super) fn backend_entry(backend: &BackendConfig, link: &Link, vip_mask: u32) -> Backend {
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

pub(super) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub(super) fn addr_of(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => (addr_bytes(ipv4_mapped(v4.octets())), 4),
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

pub(super) fn vip_key(address: SocketAddr) -> VipKey {
    let (addr, family) = addr_of(address.ip());
    VipKey { addr, port: address.port(), family, _pad: [0; 5] }
}

pub(super) fn name_bytes(name: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (dst, src) in bytes.iter_mut().zip(name.bytes()) {
        *dst = src;
    }
    bytes
}

pub(super) fn name_of(backend: &Backend) -> String {
    let end = backend.name.iter().position(|&b| b == 0).unwrap_or(backend.name.len());
    String::from_utf8_lossy(&backend.name[..end]).into_owned()
}

/// The balancer's pinned maps.
pub struct LbMaps {
    pub(super) vips: HashMap<MapData, VipKey, Vip>,
    pub(super) backends: Array<MapData, Backend>,
    pub(super) maglev: Array<MapData, u32>,
    pub(super) counters: PerCpuArray<MapData, LbCounters>,
    pub(super) backend_counters: PerCpuArray<MapData, BackendCounters>,
    /// The program's tables, public for the program fixtures: confirmed flows.
    pub flows: HashMap<MapData, FlowKey, LbFlow>,
    /// Flows seen only by their SYN.
    pub half_open: HashMap<MapData, FlowKey, LbFlow>,
    /// Server token -> owner.
    pub tokens: HashMap<MapData, u32, LbToken>,
    /// The running balancer's settings (one entry).
    pub settings: Array<MapData, LbSettings>,
    /// Join address -> backend slot.
    pub join_addrs: HashMap<MapData, JoinAddrKey, u32>,
    /// Tokens refused for a second backend.
    pub collisions: HashMap<MapData, u32, LbCollision>,
    /// Tokens joins named before this instance knew them -> when first named.
    pub unknown_tokens: HashMap<MapData, u32, u64>,
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
            flows: HashMap::try_from(open(LB_FLOWS_MAP)?).map_err(map_error(LB_FLOWS_MAP))?,
            half_open: HashMap::try_from(open(LB_HALF_OPEN_MAP)?).map_err(map_error(LB_HALF_OPEN_MAP))?,
            tokens: HashMap::try_from(open(LB_TOKENS_MAP)?).map_err(map_error(LB_TOKENS_MAP))?,
            settings: Array::try_from(open(LB_SETTINGS_MAP)?).map_err(map_error(LB_SETTINGS_MAP))?,
            join_addrs: HashMap::try_from(open(LB_JOIN_ADDRS_MAP)?).map_err(map_error(LB_JOIN_ADDRS_MAP))?,
            collisions: HashMap::try_from(open(LB_COLLISIONS_MAP)?).map_err(map_error(LB_COLLISIONS_MAP))?,
            unknown_tokens: HashMap::try_from(open(LB_UNKNOWN_TOKENS_MAP)?)
                .map_err(map_error(LB_UNKNOWN_TOKENS_MAP))?,
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

    pub(super) fn backend_slots(&self) -> Result<Vec<(u32, Backend)>, SteeringError> {
        (0..MAX_BACKENDS as u32)
            .map(|slot| Ok((slot, self.backends.get(&slot, 0).map_err(map_error(LB_BACKENDS_MAP))?)))
            .collect()
    }

    pub(super) fn slot_of(&self, name: &str) -> Result<u32, SteeringError> {
        self.backend_slots()?
            .into_iter()
            .find(|(_, b)| b.state != backend_state::UNUSED && name_of(b) == name)
            .map(|(slot, _)| slot)
            .ok_or_else(|| SteeringError::NoSuchBackend(name.to_owned()))
    }

    /// Rebuilds the Maglev table of every VIP from the active backends serving it.
    pub(super) fn rebuild(&mut self) -> Result<(), SteeringError> {
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
            self.set_join_addresses(slot as u32, &backend.join_addresses)?;
        }
        let settings = LbSettings {
            learn_rate: config.joins.learn_rate,
            learn_burst: config.joins.learn_burst,
            unknown_token: config.joins.unknown_token.code(),
            sync: u32::from(config.sync.is_some()),
        };
        self.settings.set(0, settings, 0).map_err(map_error(LB_SETTINGS_MAP))?;
        self.rebuild()
    }

    pub(super) fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), SteeringError> {
        self.backends.set(slot, backend, 0).map_err(map_error(LB_BACKENDS_MAP))
    }

    /// Points `addresses` at backend `slot`.
    pub fn set_join_addresses(&mut self, slot: u32, addresses: &[IpAddr]) -> Result<(), SteeringError> {
        for address in addresses {
            let key = JoinAddrKey { addr: addr_of(*address).0 };
            if let Ok(owner) = self.join_addrs.get(&key, 0)
                && owner != slot
            {
                return Err(SteeringError::Config(format!(
                    "join address {address} belongs to another backend"
                )));
            }
            self.join_addrs.insert(key, slot, 0).map_err(map_error(LB_JOIN_ADDRS_MAP))?;
        }
        Ok(())
    }

    /// Join addresses by backend slot.
    pub fn join_addresses(&self) -> Result<Vec<(IpAddr, u32)>, SteeringError> {
        let entries: Vec<(JoinAddrKey, u32)> =
            crate::bpf::maps::entries(&self.join_addrs).map_err(map_error(LB_JOIN_ADDRS_MAP))?;
        Ok(entries
            .into_iter()
            .map(|(key, slot)| (std::net::Ipv6Addr::from(key.addr).to_canonical(), slot))
            .collect())
    }

    /// The slot's state (UNUSED for a slot out of range).
    fn slot_live(&self, slot: u32) -> bool {
        self.backends.get(&slot, 0).is_ok_and(|b| b.state != backend_state::UNUSED)
    }

    /// Stores a token a peer learned for backend `slot`, by the rule the program follows for
    /// its own learns ([`token_learn`]); a collision is recorded as the program records one.
    pub fn store_synced_token(
        &mut self,
        token: u32,
        slot: u32,
        now_ns: u64,
    ) -> Result<TokenLearn, SteeringError> {
        let existing = self.tokens.get(&token, 0).ok().map(|t| (t.backend, self.slot_live(t.backend)));
        let outcome = token_learn(existing, slot);
        match outcome {
            TokenLearn::Collision => {
                let kept = existing.map_or(NO_BACKEND, |(owner, _)| owner);
                let count = self.collisions.get(&token, 0).map_or(0, |c| c.count);
                let collision = LbCollision {
                    kept,
                    refused: slot,
                    refused_origin: token_origin::SYNCED,
                    count: count.saturating_add(1),
                    last_ns: now_ns,
                };
                self.collisions.insert(token, collision, 0).map_err(map_error(LB_COLLISIONS_MAP))?;
            }
            _ => {
                let entry = LbToken { backend: slot, origin: token_origin::SYNCED, stored_ns: now_ns };
                self.tokens.insert(token, entry, 0).map_err(map_error(LB_TOKENS_MAP))?;
            }
        }
        Ok(outcome)
    }

    /// Records a flow a peer confirmed, unless this instance holds it already; true if stored.
    pub fn store_synced_flow(&mut self, key: &FlowKey, flow: &LbFlow) -> Result<bool, SteeringError> {
        if self.flows.get(key, 0).is_ok() {
            return Ok(false);
        }
        // A packet of the flow may have recorded it here meanwhile: insert only if absent.
        match self.flows.insert(key, flow, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(error)) if error.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(source) => Err(SteeringError::Map { name: LB_FLOWS_MAP, source }),
        }
    }

    /// When a join first named `token` before this instance knew it (a join that beat the sync).
    pub fn unknown_since(&self, token: u32) -> Option<u64> {
        self.unknown_tokens.get(&token, 0).ok()
    }

    /// Drains (no new flows; existing flows and MPTCP connections stay) or removes the backend
    /// `name`, and rebuilds the Maglev tables.
    pub fn set_backend_state(&mut self, name: &str, state: u32) -> Result<(), SteeringError> {
        let slot = self.slot_of(name)?;
        let mut backend = self.backends.get(&slot, 0).map_err(map_error(LB_BACKENDS_MAP))?;
        backend.state = state;
        if state == backend_state::UNUSED {
            backend = Backend::default();
            let joins: Vec<JoinAddrKey> = crate::bpf::maps::entries(&self.join_addrs)
                .map_err(map_error(LB_JOIN_ADDRS_MAP))?
                .into_iter()
                .filter(|(_, owner)| *owner == slot)
                .map(|(key, _)| key)
                .collect();
            for key in joins {
                self.join_addrs.remove(&key).map_err(map_error(LB_JOIN_ADDRS_MAP))?;
            }
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
