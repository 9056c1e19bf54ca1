//! Reading the per-direction packet and option counters from the pinned maps.

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use mptcp_common::maps::{COUNTERS_MAP, Direction, PACKET_COUNTER_NAMES, PacketCounters};

use crate::bpf::{Instance, LoaderError, Privilege, check_privileges};

/// The counters of one interface, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub ingress: PacketCounters,
    pub egress: PacketCounters,
}

impl InterfaceCounters {
    pub fn direction(&self, direction: Direction) -> &PacketCounters {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Reads and sums the per-CPU counters pinned for `iface`.
pub fn read_counters(instance: &Instance, iface: &str) -> Result<InterfaceCounters, LoaderError> {
    check_privileges(Privilege::ReadMaps)?;
    let path = instance.iface_dir(iface)?.join(COUNTERS_MAP);
    let map = instance.open_counters(iface)?;
    sum_counters(&map).map_err(|source| LoaderError::Map { path, source })
}

/// Sums the per-CPU copies of a counters map, per direction.
pub fn sum_counters(map: &Map) -> Result<InterfaceCounters, MapError> {
    let array: PerCpuArray<&MapData, PacketCounters> = PerCpuArray::try_from(map)?;
    let mut counters = InterfaceCounters::default();
    for direction in Direction::ALL {
        let per_cpu = array.get(&direction.index(), 0)?;
        let total = match direction {
            Direction::Ingress => &mut counters.ingress,
            Direction::Egress => &mut counters.egress,
        };
        per_cpu.iter().for_each(|cpu| total.accumulate(cpu));
    }
    Ok(counters)
}

/// `{"interface":..,"ingress":{"tcp_packets":..,..},"egress":{..}}`
pub fn to_json(iface: &str, counters: &InterfaceCounters) -> serde_json::Value {
    let direction = |c: &PacketCounters| {
        PACKET_COUNTER_NAMES
            .iter()
            .zip(c.values())
            .map(|(name, value)| ((*name).to_owned(), serde_json::Value::from(value)))
            .collect::<serde_json::Map<_, _>>()
    };
    serde_json::json!({
        "interface": iface,
        "ingress": direction(&counters.ingress),
        "egress": direction(&counters.egress),
    })
}

/// A two-column table, one row per counter.
pub fn to_table(iface: &str, counters: &InterfaceCounters) -> String {
    let mut out = format!("{:<28} {:>14} {:>14}\n", format!("[{iface}]"), "ingress", "egress");
    for ((name, ingress), egress) in
        PACKET_COUNTER_NAMES.iter().zip(counters.ingress.values()).zip(counters.egress.values())
    {
        out.push_str(&format!("{name:<28} {ingress:>14} {egress:>14}\n"));
    }
    out
}
