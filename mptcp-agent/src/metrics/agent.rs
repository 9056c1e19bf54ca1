//! The tracker instance's metrics: per interface and direction the programs' counters (as
//! `stats --json` reads them), the tables' sizes against their capacity, HMAC verdicts and key
//! checks of what the tables hold, path state (`paths.json`), congestion control, and, when
//! asked for, a bounded number of per-connection series.

use std::collections::BTreeMap;

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError, MapInfo},
};
use mptcp_common::maps::{
    CONNECTIONS_MAP, Connection, ConnectionChecks, Direction, FlowKey, HALF_OPEN_SUBFLOWS_MAP,
    HMAC_VERDICTS_MAP, PACKET_COUNTER_NAMES, SUBFLOWS_MAP, Subflow, subflow_kind,
};

use super::{Families, Kind, MetricsError};
use crate::{
    bpf::{Instance, LoaderError},
    cc::{self, SubflowCc},
    dataplane::{
        stats::{self, InterfaceCounters},
        tables::{self, TableError, Tables, Token, map_error},
    },
    labels,
    paths::{ConnectionState, PathState, state_path},
};

/// What a scrape of the tracker includes beyond the bounded series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// Per-connection series for at most this many connections (the oldest first); 0: none.
    pub connections: usize,
}

/// Where one of the programs' counters goes: its metric (without `_total`), its help, and the
/// label that tells it from the others of that metric.
fn packet_metric(
    counter: &'static str,
) -> (&'static str, &'static str, Option<(&'static str, &'static str)>) {
    match counter {
        "tcp_packets" => ("mptcp_tcp_packets", "TCP segments over IPv4 or IPv6.", None),
        "tcp_without_mptcp" => {
            ("mptcp_tcp_packets_without_mptcp", "TCP segments without any MPTCP option.", None)
        }
        "malformed" => (
            "mptcp_malformed_options",
            "Malformed option framing, or MPTCP options of a length their subtype does not allow.",
            None,
        ),
        "joins_admitted" => {
            ("mptcp_admission_joins_admitted", "MP_JOIN SYNs let through by the admission policy.", None)
        }
        "joins_dropped_unknown_token" => (
            "mptcp_admission_dropped_packets",
            "Packets the admission policy dropped, by reason.",
            Some(("reason", "unknown_token")),
        ),
        "joins_dropped_rate_limit" => (
            "mptcp_admission_dropped_packets",
            "Packets the admission policy dropped, by reason.",
            Some(("reason", "rate_limit")),
        ),
        "packets_dropped_hmac" => (
            "mptcp_admission_dropped_packets",
            "Packets the admission policy dropped, by reason.",
            Some(("reason", "hmac_failed")),
        ),
        "events_dropped" => {
            ("mptcp_ring_events_dropped", "Events lost because the ring buffer was full.", None)
        }
        "mp_capable" | "mp_join" | "dss" | "add_addr" | "remove_addr" | "mp_prio" | "mp_fail"
        | "mp_fastclose" | "mp_tcprst" | "mp_experimental" | "mp_unknown" => {
            ("mptcp_options", "MPTCP options seen, by subtype.", Some(("subtype", counter)))
        }
        "subflows_created" => ("mptcp_subflows_created", "Subflow entries created.", None),
        "connections_created" => ("mptcp_connections_created", "Connection entries created.", None),
        "table_errors" => ("mptcp_table_errors", "Table inserts the kernel refused.", None),
        "half_open_created" => {
            ("mptcp_half_open_created", "SYN-ACK server keys recorded in HALF_OPEN.", None)
        }
        "half_open_evicted" => {
            ("mptcp_half_open_evicted", "Third ACKs whose SYN-ACK's HALF_OPEN entry was evicted.", None)
        }
        "half_open_key_mismatch" => {
            ("mptcp_half_open_key_mismatch", "Third ACKs whose server key differs from the SYN-ACK's.", None)
        }
        "half_open_subflows_created" => {
            ("mptcp_half_open_subflows_created", "Subflow entries created by a SYN or SYN-ACK.", None)
        }
        "subflows_established" => (
            "mptcp_subflows_established",
            "Subflows moved to SUBFLOWS by the client's ACK of the SYN-ACK.",
            None,
        ),
        "connections_missing" => {
            ("mptcp_connections_missing", "Packets whose subflow names a connection no longer held.", None)
        }
        _ => (
            "mptcp_dataplane_counter",
            "Dataplane counters without a metric of their own, by name.",
            Some(("counter", counter)),
        ),
    }
}

