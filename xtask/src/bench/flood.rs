//! The `flood` suite: the flood lab of the `flood` integration test (`mptcp_tests::flood`), in
//! rounds with the spoofed SYN flood and without it, interleaved: the share of real connections
//! that keep their keys and tokens, the joins admitted, and the tracker programs' time per packet
//! from the kernel's BPF run statistics.

use anyhow::{Context as _, Result};
use mptcp_tests::{
    flood::{self, FloodLab, Outcome, Scenario},
    kernel::BpfStats,
    lock::LabLock,
};

use super::{Row, median, range};
use crate::{setup::setup, util::build_agent};

/// Rounds per setting; medians and ranges are reported.
const ROUNDS: usize = 5;

/// One measured value of every round of a setting.
struct Series {
    case: String,
    unit: &'static str,
    values: Vec<f64>,
    note: String,
}

pub fn flood() -> Result<Vec<Row>> {
    setup()?;
    let agent = build_agent(true)?;
    // SAFETY: single-threaded here; the lab helpers read it to find the agent.
    unsafe { std::env::set_var("MPTCP_AGENT_BIN", &agent) };
    let _lock = LabLock::acquire()?;
    let lab = FloodLab::new()?;
    let _stats = BpfStats::enable()?;
    let flooded = Scenario::under_flood(5600);
    let settings = [("flood", flooded), ("no flood", flooded.without_flood())];
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); settings.len()];
    for round in 0..ROUNDS {
        for ((name, scenario), outcomes) in settings.iter().zip(&mut outcomes) {
            eprintln!("flood bench: round {}, {name}", round + 1);
            outcomes
                .push(flood::run(&lab, *scenario).with_context(|| format!("round {}, {name}", round + 1))?);
        }
    }

    let n = flooded.connections as f64;
    let mut series = Vec::new();
    for ((name, scenario), outcomes) in settings.iter().zip(&outcomes) {
        let mut add = |case: &str, unit: &'static str, value: &dyn Fn(&Outcome) -> f64, note: String| {
            series.push(Series {
                case: format!("{name}: {case}"),
                unit,
                values: outcomes.iter().map(value).collect(),
                note,
            });
        };
        let what = format!(
            "{} MPTCP connections of {} MiB, each joining",
            scenario.connections,
            scenario.bytes >> 20
        );
        add(
            "connections that kept keys and tokens",
            "%",
            &|o| 100.0 * o.tokens_kept as f64 / n,
            format!("{what}; conns --json against ss -M on both ends, after the flood"),
        );
        add(
            "joins admitted by the tracker",
            "%",
            &|o| 100.0 * o.ingress.get("joins_admitted") as f64 / n,
            "known-token admission; joins_admitted over the connections".into(),
        );
        add(
            "joins established in the kernel",
            "%",
            &|o| 100.0 * o.kernel_join_acks as f64 / n,
            "the server's MPTcpExtMPJoinAckRx over the connections".into(),
        );
        add(
            "connections whose keys the daemon checked",
            "%",
            &|o| 100.0 * o.keys_checked as f64 / n,
            "agent_checks.keys_matched > 0: the daemon got their events".into(),
        );
        // Real traffic on the paths; the flood's SYNs and SYN-ACKs on the flood link.
        let links: &[(bool, &str)] = if scenario.flood.is_some() {
            &[(false, "paths"), (true, "flood link")]
        } else {
            &[(false, "paths")]
        };
        for &(flood_link, link) in links {
            for hook in ["tc_ingress", "tc_egress"] {
                add(
                    &format!("tracker {hook} program, {link}"),
                    "ns/packet",
                    &|o| o.ns_per_packet(hook, flood_link).unwrap_or(f64::NAN),
                    "run_time_ns / run_cnt over the round (BPF_ENABLE_STATS)".into(),
                );
            }
        }
        add(
            "events dropped (ring buffer full)",
            "events",
            &|o| (o.ingress.get("events_dropped") + o.egress.get("events_dropped")) as f64,
            "the programs' events_dropped over the round".into(),
        );
        if let Some((options, _)) = scenario.flood {
            add(
                "spoofed SYNs sent per second",
                "SYN/s",
                &|o| o.flood.map_or(0.0, |f| f.rate()),
                format!(
                    "{} SYNs, {}",
                    options.count,
                    options.rate.map_or_else(|| "unpaced".to_owned(), |r| format!("paced at {r} per second"))
                ),
            );
            add(
                "half-open entries pushed out",
                "entries",
                &|o| {
                    o.egress
                        .get("half_open_created")
                        .saturating_sub(o.half_open_entries + scenario.connections as u64)
                        as f64
                },
                "HALF_OPEN entries made, minus the real handshakes completed, minus those left".into(),
            );
        }
    }
    Ok(series
        .into_iter()
        .map(|mut s| {
            let value = median(&mut s.values).unwrap_or(f64::NAN);
            Row {
                suite: "flood".into(),
                case: s.case,
                value,
                unit: s.unit.into(),
                note: format!("median of {ROUNDS} ({}); {}", range(&s.values), s.note),
            }
        })
        .collect())
}
