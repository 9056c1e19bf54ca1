//! `lb stats` for humans.

use mptcp_common::lb::LB_COUNTER_NAMES;

use crate::lb::{LbStats, Steering};

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
    out
}