/// The programs' counters of each interface, per direction.
pub fn counter_families(families: &mut Families, interfaces: &[(String, InterfaceCounters)]) {
    for (iface, counters) in interfaces {
        for direction in Direction::ALL {
            let values = counters.direction(direction).values();
            for (counter, value) in PACKET_COUNTER_NAMES.iter().zip(values) {
                let (name, help, label) = packet_metric(counter);
                let mut labels = labels!("iface" => iface, "direction" => direction.name());
                labels.extend(label.map(|(key, value)| (key, value.to_owned())));
                families.counter(name, help, labels, value);
            }
        }
    }
}

/// A table's size against its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableUsage {
    pub table: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

pub fn table_families(families: &mut Families, usage: &[TableUsage]) {
    for table in usage {
        families.count(
            "mptcp_table_entries",
            "Entries in a tracking table.",
            labels!("table" => table.table),
            table.entries,
        );
        families.count(
            "mptcp_table_max_entries",
            "Capacity of a tracking table (LRU tables evict beyond it).",
            labels!("table" => table.table),
            table.max_entries,
        );
    }
}

/// Subflows by state and HMAC verdict, connections, the agent's checks, as the tables hold them
/// (`connections` oldest first: the per-connection series are for the oldest).
pub fn tracked_families(
    families: &mut Families,
    subflows: &[(FlowKey, Subflow)],
    connections: &[(Connection, ConnectionChecks)],
    per_connection: usize,
) {
    let mut by_state: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut verdicts: BTreeMap<&str, u64> =
        ["unknown", "pending", "verified", "failed"].map(|v| (v, 0)).into();
    for (_, subflow) in subflows {
        let kind = tables::kind_name(subflow.kind);
        *by_state.entry((kind, tables::state_name(subflow.state))).or_default() += 1;
        // Only joins carry HMACs; an initial subflow's verdict stays unknown.
        if subflow.kind == subflow_kind::JOIN {
            *verdicts.entry(tables::hmac_name(subflow.hmac)).or_default() += 1;
        }
    }
    families.declare("mptcp_subflows", "Tracked subflows, by kind and state.", Kind::Gauge);
    for ((kind, state), count) in by_state {
        families.count(
            "mptcp_subflows",
            "Tracked subflows, by kind and state.",
            labels!("kind" => kind, "state" => state),
            count,
        );
    }
    for (verdict, count) in verdicts {
        families.count(
            "mptcp_hmac_verdicts",
            "HMAC verdicts of what the tables hold: MP_JOIN subflows and ADD_ADDR options checked.",
            labels!("option" => "mp_join", "verdict" => verdict),
            count,
        );
    }
    let checks = connections.iter().map(|(_, checks)| checks);
    let (mut matched, mut mismatched, mut add_verified, mut add_failed) = (0u64, 0u64, 0u64, 0u64);
    for check in checks {
        matched += u64::from(check.keys_matched);
        mismatched += u64::from(check.keys_mismatched);
        add_verified += u64::from(check.add_addr_verified);
        add_failed += u64::from(check.add_addr_failed);
    }
    let hmac = "HMAC verdicts of what the tables hold: MP_JOIN subflows and ADD_ADDR options checked.";
    families.count(
        "mptcp_hmac_verdicts",
        hmac,
        labels!("option" => "add_addr", "verdict" => "verified"),
        add_verified,
    );
    families.count(
        "mptcp_hmac_verdicts",
        hmac,
        labels!("option" => "add_addr", "verdict" => "failed"),
        add_failed,
    );
    let keys =
        "The agent's recomputation of the tokens and IDSNs the programs derived, over tracked connections.";
    families.count("mptcp_key_checks", keys, labels!("result" => "matched"), matched);
    families.count("mptcp_key_checks", keys, labels!("result" => "mismatched"), mismatched);
    families.count("mptcp_connections", "Tracked MPTCP connections.", Vec::new(), connections.len() as u64);
    // Opt-in and bounded: one series per connection and direction.
    let bytes = "Data bytes of a connection (the span of data sequence space mapped), per direction.";
    let count = "Subflows of a connection.";
    if per_connection > 0 {
        families.declare("mptcp_connection_data_bytes", bytes, Kind::Gauge);
        families.declare("mptcp_connection_subflows", count, Kind::Gauge);
    }
    for (connection, _) in connections.iter().take(per_connection) {
        let token = Token(connection.server_token);
        for (direction, value) in ["c2s", "s2c"].into_iter().zip(connection.data_bytes) {
            families.count(
                "mptcp_connection_data_bytes",
                bytes,
                labels!("token" => token, "direction" => direction),
                value,
            );
        }
        families.count(
            "mptcp_connection_subflows",
            count,
            labels!("token" => token),
            u64::from(connection.subflows),
        );
    }
}

