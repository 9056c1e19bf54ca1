//! The balancer's metrics, from the statistics `lb stats` reads: its counters, per VIP (steering,
//! Maglev digest) and per backend, and its sync daemon's counters, overall and per peer.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use mptcp_common::lb::{BACKEND_COUNTER_NAMES, LB_COUNTER_NAMES};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use super::{Families, Kind, ListenAddr, MetricsError, server};
use crate::{
    bpf::Instance,
    labels,
    lb::{
        self, LbStats,
        sync::{SyncCounters, SyncState, wire::Summary},
    },
    report::Chain,
};

/// Reads the pinned maps and the sync daemon's state in `state_dir` afresh.
pub fn read(instance: &Instance, state_dir: &Path) -> Result<Families, MetricsError> {
    Ok(families(&lb::stats(instance, state_dir)?))
}

/// The integer fields of a serialised struct, by name (nested structs left out): the sync
/// counters are named by their serde fields, the names `lb stats --json` prints.
fn integer_fields<T: serde::Serialize>(value: &T) -> Vec<(String, u64)> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(fields)) => {
            fields.into_iter().filter_map(|(name, value)| value.as_u64().map(|value| (name, value))).collect()
        }
        _ => Vec::new(),
    }
}

const VIP: &str = "A VIP and how it steers joins.";
const MAGLEV: &str = "A VIP's Maglev table digest: instances with equal digests place new flows alike.";
const BACKEND_COUNTER: &str = "Backend counter (see `lb stats`).";
const BACKEND: &str = "A backend, its address and state (active or draining).";
const WEIGHT: &str = "A backend's Maglev weight.";
const SHARE: &str = "A backend's share of its VIPs' Maglev entries (0 to 1).";

pub fn families(stats: &LbStats) -> Families {
    let mut families = Families::default();
    for (name, value) in LB_COUNTER_NAMES.iter().zip(stats.counters.values()) {
        // One family per counter: they count different things (packets, flows, tokens).
        families.counter(
            &format!("mptcp_lb_{name}"),
            "Balancer counter (see `lb stats`).",
            Vec::new(),
            value,
        );
    }
    families.declare("mptcp_lb_vip", VIP, Kind::Info);
    families.declare("mptcp_lb_maglev", MAGLEV, Kind::Info);
    for vip in &stats.vips {
        let steering = serde_json::to_value(vip.steering)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        families.info(
            "mptcp_lb_vip",
            "A VIP and how it steers joins.",
            labels!("vip" => vip.address, "steering" => steering),
        );
        families.info(
            "mptcp_lb_maglev",
            MAGLEV,
            labels!("vip" => vip.address, "digest" => vip.maglev_digest),
        );
    }
    for counter in BACKEND_COUNTER_NAMES {
        families.declare(&format!("mptcp_lb_backend_{counter}"), BACKEND_COUNTER, Kind::Counter);
    }
    families.declare("mptcp_lb_backend", BACKEND, Kind::Info);
    families.declare("mptcp_lb_backend_weight", WEIGHT, Kind::Gauge);
    families.declare("mptcp_lb_backend_maglev_share_ratio", SHARE, Kind::Gauge);
    for backend in &stats.backends {
        let name = || labels!("backend" => backend.name);
        for (counter, value) in BACKEND_COUNTER_NAMES.iter().zip(backend.counters.values()) {
            families.counter(
                &format!("mptcp_lb_backend_{counter}"),
                "Backend counter (see `lb stats`).",
                name(),
                value,
            );
        }
        families.info(
            "mptcp_lb_backend",
            BACKEND,
            labels!("backend" => backend.name, "address" => backend.address, "state" => backend.state),
        );
        families.count(
            "mptcp_lb_backend_weight",
            "A backend's Maglev weight.",
            name(),
            u64::from(backend.weight),
        );
        families.gauge(
            "mptcp_lb_backend_maglev_share_ratio",
            "A backend's share of its VIPs' Maglev entries (0 to 1).",
            name(),
            backend.maglev_share / 100.0,
        );
    }
    families.count(
        "mptcp_lb_collision_entries",
        "Tokens refused for a second backend that the collision table holds.",
        Vec::new(),
        stats.collisions.len() as u64,
    );
    sync_families(&mut families, stats.sync.as_ref());
    families
}

