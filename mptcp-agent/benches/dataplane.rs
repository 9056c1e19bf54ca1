//! The fast path measured with BPF_PROG_TEST_RUN against two baselines in the same run, and the
//! agent's event processing: `cargo bench -p mptcp-agent --bench dataplane -- dataplane|lb` (as
//! root). Prints one JSON row ([`Row`]) per measurement; `cargo xtask bench` collects them.

use std::{net::SocketAddr, time::Instant};

use anyhow::{Context as _, Result, ensure};
use aya::maps::HashMap;
use mptcp_agent::{
    dataplane::events::EventDetails,
    dataplane::handshake,
    dataplane::testrun::{
        BALANCER_XDP as LB_XDP_PROGRAM, BASELINE_FLOW_LOOKUP, BASELINE_FLOWS_MAP, BASELINE_PASS,
        BalancerHarness, TRACKER_XDP as XDP_PROGRAM, TestHarness, TrackerHarness,
        frames::{Segment, capable},
    },
    lb::Steering,
};
use mptcp_common::{
    maps::{FlowKey, ipv4_mapped},
    mptcp::{DataAck, Dss, DssMapping, MpJoin, MptcpOption},
};
use mptcp_tests::bench::Row;

/// XDP_REDIRECT, the balancer's verdict on a frame it forwards.
const XDP_REDIRECT: u32 = 4;

const SAMPLES: usize = 7;
const REPEAT: u32 = 100_000;
const CLIENT: [u8; 4] = [192, 0, 2, 1];
const CLIENT2: [u8; 4] = [198, 51, 100, 1];
const SERVER: [u8; 4] = [192, 0, 2, 2];

/// 1400 bytes of data from `client` to the server with a DSS option as Linux sends it: an
/// 8-byte data ACK and a mapping.
fn dss_data(client: ([u8; 4], u16)) -> Segment {
    let mut data = Segment::new(client, (SERVER, 80));
    data.payload = 1400;
    data.mptcp = Some(MptcpOption::Dss(Dss {
        data_fin: false,
        data_ack: Some(DataAck { value: 1, wide: true }),
        mapping: Some(DssMapping {
            dsn: 100,
            dsn_wide: true,
            subflow_seq: 1,
            data_len: 1400,
            checksum: None,
        }),
    }));
    data
}