const PATH_INTERFACE: &str = "Interfaces of the path policy, with their role.";
const PATH_PRIMARY: &str = "1 for the interface carrying the traffic (backup and single-path modes).";
const PATH_CONNECTIONS: &str = "Connections the path manager follows.";
const PATH_SUBFLOWS: &str =
    "Subflows of the connections the path manager follows: established, asked for, failed recently.";

/// The path manager's state: the policy's interfaces with their role and which is primary, and
/// the connections it follows with their subflows. Without one (no `[paths]`), the families are
/// described and empty.
pub fn path_families(families: &mut Families, state: Option<&PathState>) {
    families.declare("mptcp_path_interface", PATH_INTERFACE, Kind::Info);
    families.declare("mptcp_path_primary", PATH_PRIMARY, Kind::Gauge);
    families.declare("mptcp_path_connections", PATH_CONNECTIONS, Kind::Gauge);
    families.declare("mptcp_path_subflows", PATH_SUBFLOWS, Kind::Gauge);
    let Some(state) = state else { return };
    for interface in &state.policy.interfaces {
        let role = serde_json::to_value(interface.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        families.info(
            "mptcp_path_interface",
            PATH_INTERFACE,
            labels!("iface" => interface.name, "role" => role),
        );
        let primary = state.primary.as_deref() == Some(interface.name.as_str());
        families.count(
            "mptcp_path_primary",
            PATH_PRIMARY,
            labels!("iface" => interface.name),
            u64::from(primary),
        );
    }
    let connections = &state.connections;
    families.count("mptcp_path_connections", PATH_CONNECTIONS, Vec::new(), connections.len() as u64);
    let sum = |count: fn(&ConnectionState) -> usize| connections.iter().map(count).sum::<usize>() as u64;
    let subflows = [
        ("established", sum(|c| c.connection.subflows.len())),
        ("pending", sum(|c| c.connection.pending.len())),
        ("failed", sum(|c| c.connection.failed.len())),
    ];
    for (state, count) in subflows {
        families.count("mptcp_path_subflows", PATH_SUBFLOWS, labels!("state" => state), count);
    }
}

/// Subflows the sock_ops program follows, by the decision in force.
pub fn cc_families(families: &mut Families, subflows: &[SubflowCc]) {
    let help = "Subflows the sock_ops program follows, by algorithm and decision (fresh, stale, none).";
    families.declare("mptcp_cc_subflows", help, Kind::Gauge);
    let mut by: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for subflow in subflows {
        // `none`: the subflow has no decision (`--cc none`, or none made yet).
        let decision = match (subflow.algorithm, subflow.current) {
            ("none", _) => "none",
            (_, true) => "fresh",
            (_, false) => "stale",
        };
        *by.entry((subflow.algorithm, decision)).or_default() += 1;
    }
    for ((algorithm, decision), count) in by {
        families.count(
            "mptcp_cc_subflows",
            help,
            labels!("algorithm" => algorithm, "decision" => decision),
            count,
        );
    }
    let loss = "Loss events of the subflows under coupled congestion control (those the table holds now).";
    let losses: u64 = subflows.iter().map(|s| u64::from(s.loss_events)).sum();
    families.count("mptcp_cc_loss_events", loss, Vec::new(), losses);
    let merged = "Losses of those subflows merged into a congestion event another subflow of the connection began (no decrease).";
    let merged_losses: u64 = subflows.iter().map(|s| u64::from(s.merged_losses)).sum();
    families.count("mptcp_cc_merged_losses", merged, Vec::new(), merged_losses);
}

/// The keys of a map; one deleted while being read (an LRU eviction) is not counted, any other
/// failure is an error.
fn count_keys<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, name: &'static str) -> Result<usize, TableError> {
    let mut count = 0;
    for key in map.keys() {
        match key {
            Ok(_) => count += 1,
            Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error(name)(source)),
        }
    }
    Ok(count)
}

fn usage(instance: &Instance, table: &'static str, entries: usize) -> Result<TableUsage, MetricsError> {
    let path = instance.map_path(table);
    let info = MapInfo::from_pin(&path).map_err(|source| LoaderError::Map { path, source })?;
    Ok(TableUsage { table, entries: entries as u64, max_entries: u64::from(info.max_entries()) })
}

