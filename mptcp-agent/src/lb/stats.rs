//! The balancer's statistics: counters summed over CPUs, per VIP and per backend, with the
//! Maglev digests that tell whether instances place flows alike.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use mptcp_common::lb::{
    BACKEND_COUNTER_NAMES, BackendCounters, LB_COLLISIONS_MAP, LB_COUNTER_NAMES, LB_VIPS_MAP, LbCollision,
    LbCounters, MAGLEV_SIZE, Vip, VipKey, backend_state, steering, token_origin,
};
use serde::Serialize;

use super::*;
use crate::{bpf::Instance, bpf::maps as bpf_maps};

/// The balancer's statistics.
#[derive(Debug, Serialize)]
pub struct LbStats {
    #[serde(serialize_with = "lb_counters_by_name")]
    pub counters: LbCounters,
    pub vips: Vec<VipStats>,
    pub backends: Vec<BackendStats>,
    /// Tokens refused for a second backend (the most recent, up to the table's size).
    pub collisions: Vec<CollisionStats>,
    /// The sync daemon's last state, when one wrote it.
    pub sync: Option<sync::SyncState>,
}

/// A token two backends claimed: who keeps it, who was refused (see `TokenLearn`).
#[derive(Debug, Serialize)]
pub struct CollisionStats {
    pub token: u32,
    pub kept: String,
    pub refused: String,
    /// `learned` (a third ACK here) or `synced` (from a peer).
    pub refused_origin: &'static str,
    pub count: u32,
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
    /// Addresses clients join it at, forwarded to it from configuration alone.
    pub join_addresses: Vec<IpAddr>,
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

/// The balancer's statistics, with the sync daemon's state from `sync_dir` if it has one.
pub fn stats(instance: &Instance, sync_dir: &std::path::Path) -> Result<LbStats, SteeringError> {
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
    let join_addresses = maps.join_addresses()?;
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
            join_addresses: join_addresses.iter().filter(|(_, s)| *s == slot).map(|(a, _)| *a).collect(),
            counters,
        });
    }
    let name = |slot: u32| {
        names.get(&slot).filter(|n| !n.is_empty()).cloned().unwrap_or(format!("slot {slot} (removed)"))
    };
    let mut collisions: Vec<(u32, LbCollision)> =
        bpf_maps::entries(&maps.collisions).map_err(map_error(LB_COLLISIONS_MAP))?;
    collisions.sort_by_key(|(_, c)| std::cmp::Reverse(c.last_ns));
    let collisions = collisions
        .into_iter()
        .map(|(token, c)| CollisionStats {
            token,
            kept: name(c.kept),
            refused: name(c.refused),
            refused_origin: if c.refused_origin == token_origin::SYNCED { "synced" } else { "learned" },
            count: c.count,
        })
        .collect();
    // A state file that does not parse is reported, not hidden behind the map statistics.
    let sync = sync::SyncState::read(sync_dir)
        .map_err(|error| SteeringError::Config(format!("sync state: {}", crate::report::Chain(&error))))?;
    Ok(LbStats { counters: total, vips, backends, collisions, sync })
}

pub(super) fn vip_address(key: &VipKey) -> SocketAddr {
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
                join_addresses: vec!["203.0.113.129".parse().unwrap()],
                counters: BackendCounters { subflows: 3, ..BackendCounters::default() },
            }],
            collisions: vec![CollisionStats {
                token: 0xdead_beef,
                kept: "b1".into(),
                refused: "b2".into(),
                refused_origin: "learned",
                count: 2,
            }],
            sync: None,
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["counters"].as_object().unwrap().len(), LB_COUNTER_NAMES.len());
        assert_eq!(json["counters"]["tokens_learned"], 7);
        assert_eq!(json["backends"][0]["subflows"], 3);
        assert_eq!(json["backends"][0]["plain_flows"], 0);
        assert_eq!(json["backends"][0]["name"], "b1");
        assert_eq!(json["backends"][0]["join_addresses"][0], "203.0.113.129");
        assert_eq!(json["collisions"][0]["kept"], "b1");
        assert_eq!(json["collisions"][0]["refused"], "b2");
    }
}
