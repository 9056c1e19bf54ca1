//! `conns` and `subflows`: the tracking tables for operators, as JSON or as text tables.

use serde::Serialize;

use crate::{
    cc::SubflowCc,
    dataplane::tables::{ConnectionView, SubflowView, Token},
};

/// One row of `conns --json`: the connection and the congestion state of its subflows.
#[derive(Serialize)]
pub struct ConnectionRow<'a> {
    #[serde(flatten)]
    pub connection: &'a ConnectionView,
    pub subflow_cc: Vec<&'a SubflowCc>,
}

/// Pairs each connection with its subflows' congestion state, by token.
pub fn connection_rows<'a>(
    views: &'a [ConnectionView],
    congestion: &'a [SubflowCc],
) -> Vec<ConnectionRow<'a>> {
    views
        .iter()
        .map(|connection| ConnectionRow {
            connection,
            subflow_cc: congestion.iter().filter(|cc| cc.token == connection.server_token).collect(),
        })
        .collect()
}

pub fn connections_text(rows: &[ConnectionRow<'_>]) -> String {
    let mut out = format!(
        "{:<10} {:<10} {:>3} {:>8} {:>12} {:>12} {:>6} {:<10}\n",
        "token", "client-tok", "sub", "fallback", "data-c2s", "data-s2c", "reinj", "closing"
    );
    for ConnectionRow { connection: view, subflow_cc } in rows {
        let closing = [
            (view.data_fin.c2s || view.data_fin.s2c, "data-fin"),
            (view.fastclose, "fastclose"),
            (view.tcprst, "tcprst"),
        ];
        let closing: Vec<&str> = closing.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect();
        out += &format!(
            "{:<10} {:<10} {:>3} {:>8} {:>12} {:>12} {:>6} {:<10}\n",
            view.server_token.to_string(),
            Token::or_dash(view.client_token),
            view.subflows,
            view.fallback.unwrap_or("no"),
            view.data_bytes.c2s,
            view.data_bytes.s2c,
            view.reinjections,
            closing.join(",")
        );
        for cc in subflow_cc {
            out += &format!("  {}\n", cc_line(cc));
        }
    }
    out
}

fn cc_line(cc: &SubflowCc) -> String {
    let decision = match (cc.increase, cc.decrease) {
        _ if cc.coupling == "paced" && cc.current => match cc.pacing_cap {
            Some(cap) => {
                format!("{} paced, capped at {:.2} Mbit/s", cc.algorithm, f64::from(cap) * 8.0 / 1e6)
            }
            None => format!("{} paced, uncapped", cc.algorithm),
        },
        (Some(increase), Some(decrease)) => {
            let shape = if cc.coupling == "cubic" { " cubic-shaped" } else { "" };
            format!("{}{shape} {increase:+.4} pkt/acked pkt, -{:.0}% on loss", cc.algorithm, 100.0 * decrease)
        }
        _ => format!("{} (no current decision)", cc.algorithm),
    };
    format!(
        "{} <-> {}  cwnd {} ssthresh {} srtt {} us coupled {} losses {} (+{} merged)  {decision}",
        cc.ends[0],
        cc.ends[1],
        cc.cwnd,
        cc.ssthresh,
        cc.srtt_us,
        cc.coupled_cwnd.map_or("-".to_owned(), |w| w.to_string()),
        cc.loss_events,
        cc.merged_losses
    )
}

pub fn subflows_text(views: &[SubflowView]) -> String {
    let line = |cells: [&str; 9]| {
        format!(
            "{:<46} {:<46} {:<7} {:<12} {:<10} {:<6} {:<9} {:>9} {:>9}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7], cells[8]
        )
    };
    let mut out =
        line(["client", "server", "kind", "state", "token", "backup", "hmac", "pkts-c2s", "pkts-s2c"]);
    for view in views {
        out += &line([
            &view.client.to_string(),
            &view.server.to_string(),
            view.kind,
            view.state,
            &Token::or_dash(view.connection_token),
            &view.backup.to_string(),
            view.hmac,
            &view.c2s.packets.to_string(),
            &view.s2c.packets.to_string(),
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subflow(coupling: &'static str, current: bool) -> SubflowCc {
        SubflowCc {
            token: Token(1),
            ends: ["192.0.2.1:1".parse().unwrap(), "203.0.113.1:2".parse().unwrap()],
            cwnd: 10,
            ssthresh: 7,
            srtt_us: 1000,
            coupled_cwnd: Some(10),
            coupling,
            pacing_cap: None,
            loss_events: 1,
            merged_losses: 2,
            total_retrans: 0,
            bytes_acked: 0,
            algorithm: "lia",
            increase: (current && coupling != "paced").then_some(0.05),
            decrease: (current && coupling != "paced").then_some(if coupling == "cubic" { 0.3 } else { 0.5 }),
            decision_age_ms: Some(if current { 3.0 } else { 2_000.0 }),
            current,
        }
    }

    #[test]
    fn each_coupling_prints_its_decision_and_a_stale_one_none() {
        let line = |coupling, current| cc_line(&subflow(coupling, current));
        assert!(
            line("window", true).ends_with("lia +0.0500 pkt/acked pkt, -50% on loss"),
            "{}",
            line("window", true)
        );
        assert!(line("cubic", true).ends_with("lia cubic-shaped +0.0500 pkt/acked pkt, -30% on loss"));
        let capped = SubflowCc { pacing_cap: Some(125_000), ..subflow("paced", true) };
        assert!(cc_line(&capped).ends_with("lia paced, capped at 1.00 Mbit/s"), "{}", cc_line(&capped));
        assert!(line("paced", true).ends_with("lia paced, uncapped"));
        for coupling in ["window", "cubic", "paced"] {
            assert!(
                line(coupling, false).ends_with("lia (no current decision)"),
                "{}",
                line(coupling, false)
            );
        }
    }
}