/// Reads everything afresh: the values equal what `stats --json`, `conns --json` and `paths`
/// read at the same moment.
pub fn read(instance: &Instance, options: AgentOptions) -> Result<Families, MetricsError> {
    let mut families = Families::default();
    let interfaces = instance
        .interfaces()?
        .into_iter()
        .map(|iface| Ok((iface.clone(), stats::read_counters(instance, &iface)?)))
        .collect::<Result<Vec<_>, MetricsError>>()?;
    counter_families(&mut families, &interfaces);
    let tables = Tables::open(|name| Ok(instance.open_map(name)?))?;
    let established = count_keys(&tables.subflows, SUBFLOWS_MAP)?;
    let half_open = count_keys(&tables.half_open_subflows, HALF_OPEN_SUBFLOWS_MAP)?;
    let verdicts = count_keys(&tables.verdicts, HMAC_VERDICTS_MAP)?;
    // Not `Snapshot::read`: the metrics need no subflow grouped under its connection, a join
    // that costs 130 ms a scrape at 10,000 connections.
    let subflows = tables.subflows()?;
    let mut connections = tables.connections()?;
    connections.sort_by_key(|(_, connection)| connection.first_seen_ns);
    let connections = connections
        .into_iter()
        .map(|(token, connection)| Ok((connection, tables.checks(token)?)))
        .collect::<Result<Vec<_>, TableError>>()?;
    let usage = [
        usage(instance, SUBFLOWS_MAP, established)?,
        usage(instance, HALF_OPEN_SUBFLOWS_MAP, half_open)?,
        usage(instance, CONNECTIONS_MAP, connections.len())?,
        usage(instance, HMAC_VERDICTS_MAP, verdicts)?,
    ];
    table_families(&mut families, &usage);
    tracked_families(&mut families, &subflows, &connections, options.connections);
    path_families(&mut families, PathState::read(&state_path(instance))?.as_ref());
    cc_families(&mut families, &cc::snapshot(instance)?);
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Value;

    #[test]
    fn every_counter_has_a_metric_of_its_own() {
        for counter in PACKET_COUNTER_NAMES {
            assert_ne!(packet_metric(counter).0, "mptcp_dataplane_counter", "{counter} has no metric");
        }
    }

    #[test]
    fn cc_subflows_are_counted_by_algorithm_and_freshness() {
        let subflow = |algorithm, increase: Option<f64>, loss_events| SubflowCc {
            token: Token(1),
            ends: ["192.0.2.1:1".parse().unwrap(), "203.0.113.1:2".parse().unwrap()],
            cwnd: 10,
            ssthresh: 20,
            srtt_us: 1000,
            coupled_cwnd: None,
            coupling: "window",
            pacing_cap: None,
            loss_events,
            merged_losses: loss_events / 2,
            total_retrans: 0,
            bytes_acked: 0,
            algorithm,
            increase,
            decrease: increase.map(|_| 0.5),
            decision_age_ms: None,
            current: increase.is_some(),
        };
        // A paced subflow's current decision is its cap: it has no increase.
        let paced = SubflowCc {
            coupling: "paced",
            pacing_cap: Some(125_000),
            increase: None,
            current: true,
            ..subflow("lia", None, 0)
        };
        let subflows = [
            subflow("lia", Some(0.1), 2),
            subflow("lia", Some(0.2), 1),
            subflow("lia", None, 0),
            subflow("none", None, 4),
            paced,
        ];
        let mut families = Families::default();
        cc_families(&mut families, &subflows);
        let text = families.openmetrics().unwrap();
        for line in [
            "mptcp_cc_subflows{algorithm=\"lia\",decision=\"fresh\"} 3\n",
            "mptcp_cc_subflows{algorithm=\"lia\",decision=\"stale\"} 1\n",
            "mptcp_cc_subflows{algorithm=\"none\",decision=\"none\"} 1\n",
            "mptcp_cc_loss_events 7\n",
            "mptcp_cc_merged_losses 3\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn counters_equal_what_stats_json_prints() {
        let mut counters = InterfaceCounters::default();
        counters.ingress.tcp_packets = 10;
        counters.ingress.dss = 4;
        counters.egress.joins_dropped_rate_limit = 2;
        counters.egress.events_dropped = 1;
        let mut families = Families::default();
        counter_families(&mut families, &[("veth0".to_owned(), counters)]);
        let json = stats::to_json("veth0", &counters);
        let mut samples = 0;
        for family in &families.0 {
            assert_eq!(family.kind, Kind::Counter);
            for sample in &family.samples {
                let label =
                    |key: &str| sample.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
                let direction = label("direction").unwrap();
                // The counter a sample came from: its metric and distinguishing label.
                let counter = PACKET_COUNTER_NAMES
                    .iter()
                    .find(|name| {
                        let (metric, _, extra) = packet_metric(name);
                        metric == family.name && extra.is_none_or(|(key, value)| label(key) == Some(value))
                    })
                    .unwrap();
                assert_eq!(sample.value, Value::Int(json[direction][counter].as_u64().unwrap()));
                samples += 1;
            }
        }
        assert_eq!(samples, 2 * PACKET_COUNTER_NAMES.len());
    }
}