const SYNC_COUNTER: &str = "Sync daemon counter (see `lb stats`).";
const PEER: &str = "A sync peer: its address and the name its heartbeats give.";
const PEER_UP: &str = "1 when the peer was heard within 3 s.";
const PEER_HEARD: &str = "Seconds since the peer's last heartbeat.";
const PEER_COUNTER: &str = "A peer's counter, from its last heartbeat.";

/// A heartbeat's counters by name: the balancer's, then its sync daemon's under `sync_`.
fn heartbeat_fields(summary: &Summary) -> Vec<(String, u64)> {
    let sync = integer_fields(&summary.sync).into_iter().map(|(name, value)| (format!("sync_{name}"), value));
    integer_fields(summary).into_iter().chain(sync).collect()
}

/// The sync daemon's families; without a state file (no `lb sync` here) described and empty.
fn sync_families(families: &mut Families, sync: Option<&SyncState>) {
    families.count(
        "mptcp_lb_sync_running",
        "1 while the sync daemon runs (its state file says so).",
        Vec::new(),
        u64::from(sync.is_some_and(|s| s.running)),
    );
    for (name, _) in integer_fields(&SyncCounters::default()) {
        families.declare(&format!("mptcp_lb_sync_{name}"), SYNC_COUNTER, Kind::Counter);
    }
    families.declare("mptcp_lb_sync_peer", PEER, Kind::Info);
    families.declare("mptcp_lb_sync_peer_up", PEER_UP, Kind::Gauge);
    families.declare("mptcp_lb_sync_peer_last_heard_seconds", PEER_HEARD, Kind::Gauge);
    for (name, _) in heartbeat_fields(&Summary::default()) {
        families.declare(&format!("mptcp_lb_sync_peer_{name}"), PEER_COUNTER, Kind::Counter);
    }
    let Some(sync) = sync else { return };
    for (name, value) in integer_fields(&sync.counters) {
        families.counter(&format!("mptcp_lb_sync_{name}"), SYNC_COUNTER, Vec::new(), value);
    }
    for peer in &sync.peers {
        let address = || labels!("peer" => peer.address);
        let name = peer.name.as_deref().unwrap_or("");
        families.info("mptcp_lb_sync_peer", PEER, labels!("peer" => peer.address, "name" => name));
        families.count("mptcp_lb_sync_peer_up", PEER_UP, address(), u64::from(peer.up));
        if let Some(ms) = peer.ms_since_heard {
            families.gauge(
                "mptcp_lb_sync_peer_last_heard_seconds",
                PEER_HEARD,
                address(),
                ms as f64 / 1000.0,
            );
        }
        let Some(summary) = &peer.counters else { continue };
        for (name, value) in heartbeat_fields(summary) {
            families.counter(&format!("mptcp_lb_sync_peer_{name}"), PEER_COUNTER, address(), value);
        }
    }
}

