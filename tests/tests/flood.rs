//! A live spoofed SYN flood against the tracked server, answered by its kernel (syncookies on, as
//! by default), while real MPTCP connections open, join and transfer across it: the half-open
//! table overflows, the established connections and their joins do not notice.

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    flood::{self, FloodLab, Scenario},
    lock::LabLock,
};

#[test]
fn a_spoofed_syn_flood_past_the_half_open_table_spares_real_connections_and_joins() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = FloodLab::new()?;
    let scenario = Scenario::under_flood(5500);
    let (n, bytes) = (scenario.connections, scenario.bytes);
    let flood = scenario.flood.context("a flood")?.0.count;
    let outcome = flood::run(&lab, scenario)?;
    let report = outcome.flood.context("no flood report")?;
    eprintln!(
        "flood: {} SYNs in {:?}, {:.0} per second; {:?} sent when every connection was up; \
         keys checked by the daemon: {} of {n}; events dropped: {}\n{outcome:#?}",
        report.sent,
        report.elapsed,
        report.rate(),
        outcome.flood_sent_when_established,
        outcome.keys_checked,
        outcome.ingress.get("events_dropped") + outcome.egress.get("events_dropped"),
    );

    ensure!(report.sent == u64::from(flood), "the flood sent {} of {flood} SYNs in time", report.sent);
    let sent_then = outcome.flood_sent_when_established.unwrap_or(0);
    ensure!(sent_then < report.sent, "the flood was over before the real connections were established");

    // Every real connection kept its keys and tokens through the flood, and its join.
    ensure!(
        outcome.kernel_server_tokens.len() == n,
        "the server kernel shows {:?}",
        outcome.kernel_server_tokens
    );
    ensure!(outcome.tokens_kept == n, "{} of {n} connections kept keys and tokens", outcome.tokens_kept);
    ensure!(outcome.kernel_joins == n, "{} of {n} joins established in the kernel", outcome.kernel_joins);
    ensure!(outcome.kernel_join_acks == n as u64, "MPJoinAckRx moved by {}", outcome.kernel_join_acks);
    ensure!(outcome.ingress.get("joins_admitted") == n as u64, "{:?}", outcome.ingress);
    ensure!(outcome.ingress.get("joins_dropped_unknown_token") == 0, "{:?}", outcome.ingress);
    ensure!(outcome.received == vec![bytes; n], "bytes received: {:?}", outcome.received);
    ensure!(outcome.data_counted == n, "{} of {n} connections counted all their data", outcome.data_counted);

    // The flood reached the server, was answered, and overflowed the half-open tables.
    let received = outcome.flood_link_ingress.get("tcp_packets");
    ensure!(received >= u64::from(flood) * 99 / 100, "the server saw {received} of {flood} SYNs");
    let recorded = outcome.flood_link_egress.get("half_open_created");
    ensure!(recorded >= received, "{recorded} SYN-ACK keys recorded for {received} SYNs");
    // Every answer to the flood left by the flood link: the paths carried only the real SYN-ACKs.
    let created = outcome.egress.get("half_open_created");
    ensure!(created - recorded == n as u64, "{} half-open entries from the paths", created - recorded);
    ensure!(
        recorded > outcome.half_open_capacity,
        "{recorded} half-open entries for {}",
        outcome.half_open_capacity
    );
    ensure!(outcome.half_open_entries <= outcome.half_open_capacity);
    // Entries made minus those the real handshakes completed minus those left: pushed out.
    let evicted = created.saturating_sub(n as u64 + outcome.half_open_entries);
    ensure!(evicted > 0, "created {created}, {} left: nothing evicted", outcome.half_open_entries);
    ensure!(
        outcome.egress.get("connections_created") + outcome.ingress.get("connections_created") == n as u64
    );
    Ok(())
}
