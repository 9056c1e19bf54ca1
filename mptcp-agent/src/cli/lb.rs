//! `lb stats` for humans.

use mptcp_common::lb::LB_COUNTER_NAMES;

use crate::lb::{
    LbStats, Steering,
    sync::{AckOutcome, PeerAck, SyncState},
};

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
        "\n{:<16} {:<40} {:<9} {:>7} {:>10} {:>12} {:>9} {:>12}  {}\n",
        "backend",
        "address",
        "state",
        "maglev%",
        "plain",
        "connections",
        "subflows",
        "packets",
        "join-addresses"
    ));
    for b in &stats.backends {
        let joins: Vec<String> = b.join_addresses.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "{:<16} {:<40} {:<9} {:>7.1} {:>10} {:>12} {:>9} {:>12}  {}\n",
            b.name,
            b.address.to_string(),
            b.state,
            b.maglev_share,
            b.counters.plain_flows,
            b.counters.connections,
            b.counters.subflows,
            b.counters.packets,
            if joins.is_empty() { "-".to_owned() } else { joins.join(" ") }
        ));
    }
    if !stats.collisions.is_empty() {
        out.push_str(&format!(
            "\n{:<10} {:<16} {:<16} {:<8} {:>6}   (a live token is never moved: see README)\n",
            "collision", "kept-by", "refused-for", "origin", "count"
        ));
        for c in &stats.collisions {
            out.push_str(&format!(
                "{:08x}   {:<16} {:<16} {:<8} {:>6}\n",
                c.token, c.kept, c.refused, c.refused_origin, c.count
            ));
        }
    }
    if let Some(sync) = &stats.sync {
        out.push_str(&sync_text(sync));
    }
    out
}

/// The sync daemon's counters and a row per peer.
fn sync_text(sync: &SyncState) -> String {
    let running = if sync.running { "running" } else { "stopped" };
    let mut out = format!("\nsync {} on {} ({running}, pid {})\n", sync.name, sync.listen, sync.pid);
    let counters = serde_json::to_value(&sync.counters).unwrap_or_default();
    for (name, value) in counters.as_object().into_iter().flatten() {
        out.push_str(&format!("{name:<24} {:>12}\n", value.as_u64().unwrap_or_default()));
    }
    out.push_str(&format!(
        "\n{:<20} {:<46} {:<5} {:>10} {:>14} {:>14} {:>14}\n",
        "peer", "address", "up", "heard-ms", "tokens-learned", "tokens-stored", "late"
    ));
    for peer in &sync.peers {
        let counter = |pick: fn(&crate::lb::sync::wire::Summary) -> u64| {
            peer.counters.as_ref().map_or("-".to_owned(), |c| pick(c).to_string())
        };
        out.push_str(&format!(
            "{:<20} {:<46} {:<5} {:>10} {:>14} {:>14} {:>14}\n",
            peer.name.as_deref().unwrap_or("-"),
            peer.address.to_string(),
            if peer.up { "yes" } else { "no" },
            peer.ms_since_heard.map_or("-".to_owned(), |ms| ms.to_string()),
            counter(|c| c.tokens_learned),
            counter(|c| c.sync.tokens_stored),
            counter(|c| c.sync.late),
        ));
    }
    out
}

/// Each peer's answer to a backend command.
pub fn acks_text(acks: &[PeerAck]) -> String {
    acks.iter()
        .map(|ack| {
            let who = match &ack.name {
                Some(name) => format!("{name} ({})", ack.peer),
                None => ack.peer.to_string(),
            };
            match &ack.outcome {
                AckOutcome::Applied => format!("peer {who}: applied\n"),
                AckOutcome::Failed(error) => format!("peer {who}: failed: {error}\n"),
                AckOutcome::NoAnswer => format!("peer {who}: no answer\n"),
            }
        })
        .collect()
}