/// `lb metrics`: serves the balancer's metrics until SIGTERM or SIGINT. The balancer must run
/// when it starts (a first read checks); a scrape that fails later is logged and answered with
/// an error.
pub async fn run(instance: &Instance, listen: ListenAddr, state_dir: PathBuf) -> Result<(), MetricsError> {
    read(instance, &state_dir)?;
    let listener = server::bind(listen).await?;
    log::info!("balancer {}: metrics at http://{listen}/metrics", instance.name);
    let mut terminate = signal(SignalKind::terminate()).map_err(MetricsError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(MetricsError::Signal)?;
    let (stop, stop_rx) = watch::channel(false);
    let scraped = instance.clone();
    let scrape = move || read(&scraped, &state_dir);
    let failure =
        |what: &str, error: &(dyn std::error::Error + 'static)| log::warn!("{what}: {}", Chain(error));
    let serving = tokio::spawn(server::serve(listener, Arc::new(scrape), Arc::new(failure), stop_rx));
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    stop.send_replace(true);
    if let Err(error) = serving.await {
        log::error!("balancer {}: the metrics task: {}", instance.name, Chain(&error));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use mptcp_common::lb::{BackendCounters, LbCounters};

    use super::*;
    use crate::lb::{
        BackendStats, Steering, VipStats,
        sync::{PeerState, SyncCounters},
    };

    fn stats() -> LbStats {
        LbStats {
            counters: LbCounters { tokens_learned: 7, ..LbCounters::default() },
            vips: vec![VipStats {
                address: "203.0.113.200:80".parse().unwrap(),
                steering: Steering::HashOnly,
                maglev_digest: "0011223344556677".into(),
            }],
            backends: vec![BackendStats {
                name: "b1".into(),
                address: "203.0.113.1".parse().unwrap(),
                state: "draining",
                mac: "02:00:00:00:00:01".into(),
                weight: 2,
                maglev_share: 50.0,
                join_addresses: Vec::new(),
                counters: BackendCounters { subflows: 3, packets: 9, ..BackendCounters::default() },
            }],
            collisions: Vec::new(),
            sync: Some(SyncState {
                pid: 1,
                running: true,
                updated_unix_ms: 2,
                name: "lb-a".into(),
                listen: "198.51.100.1:7946".parse().unwrap(),
                counters: SyncCounters { late: 4, ..SyncCounters::default() },
                peers: vec![PeerState {
                    name: Some("lb-b".into()),
                    address: "198.51.100.2:7946".parse().unwrap(),
                    up: true,
                    ms_since_heard: Some(1500),
                    counters: Some(Summary {
                        tokens_learned: 5,
                        sync: SyncCounters { datagrams_sent: 6, ..SyncCounters::default() },
                        ..Summary::default()
                    }),
                }],
            }),
        }
    }

    #[test]
    fn stats_become_counters_info_and_gauges() {
        let text = families(&stats()).openmetrics().unwrap();
        for line in [
            "mptcp_lb_tokens_learned_total 7\n",
            "mptcp_lb_vip_info{vip=\"203.0.113.200:80\",steering=\"hash-only\"} 1\n",
            "mptcp_lb_maglev_info{vip=\"203.0.113.200:80\",digest=\"0011223344556677\"} 1\n",
            "mptcp_lb_backend_subflows_total{backend=\"b1\"} 3\n",
            "mptcp_lb_backend_packets_total{backend=\"b1\"} 9\n",
            "mptcp_lb_backend_info{backend=\"b1\",address=\"203.0.113.1\",state=\"draining\"} 1\n",
            "mptcp_lb_backend_weight{backend=\"b1\"} 2\n",
            "mptcp_lb_backend_maglev_share_ratio{backend=\"b1\"} 0.5\n",
            "mptcp_lb_sync_running 1\n",
            "mptcp_lb_sync_late_total 4\n",
            "mptcp_lb_sync_peer_info{peer=\"198.51.100.2:7946\",name=\"lb-b\"} 1\n",
            "mptcp_lb_sync_peer_up{peer=\"198.51.100.2:7946\"} 1\n",
            "mptcp_lb_sync_peer_last_heard_seconds{peer=\"198.51.100.2:7946\"} 1.5\n",
            "mptcp_lb_sync_peer_tokens_learned_total{peer=\"198.51.100.2:7946\"} 5\n",
            "mptcp_lb_sync_peer_sync_datagrams_sent_total{peer=\"198.51.100.2:7946\"} 6\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn without_a_sync_daemon_its_families_are_described_and_empty() {
        let mut stats = stats();
        stats.sync = None;
        let plain = families(&stats);
        let with_sync = families(&self::stats());
        let names = |families: &Families| families.0.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&plain), names(&with_sync));
        let late = plain.0.iter().find(|f| f.name == "mptcp_lb_sync_late").unwrap();
        assert!(late.samples.is_empty());
    }
}