/// Opens an MPTCP connection between `client` and the server (and a join from CLIENT2),
/// through the program; returns the server token.
fn handshake(
    harness: &mut TrackerHarness,
    client: ([u8; 4], u16),
    client_key: u64,
    server_key: u64,
) -> Result<u32> {
    let server = (SERVER, 80);
    let mut syn = Segment::new(client, server);
    (syn.syn, syn.ack, syn.mptcp) = (true, false, Some(capable(None, None)));
    let mut syn_ack = Segment::new(server, client);
    (syn_ack.syn, syn_ack.mptcp) = (true, Some(capable(Some(server_key), None)));
    let mut ack = Segment::new(client, server);
    ack.mptcp = Some(capable(Some(client_key), Some(server_key)));
    for segment in [syn, syn_ack, ack] {
        harness.run_xdp(XDP_PROGRAM, &segment.frame()?, 1)?;
    }
    Ok(handshake::token(server_key))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Puts the benchmarks' established flow (client port 40000 to the server) in the lookup
/// baseline's table: the baseline finds the flow the tracker or the balancer finds.
fn baseline_flow(reference: &mut TestHarness) -> Result<()> {
    let (key, _) = FlowKey::new(4, ipv4_mapped(CLIENT), 40_000, ipv4_mapped(SERVER), 80);
    let mut flows: HashMap<_, FlowKey, u64> = HashMap::try_from(
        reference.map_mut(BASELINE_FLOWS_MAP).with_context(|| format!("{BASELINE_FLOWS_MAP} map"))?,
    )?;
    flows.insert(key, 0, 0)?;
    Ok(())
}

/// Median ns/packet of `program` on `frame`.
fn ns_per_packet(harness: &mut TestHarness, program: &'static str, frame: &[u8]) -> Result<f64> {
    let samples = (0..SAMPLES)
        .map(|_| Ok(harness.run_xdp(program, frame, REPEAT)?.duration.as_nanos() as f64))
        .collect::<Result<Vec<_>>>()?;
    Ok(median(samples))
}

/// One result line; a per-packet time also says what it means as a rate on one core.
fn row(suite: &str, case: &str, value: f64, unit: &str, note: &str) {
    let note = if unit == "ns/packet" && value > 0.0 {
        format!("{note}; {:.2} Mpps per core (1e9 / ns)", 1e3 / value)
    } else {
        note.to_owned()
    };
    let row = Row { suite: suite.into(), case: case.into(), value, unit: unit.into(), note };
    match serde_json::to_string(&row) {
        Ok(line) => println!("{line}"),
        Err(error) => eprintln!("{case}: {error}"),
    }
}

/// Median of single test runs (repeat 1) of `program`, one per frame: for packets that change
/// state and so cannot be repeated, such as a new flow's SYN.
fn ns_single_runs(harness: &mut TestHarness, program: &'static str, frames: &[Vec<u8>]) -> Result<f64> {
    let samples = frames
        .iter()
        .map(|frame| Ok(harness.run_xdp(program, frame, 1)?.duration.as_nanos() as f64))
        .collect::<Result<Vec<_>>>()?;
    Ok(median(samples))
}

/// `dataplane`: the tracking programs and the agent's event processing; `lb`: the balancer's
/// program. `cargo bench` adds `--bench` to the arguments.
fn main() -> Result<()> {
    let suites: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    ensure!(!suites.is_empty(), "name a suite: dataplane, lb");
    for suite in suites {
        match suite.as_str() {
            "dataplane" => dataplane()?,
            "lb" => balancer()?,
            other => anyhow::bail!("no suite {other:?}: dataplane, lb"),
        }
    }
    Ok(())
}

fn dataplane() -> Result<()> {
    let mut harness = TestHarness::tracker()?;
    let mut reference = TestHarness::reference()?;
    let client = (CLIENT, 40_000);
    let token = handshake(&mut harness, client, 0x1111_2222_3333_4444, 0x5555_6666_7777_8888)?;

    let plain = Segment::new((CLIENT, 50_000), (SERVER, 80));
    let mut capable_syn = Segment::new((CLIENT, 50_001), (SERVER, 80));
    (capable_syn.syn, capable_syn.ack, capable_syn.mptcp) = (true, false, Some(capable(None, None)));
    let mut join_syn = Segment::new((CLIENT2, 50_002), (SERVER, 80));
    join_syn.syn = true;
    join_syn.ack = false;
    join_syn.mptcp = Some(MptcpOption::Join(MpJoin::Syn { backup: false, addr_id: 1, token, nonce: 7 }));
    let data = dss_data(client);
    let mut ack_only = Segment::new((SERVER, 80), client);
    ack_only.mptcp = Some(MptcpOption::Dss(Dss {
        data_fin: false,
        data_ack: Some(DataAck { value: 1500, wide: true }),
        mapping: None,
    }));
    let data_frame = data.frame()?;

    // The lookup baseline finds the same flow the dataplane finds.
    baseline_flow(&mut reference)?;
    let pass = ns_per_packet(&mut reference, BASELINE_PASS, &data_frame)?;
    let lookup = ns_per_packet(&mut reference, BASELINE_FLOW_LOOKUP, &data_frame)?;
    let row = |case: &str, value: f64, unit: &str, note: &str| row("dataplane", case, value, unit, note);
    row("baseline: XDP_PASS only", pass, "ns/packet", "test-run, DSS data frame, median of 7 x 100k");
    row("baseline: 4-tuple hash lookup", lookup, "ns/packet", "parse to TCP + one hash lookup (hit)");
    for (case, segment) in [
        ("plain TCP", &plain),
        ("MP_CAPABLE SYN", &capable_syn),
        ("MP_JOIN SYN", &join_syn),
        ("DSS data", &data),
        ("DSS ack-only", &ack_only),
    ] {
        let ns = ns_per_packet(&mut harness, XDP_PROGRAM, &segment.frame()?)?;
        row(case, ns, "ns/packet", &format!("{:.2}x the lookup baseline", ns / lookup));
    }

    events_per_second(&mut harness)?;
    token_delay(&mut harness)?;
    Ok(())
}

/// Events of [`connection_with_join`]: the MP_CAPABLE key check, the join's SYN, SYN-ACK and
/// third ACK (whose HMACs the agent verifies).
const EVENTS_PER_CONNECTION: usize = 4;

/// Opens connection `n` of the event benchmark and a join to it, through the program.
fn connection_with_join(harness: &mut TrackerHarness, n: u16) -> Result<()> {
    let client = (CLIENT, 1000 + n);
    // Key ranges apart, so no client key is another connection's server key.
    let token = handshake(harness, client, 0x1_0000_0000 + u64::from(n), 0x2_0000_0000 + u64::from(n))?;
    let client2 = (CLIENT2, 1000 + n);
    let mut syn = Segment::new(client2, (SERVER, 80));
    (syn.syn, syn.ack) = (true, false);
    syn.mptcp = Some(MptcpOption::Join(MpJoin::Syn { backup: false, addr_id: 1, token, nonce: 1 }));
    let mut syn_ack = Segment::new((SERVER, 80), client2);
    syn_ack.syn = true;
    syn_ack.mptcp =
        Some(MptcpOption::Join(MpJoin::SynAck { backup: false, addr_id: 0, truncated_hmac: 2, nonce: 3 }));
    let mut ack = Segment::new(client2, (SERVER, 80));
    ack.mptcp = Some(MptcpOption::Join(MpJoin::Ack { hmac: [4; 20] }));
    for segment in [syn, syn_ack, ack] {
        harness.run_xdp(XDP_PROGRAM, &segment.frame()?, 1)?;
    }
    Ok(())
}

/// Handshake events through the agent's processor with 10,000 live connections in the tables:
/// rounds of new connections with a join each (MP_CAPABLE key checks, MP_JOIN HMAC
/// verifications), each round's events read from the ring buffer in one drain, as the daemon
/// reads a burst.
fn events_per_second(harness: &mut TrackerHarness) -> Result<()> {
    const LIVE: u16 = 10_000;
    const ROUNDS: usize = 9;
    /// 2,000 events a round: well within the ring buffer (1 MiB, 128 bytes a record).
    const PER_ROUND: u16 = 500;
    const FILL_DRAIN: u16 = 1000;
    // Start from an empty ring: the runs above left their events in it.
    harness.process_events();
    for n in 0..LIVE {
        connection_with_join(harness, n)?;
        if n % FILL_DRAIN == FILL_DRAIN - 1 {
            harness.process_events();
        }
    }
    harness.process_events();
    let live = harness.tables.connections()?.len();
    ensure!(live >= usize::from(LIVE), "{live} connections in the table, expected {LIVE}");
    let mut rates = Vec::new();
    let mut events = 0;
    for round in 0..ROUNDS as u16 {
        for i in 0..PER_ROUND {
            connection_with_join(harness, LIVE + round * PER_ROUND + i)?;
        }
        let start = Instant::now();
        let records = harness.process_events();
        let spent = start.elapsed();
        let verified = records
            .iter()
            .filter(|record| matches!(&record.details, EventDetails::JoinAck { verdict: Some(_), .. }))
            .count();
        ensure!(
            records.len() == EVENTS_PER_CONNECTION * usize::from(PER_ROUND)
                && verified == usize::from(PER_ROUND),
            "round {round}: {} events, {verified} joins judged, expected {} and {PER_ROUND}",
            records.len(),
            EVENTS_PER_CONNECTION * usize::from(PER_ROUND)
        );
        events += records.len();
        rates.push(records.len() as f64 / spent.as_secs_f64());
    }
    // What the processor defers reached the maps: a verdict per join, checks per connection.
    let judged = usize::from(LIVE) + ROUNDS * usize::from(PER_ROUND);
    let verdicts = harness.tables.verdicts.keys().count();
    let checked = harness.tables.checks.keys().count();
    ensure!(
        verdicts >= judged && checked >= judged,
        "{verdicts} HMAC verdicts and {checked} connection checks in the maps, expected {judged} each"
    );
    rates.sort_by(f64::total_cmp);
    let (low, high) = (rates[0], rates[ROUNDS - 1]);
    row(
        "dataplane",
        "agent: handshake events processed",
        median(rates),
        "events/s",
        &format!(
            "median of {ROUNDS} rounds of {} events ({low:.0}-{high:.0}), {live}+ live connections; \
             MP_CAPABLE key checks, MP_JOIN HMAC checks, read from the ring buffer ({events} in all)",
            EVENTS_PER_CONNECTION * usize::from(PER_ROUND)
        ),
    );
    Ok(())
}

/// The token of a connection is in the table as soon as the program has handled the third ACK
/// (it computes the token itself): the delay is that one program run.
fn token_delay(harness: &mut TrackerHarness) -> Result<()> {
    let mut samples = Vec::new();
    for n in 0..500u16 {
        let client = (CLIENT, 20_000 + n);
        let server = (SERVER, 443);
        let server_key = 0xc000 + u64::from(n);
        let mut syn = Segment::new(client, server);
        (syn.syn, syn.ack, syn.mptcp) = (true, false, Some(capable(None, None)));
        harness.run_xdp(XDP_PROGRAM, &syn.frame()?, 1)?;
        let mut ack = Segment::new(client, server);
        // The SYN-ACK is not seen (a balancer with direct server return): the third ACK alone
        // must install the server's token.
        ack.mptcp = Some(capable(Some(0xd000 + u64::from(n)), Some(server_key)));
        let run = harness.run_xdp(XDP_PROGRAM, &ack.frame()?, 1)?;
        let token = handshake::token(server_key);
        ensure!(harness.tables.connections.get(&token, 0).is_ok(), "token {token:#x} not installed");
        samples.push(run.duration.as_nanos() as f64);
    }
    harness.process_events();
    row(
        "dataplane",
        "third ACK to server token in the map",
        median(samples),
        "ns",
        "the program computes the token (SHA-256) itself: one test-run of the third ACK, median of 500",
    );
    Ok(())
}

/// The balancer's program with BPF_PROG_TEST_RUN: a VIP with three backends, Maglev-placed SYNs,
/// joins steered by token, established packets on the flow table, the third ACK that teaches
/// the token; against the 4-tuple lookup baseline on the same frames.
fn balancer() -> Result<()> {
    const SINGLE_RUNS: u16 = 500;
    let names = ["backend1", "backend2", "backend3"];
    let BalancerHarness { mut harness, maps } =
        BalancerHarness::new(SocketAddr::from((SERVER, 80)), Steering::Token, &names, &names)?;
    let mut reference = TestHarness::reference()?;
    let row = |case: &str, value: f64, unit: &str, note: &str| row("lb", case, value, unit, note);
    let redirected = |harness: &mut TestHarness, frame: &[u8]| -> Result<()> {
        let action = harness.run_xdp(LB_XDP_PROGRAM, frame, 1)?.action;
        ensure!(action == XDP_REDIRECT, "the balancer returned action {action}, not XDP_REDIRECT");
        Ok(())
    };

    // An MPTCP connection through the balancer, its token learned from the third ACK.
    let client = (CLIENT, 40_000);
    let server_key = 0x5555_6666_7777_8888;
    let mut syn = Segment::new(client, (SERVER, 80));
    (syn.syn, syn.ack, syn.mptcp) = (true, false, Some(capable(None, None)));
    let mut third_ack = Segment::new(client, (SERVER, 80));
    third_ack.mptcp = Some(capable(Some(0x1111_2222_3333_4444), Some(server_key)));
    for segment in [&syn, &third_ack] {
        redirected(&mut harness, &segment.frame()?)?;
    }
    let mut join_syn = Segment::new((CLIENT2, 50_002), (SERVER, 80));
    (join_syn.syn, join_syn.ack) = (true, false);
    let token = handshake::token(server_key);
    join_syn.mptcp = Some(MptcpOption::Join(MpJoin::Syn { backup: false, addr_id: 1, token, nonce: 7 }));
    let data = dss_data(client);
    let data_frame = data.frame()?;
    redirected(&mut harness, &join_syn.frame()?)?;
    redirected(&mut harness, &data_frame)?;

    baseline_flow(&mut reference)?;
    let lookup = ns_per_packet(&mut reference, BASELINE_FLOW_LOOKUP, &data_frame)?;
    row(
        "baseline: 4-tuple hash lookup",
        lookup,
        "ns/packet",
        "parse to TCP + one hash lookup (hit), median of 7 x 100k",
    );
    for (case, frame) in [
        ("established DSS data (flow table)", &data_frame),
        ("MP_JOIN SYN (token table)", &join_syn.frame()?),
    ] {
        let ns = ns_per_packet(&mut harness, LB_XDP_PROGRAM, frame)?;
        row(case, ns, "ns/packet", &format!("{:.2}x the lookup baseline; median of 7 x 100k", ns / lookup));
    }

    // New flows and third ACKs change state: one run each, distinct flows.
    let single_lookup = ns_single_runs(&mut reference, BASELINE_FLOW_LOOKUP, &vec![data_frame.clone(); 500])?;
    row("baseline: 4-tuple hash lookup, single runs", single_lookup, "ns/packet", "median of 500 runs of 1");
    let mut syns = Vec::new();
    let mut acks = Vec::new();
    for n in 0..SINGLE_RUNS {
        // A hundred sources, five flows each: well inside the per-source learning rate's burst,
        // so every third ACK pays for the rate check and the SHA-256 and learns its token.
        let client = ([192, 0, 2, 100 + (n % 100) as u8], 10_000 + n);
        let mut syn = Segment::new(client, (SERVER, 80));
        (syn.syn, syn.ack, syn.mptcp) = (true, false, Some(capable(None, None)));
        syns.push(syn.frame()?);
        let mut ack = Segment::new(client, (SERVER, 80));
        ack.mptcp = Some(capable(Some(0xa000 + u64::from(n)), Some(0xb000 + u64::from(n))));
        acks.push(ack.frame()?);
    }
    let placed = ns_single_runs(&mut harness, LB_XDP_PROGRAM, &syns)?;
    row(
        "MP_CAPABLE SYN, new flow (Maglev)",
        placed,
        "ns/packet",
        &format!("{:.2}x the single-run baseline; median of 500 distinct flows", placed / single_lookup),
    );
    let learned = ns_single_runs(&mut harness, LB_XDP_PROGRAM, &acks)?;
    row(
        "third ACK: token learned (SHA-256 in the program)",
        learned,
        "ns/packet",
        &format!(
            "{:.2}x the single-run baseline; the join's token is known as soon as this run ends",
            learned / single_lookup
        ),
    );
    let tokens: u64 = {
        let stats = maps.counters()?;
        stats.tokens_learned
    };
    ensure!(tokens == u64::from(SINGLE_RUNS) + 1, "{tokens} tokens learned, expected {}", SINGLE_RUNS + 1);
    Ok(())
}
