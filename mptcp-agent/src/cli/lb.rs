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

#[cfg(test)]
mod tests {
    use mptcp_common::lb::LbCounters;

    use super::*;
    use crate::lb::sync::{PeerState, SyncCounters, wire::Summary};

    #[test]
    fn the_sync_state_shows_its_counters_and_a_row_per_peer() {
        let peer = |name: Option<&str>, up| PeerState {
            name: name.map(str::to_owned),
            address: "198.51.100.2:7946".parse().unwrap(),
            up,
            ms_since_heard: up.then_some(250),
            counters: up.then(|| Summary {
                tokens_learned: 41,
                sync: SyncCounters { late: 3, ..SyncCounters::default() },
                ..Summary::default()
            }),
        };
        let stats = LbStats {
            counters: LbCounters::default(),
            vips: Vec::new(),
            backends: Vec::new(),
            collisions: Vec::new(),
            sync: Some(SyncState {
                pid: 7,
                running: true,
                updated_unix_ms: 0,
                name: "lb-a".into(),
                listen: "198.51.100.1:7946".parse().unwrap(),
                counters: SyncCounters { auth_failures: 2, ..SyncCounters::default() },
                peers: vec![peer(Some("lb-b"), true), peer(None, false)],
            }),
        };
        let text = stats_table(&stats);
        assert!(text.contains("sync lb-a on 198.51.100.1:7946 (running, pid 7)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("auth_failures") && l.ends_with(" 2")), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("198.51.100.2:7946")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(
            rows[0].starts_with("lb-b") && rows[0].contains("yes") && rows[0].ends_with(" 3"),
            "{}",
            rows[0]
        );
        assert!(rows[1].starts_with('-') && rows[1].contains(" no "), "{}", rows[1]);
    }

    #[test]
    fn each_peer_answer_is_a_line() {
        let peer: std::net::SocketAddr = "198.51.100.2:7946".parse().unwrap();
        let acks = [
            PeerAck { peer, name: Some("lb-b".into()), outcome: AckOutcome::Applied },
            PeerAck {
                peer,
                name: Some("lb-c".into()),
                outcome: AckOutcome::Failed("no backend named x".into()),
            },
            PeerAck { peer, name: None, outcome: AckOutcome::NoAnswer },
        ];
        assert_eq!(
            acks_text(&acks),
            "peer lb-b (198.51.100.2:7946): applied\n\
             peer lb-c (198.51.100.2:7946): failed: no backend named x\n\
             peer 198.51.100.2:7946: no answer\n"
        );
    }
}
