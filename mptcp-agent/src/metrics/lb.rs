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

use super::{Families, ListenAddr, MetricsError, server};
use crate::{
    bpf::Instance,
    labels,
    lb::{self, LbStats, sync::SyncState},
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
            "A VIP's Maglev table digest: instances with equal digests place new flows alike.",
            labels!("vip" => vip.address, "digest" => vip.maglev_digest),
        );
    }
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
            "A backend, its address and state (active or draining).",
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

fn sync_families(families: &mut Families, sync: Option<&SyncState>) {
    families.count(
        "mptcp_lb_sync_running",
        "1 while the sync daemon runs (its state file says so).",
        Vec::new(),
        u64::from(sync.is_some_and(|s| s.running)),
    );
    let Some(sync) = sync else { return };
    for (name, value) in integer_fields(&sync.counters) {
        families.counter(
            &format!("mptcp_lb_sync_{name}"),
            "Sync daemon counter (see `lb stats`).",
            Vec::new(),
            value,
        );
    }
    for peer in &sync.peers {
        let address = || labels!("peer" => peer.address);
        families.info(
            "mptcp_lb_sync_peer",
            "A sync peer: its address and the name its heartbeats give.",
            labels!("peer" => peer.address, "name" => peer.name.as_deref().unwrap_or("")),
        );
        families.count(
            "mptcp_lb_sync_peer_up",
            "1 when the peer was heard within 3 s.",
            address(),
            u64::from(peer.up),
        );
        if let Some(ms) = peer.ms_since_heard {
            families.gauge(
                "mptcp_lb_sync_peer_last_heard_seconds",
                "Seconds since the peer's last heartbeat.",
                address(),
                ms as f64 / 1000.0,
            );
        }
        let Some(summary) = &peer.counters else { continue };
        let heartbeat = integer_fields(summary).into_iter().chain(
            integer_fields(&summary.sync).into_iter().map(|(name, value)| (format!("sync_{name}"), value)),
        );
        for (name, value) in heartbeat {
            families.counter(
                &format!("mptcp_lb_sync_peer_{name}"),
                "A peer's counter, from its last heartbeat.",
                address(),
                value,
            );
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
