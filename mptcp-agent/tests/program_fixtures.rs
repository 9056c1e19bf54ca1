//! Program fixtures, in the manner of Katran's lib/testing and Cilium's bpf/tests: each case is
//! (maps set up, frames) -> (verdict per frame, map and counter state after), run through
//! BPF_PROG_TEST_RUN on a private copy of the programs (nothing attached, nothing pinned).
//!
//! Three tables: join admission and tracking (the tracker's `mptcp_xdp_ingress`) and the
//! balancer (`mptcp_lb`). Adding a case is adding a row: a name, a setup (configuration and map
//! entries), the frames with the XDP action each must get, and the state to find afterwards.
//!
//! Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): without it every case fails, naming what is
//! missing; nothing is skipped.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, ensure};
use aya::maps::{HashMap, MapData, RingBuf};
use mptcp_agent::{
    dataplane::{
        handshake,
        testrun::{
            BALANCER_XDP, BalancerHarness, TRACKER_XDP, TestHarness, TrackerHarness,
            action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
            frames::{self, Segment, capable},
            synthetic_link,
        },
    },
    lb::{LbMaps, Steering, maglev},
};
use mptcp_common::{
    lb::{
        LB_SYNC_EVENTS_MAP, LbCounters, LbFlow, LbSettings, LbSyncEvent, LbToken, MAGLEV_SIZE, NO_BACKEND,
        TokenLearn, backend_state, flow_kind, maglev_slot, sync_kind, token_origin, unknown_token,
    },
    maps::{
        AddrKey, CLIENT_TOKENS_MAP, Connection, DataplaneConfig, FlowKey, HALF_OPEN_MAP, HalfOpen,
        JOIN_RATE_MAP, PacketCounters, RateBucket, Subflow, addr_bytes, admission, connection_flags,
        direction_flags, fallback_reason, hmac_verdict, ipv4_mapped, subflow_kind, subflow_state,
    },
    mptcp::{MpCapable, MpFail, MpFastClose, MpJoin, MpPrio, MpTcpRst, MptcpOption},
};

type Endpoint = ([u8; 4], u16);

const CLIENT: Endpoint = ([192, 0, 2, 1], 40_000);
/// The client's second address, for joins.
const CLIENT2: Endpoint = ([198, 51, 100, 1], 50_000);
const SERVER: Endpoint = ([192, 0, 2, 2], 80);
const CLIENT_KEY: u64 = 0x1111_2222_3333_4444;
const SERVER_KEY: u64 = 0x5555_6666_7777_8888;

fn port(endpoint: Endpoint, port: u16) -> Endpoint {
    (endpoint.0, port)
}

fn key(a: Endpoint, b: Endpoint) -> FlowKey {
    FlowKey::new(4, ipv4_mapped(a.0), a.1, ipv4_mapped(b.0), b.1).0
}

/// The server's token (RFC 8684 3.2: the most significant 32 bits of SHA-256 of its key), by
/// the agent's own SHA-256, not the programs'.
fn server_token() -> u32 {
    handshake::token(SERVER_KEY)
}

// ---------------------------------------------------------------------------------------------
// The harness, behind these two functions only: when the programs move into objects of their
// own, each becomes that object's constructor.

fn tracker_harness() -> Result<TrackerHarness> {
    TestHarness::tracker()
        .context("loading the tracker's programs (needs root: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)")
}

fn balancer_harness(steering: Steering, backends: &[&str]) -> Result<BalancerHarness> {
    BalancerHarness::new(SocketAddr::from(SERVER), steering, &BACKENDS, backends)
        .context("loading the balancer's program (needs root: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)")
}

// ---------------------------------------------------------------------------------------------
// The runner.

/// One step of a case: a frame and the action it must get (and for the balancer, the backend
/// slot whose MAC the frame must leave with), or something done to the maps between frames.
enum Step<F> {
    Frame { segment: Segment, action: u32, backend: Option<u32> },
    Do(fn(&mut F) -> Result<()>),
}

fn frame<F>(segment: Segment, action: u32) -> Step<F> {
    Step::Frame { segment, action, backend: None }
}

fn to_backend<F>(segment: Segment, backend: u32) -> Step<F> {
    Step::Frame { segment, action: XDP_REDIRECT, backend: Some(backend) }
}

struct Case<F> {
    name: &'static str,
    /// The harness with its configuration and map entries.
    setup: fn() -> Result<F>,
    /// The steps, which may depend on the set-up (a Maglev pick, say).
    steps: fn(&F) -> Result<Vec<Step<F>>>,
    /// The state after the steps, asserted field by field.
    check: fn(&mut F) -> Result<()>,
}

trait Fixture {
    const PROGRAM: &'static str;
    fn harness(&mut self) -> &mut TestHarness;
    /// The destination MAC frames to backend `slot` leave with.
    fn backend_mac(&self, _slot: u32) -> Option<[u8; 6]> {
        None
    }
}

fn action_name(action: u32) -> String {
    match action {
        0 => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        3 => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("action {other}"),
    }
}

fn run_case<F: Fixture>(case: &Case<F>) -> Result<()> {
    let mut fixture = (case.setup)()?;
    let steps = (case.steps)(&fixture)?;
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            Step::Frame { segment, action, backend } => {
                let (result, out) = fixture.harness().run_xdp_output(F::PROGRAM, &segment.frame()?)?;
                ensure!(
                    result.action == action,
                    "step {i}: {} where {} was expected",
                    action_name(result.action),
                    action_name(action)
                );
                if let Some(slot) = backend {
                    let mac = fixture.backend_mac(slot).context("no MAC for the backend")?;
                    let got = out.get(..6).context("no frame out of the program")?;
                    ensure!(
                        got == mac,
                        "step {i}: sent to MAC {got:02x?}, expected backend {slot}'s {mac:02x?}"
                    );
                }
            }
            Step::Do(action) => action(&mut fixture).with_context(|| format!("step {i}"))?,
        }
    }
    (case.check)(&mut fixture)
}

/// Runs every case (each on a fresh harness) and fails with the list of those that failed.
fn run<F: Fixture>(group: &str, cases: &[Case<F>]) {
    let mut failures = Vec::new();
    for case in cases {
        let start = std::time::Instant::now();
        match run_case(case) {
            Ok(()) => println!("{group}: {} ... ok ({} ms)", case.name, start.elapsed().as_millis()),
            Err(error) => failures.push(format!("{group}: {}: {error:#}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `ensure!` that a value equals the expected one, naming it.
macro_rules! expect {
    ($what:expr, $actual:expr, $expected:expr) => {{
        let (actual, expected) = ($actual, $expected);
        ensure!(actual == expected, "{}: {:?}, expected {:?}", $what, actual, expected);
    }};
}

// ---------------------------------------------------------------------------------------------
// The tracker.

struct Tracker {
    harness: TrackerHarness,
    client_tokens: HashMap<MapData, u32, u32>,
    join_rate: HashMap<MapData, AddrKey, RateBucket>,
    half_open: HashMap<MapData, FlowKey, HalfOpen>,
}

impl Fixture for Tracker {
    const PROGRAM: &'static str = TRACKER_XDP;
    fn harness(&mut self) -> &mut TestHarness {
        &mut self.harness
    }
}

impl Tracker {
    fn new(config: DataplaneConfig) -> Result<Self> {
        let mut harness = tracker_harness()?;
        harness.tables.write_config(&config)?;
        let client_tokens =
            HashMap::try_from(harness.take_map(CLIENT_TOKENS_MAP).context(CLIENT_TOKENS_MAP)?)?;
        let join_rate = HashMap::try_from(harness.take_map(JOIN_RATE_MAP).context(JOIN_RATE_MAP)?)?;
        let half_open = HashMap::try_from(harness.take_map(HALF_OPEN_MAP).context(HALF_OPEN_MAP)?)?;
        Ok(Self { harness, client_tokens, join_rate, half_open })
    }

    /// With the connection of SERVER_KEY (and CLIENT_KEY) in the tables, as the handshake
    /// leaves it.
    fn with_connection(config: DataplaneConfig) -> Result<Self> {
        let mut tracker = Self::new(config)?;
        let token = server_token();
        let connection = Connection {
            server_key: SERVER_KEY,
            client_key: CLIENT_KEY,
            server_token: token,
            client_token: handshake::token(CLIENT_KEY),
            flags: connection_flags::SERVER_KEY | connection_flags::CLIENT_KEY,
            subflows: 1,
            version: 1,
            ..Connection::default()
        };
        tracker.harness.tables.connections.insert(token, connection, 0)?;
        tracker.client_tokens.insert(handshake::token(CLIENT_KEY), token, 0)?;
        Ok(tracker)
    }

    fn counters(&self) -> Result<PacketCounters> {
        Ok(self.harness.counters()?.ingress)
    }

    /// The subflow, established or half-open.
    fn subflow(&self, a: Endpoint, b: Endpoint) -> Result<Subflow> {
        self.harness.tables.subflow(&key(a, b))?.with_context(|| format!("no subflow {a:?} {b:?}"))
    }

    /// Whether the subflow is in SUBFLOWS (its handshake completed), not HALF_OPEN_SUBFLOWS.
    fn is_established(&self, a: Endpoint, b: Endpoint) -> bool {
        self.harness.tables.subflows.get(&key(a, b), 0).is_ok()
    }

    fn has_subflow(&self, a: Endpoint, b: Endpoint) -> bool {
        matches!(self.harness.tables.subflow(&key(a, b)), Ok(Some(_)))
    }

    fn connection(&self) -> Result<Connection> {
        self.harness
            .tables
            .connections
            .get(&server_token(), 0)
            .context("no connection under the server token")
    }

    fn set_verdict(&mut self, a: Endpoint, b: Endpoint, verdict: u8) -> Result<()> {
        Ok(self.harness.tables.verdicts.insert(key(a, b), verdict, 0)?)
    }
}

fn config(admission: u32) -> DataplaneConfig {
    DataplaneConfig { admission, ..DataplaneConfig::default() }
}

fn join_syn(from: Endpoint, to: Endpoint, token: u32) -> Segment {
    Segment::syn(from, to).with(MptcpOption::Join(MpJoin::Syn { backup: false, addr_id: 1, token, nonce: 7 }))
}

fn join_syn_ack(from: Endpoint, to: Endpoint) -> Segment {
    Segment::syn_ack(from, to).with(MptcpOption::Join(MpJoin::SynAck {
        backup: false,
        addr_id: 0,
        truncated_hmac: 0x0102_0304_0506_0708,
        nonce: 9,
    }))
}

fn join_ack(from: Endpoint, to: Endpoint) -> Segment {
    Segment::new(from, to).with(MptcpOption::Join(MpJoin::Ack { hmac: [4; 20] }))
}

/// The three frames of an MP_JOIN handshake from CLIENT2 to SERVER, each passed.
fn join_handshake<F>(token: u32) -> Vec<Step<F>> {
    vec![
        frame(join_syn(CLIENT2, SERVER, token), XDP_PASS),
        frame(join_syn_ack(SERVER, CLIENT2), XDP_PASS),
        frame(join_ack(CLIENT2, SERVER), XDP_PASS),
    ]
}

/// The three frames of the MP_CAPABLE handshake between CLIENT and SERVER, each passed.
fn capable_handshake<F>() -> Vec<Step<F>> {
    vec![
        frame(Segment::syn(CLIENT, SERVER).with(capable(None, None)), XDP_PASS),
        frame(Segment::syn_ack(SERVER, CLIENT).with(capable(Some(SERVER_KEY), None)), XDP_PASS),
        frame(Segment::new(CLIENT, SERVER).with(capable(Some(CLIENT_KEY), Some(SERVER_KEY))), XDP_PASS),
    ]
}

/// [`frames::dss`], the mapping first as the tables read.
fn dss(mapping: Option<(u64, u32, u16)>, data_ack: Option<u64>, data_fin: bool) -> MptcpOption {
    frames::dss(data_ack, mapping, data_fin)
}

/// The client's first data sequence number: right after its IDSN (RFC 8684 3.3).
fn client_dsn() -> u64 {
    handshake::idsn(CLIENT_KEY).wrapping_add(1)
}

/// After a join from CLIENT2 whose HMAC the agent found `verdict`, the data from CLIENT2.
fn data_after_verdict<const VERDICT: u8>(_: &Tracker) -> Result<Vec<Step<Tracker>>> {
    let mut steps = join_handshake(server_token());
    steps.push(Step::Do(|t: &mut Tracker| t.set_verdict(CLIENT2, SERVER, VERDICT)));
    Ok(steps)
}

fn data_from_join() -> Segment {
    Segment::new(CLIENT2, SERVER).with(dss(Some((client_dsn(), 1, 100)), None, false)).payload(100)
}

/// Spoofed MP_CAPABLE handshakes the flood case sends (SYN plus the server's SYN-ACK each).
const FLOOD_HANDSHAKES: u32 = 1_000_000;

/// The `i`-th spoofed client: 512 documentation addresses (198.51.100.0/24, 203.0.113.0/24)
/// times ports from 1024, so every handshake has its own 4-tuple.
fn spoofed(i: u32) -> Endpoint {
    let host = (i % 256) as u8;
    let addr = if i % 512 < 256 { [198, 51, 100, host] } else { [203, 0, 113, host] };
    (addr, 1024 + (i / 512) as u16)
}

/// Runs `FLOOD_HANDSHAKES` spoofed clients' frames, `frames(client, i)` each and each `times`
/// times in a row, through `program`; every run must get `action`. One test run per frame: with
/// a repeat count above 1, BPF_PROG_TEST_RUN of XDP swaps the program into the XDP dispatcher,
/// which waits for an RCU grace period, twice per call.
fn run_flood(
    harness: &mut TestHarness,
    program: &'static str,
    action: u32,
    times: u32,
    frames: fn(Endpoint, u32) -> Vec<Segment>,
) -> Result<()> {
    let start = std::time::Instant::now();
    for i in 0..FLOOD_HANDSHAKES {
        for segment in frames(spoofed(i), i) {
            let frame = segment.frame()?;
            for _ in 0..times {
                let result = harness.run_xdp(program, &frame, 1)?;
                ensure!(result.action == action, "spoofed client {i}: {}", action_name(result.action));
            }
        }
    }
    println!("flood: {FLOOD_HANDSHAKES} spoofed clients in {} ms", start.elapsed().as_millis());
    Ok(())
}

/// A SYN flood the server answers (Linux does, syncookies included): each spoofed SYN gets a
/// SYN-ACK with a server key of its own; no third ACK follows.
fn flood(t: &mut Tracker) -> Result<()> {
    run_flood(&mut t.harness, TRACKER_XDP, XDP_PASS, 1, |client, i| {
        let key = 0xf100_0000_0000_0000 | u64::from(i);
        vec![
            Segment::syn(client, SERVER).with(capable(None, None)),
            Segment::syn_ack(SERVER, client).with(capable(Some(key), None)),
        ]
    })
}

fn admission_cases() -> Vec<Case<Tracker>> {
    vec![
        Case {
            name: "known-token: a SYN flood answered by SYN-ACKs evicts no established connection",
            setup: || Tracker::new(config(admission::KNOWN_TOKEN)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(Step::Do(flood));
                steps.push(frame(join_syn(CLIENT2, SERVER, server_token()), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                let c = t.connection()?;
                expect!("server_key", c.server_key, SERVER_KEY);
                expect!("client_key", c.client_key, CLIENT_KEY);
                expect!("client_token", c.client_token, handshake::token(CLIENT_KEY));
                expect!("flags", c.flags, connection_flags::SERVER_KEY | connection_flags::CLIENT_KEY);
                expect!("subflows", c.subflows, 2);
                expect!(
                    "CLIENT_TOKENS entry",
                    t.client_tokens.get(&handshake::token(CLIENT_KEY), 0).ok(),
                    Some(server_token())
                );
                let initial = t.harness.tables.subflows.get(&key(CLIENT, SERVER), 0)?;
                expect!("initial subflow conn_token", initial.conn_token, server_token());
                expect!("initial subflow state", initial.state, subflow_state::ESTABLISHED);
                let join = t.subflow(CLIENT2, SERVER)?;
                expect!("join conn_token", join.conn_token, server_token());
                expect!("join kind", join.kind, subflow_kind::JOIN);
                let n = t.counters()?;
                expect!("joins_admitted", n.joins_admitted, 1);
                expect!("joins_dropped_unknown_token", n.joins_dropped_unknown_token, 0);
                expect!("connections_created", n.connections_created, 1);
                expect!("half_open_created", n.half_open_created, u64::from(FLOOD_HANDSHAKES) + 1);
                ensure!(
                    n.half_open_subflows_created > u64::from(FLOOD_HANDSHAKES),
                    "half_open_subflows_created: {}",
                    n.half_open_subflows_created
                );
                expect!("subflows_established", n.subflows_established, 1);
                Ok(())
            },
        },
        Case {
            name: "known-token: MP_JOIN SYN with an unknown token dropped",
            setup: || Tracker::new(config(admission::KNOWN_TOKEN)),
            steps: |_| Ok(vec![frame(join_syn(CLIENT2, SERVER, 0xdead_beef), XDP_DROP)]),
            check: |t| {
                let c = t.counters()?;
                expect!("joins_dropped_unknown_token", c.joins_dropped_unknown_token, 1);
                expect!("joins_admitted", c.joins_admitted, 0);
                expect!("mp_join", c.mp_join, 1);
                expect!("subflows_created", c.subflows_created, 0);
                expect!("subflow entry", t.has_subflow(CLIENT2, SERVER), false);
                Ok(())
            },
        },
        Case {
            name: "verified: MP_JOIN SYN with an unknown token dropped",
            setup: || Tracker::new(config(admission::VERIFIED)),
            steps: |_| Ok(vec![frame(join_syn(CLIENT2, SERVER, 0xdead_beef), XDP_DROP)]),
            check: |t| {
                expect!("joins_dropped_unknown_token", t.counters()?.joins_dropped_unknown_token, 1);
                expect!("subflow entry", t.has_subflow(CLIENT2, SERVER), false);
                Ok(())
            },
        },
        Case {
            name: "known-token: MP_JOIN SYN with the server's token admitted",
            setup: || Tracker::with_connection(config(admission::KNOWN_TOKEN)),
            steps: |_| Ok(vec![frame(join_syn(CLIENT2, SERVER, server_token()), XDP_PASS)]),
            check: |t| {
                let c = t.counters()?;
                expect!("joins_admitted", c.joins_admitted, 1);
                expect!("joins_dropped_unknown_token", c.joins_dropped_unknown_token, 0);
                let s = t.subflow(CLIENT2, SERVER)?;
                expect!("kind", s.kind, subflow_kind::JOIN);
                expect!("state", s.state, subflow_state::SYN_SENT);
                expect!("conn_token", s.conn_token, server_token());
                expect!("connection subflows", t.connection()?.subflows, 2);
                Ok(())
            },
        },
        Case {
            name: "known-token: MP_JOIN SYN from the server with the client's token admitted",
            setup: || Tracker::with_connection(config(admission::KNOWN_TOKEN)),
            steps: |_| {
                Ok(vec![frame(join_syn(port(SERVER, 8080), CLIENT2, handshake::token(CLIENT_KEY)), XDP_PASS)])
            },
            check: |t| {
                expect!("joins_admitted", t.counters()?.joins_admitted, 1);
                let s = t.subflow(port(SERVER, 8080), CLIENT2)?;
                expect!("conn_token", s.conn_token, server_token());
                expect!("join_token", s.join_token, handshake::token(CLIENT_KEY));
                expect!("server_initiated", s.server_initiated, 1);
                expect!("connection subflows", t.connection()?.subflows, 2);
                Ok(())
            },
        },
        Case {
            name: "rate limit: the burst+1-th MP_JOIN SYN from one source dropped and counted",
            setup: || {
                Tracker::new(DataplaneConfig {
                    admission: admission::ALLOW,
                    join_rate_per_sec: 1,
                    join_burst: 2,
                    ..DataplaneConfig::default()
                })
            },
            steps: |_| {
                Ok(vec![
                    frame(join_syn(port(CLIENT2, 50_000), SERVER, 1), XDP_PASS),
                    frame(join_syn(port(CLIENT2, 50_001), SERVER, 1), XDP_PASS),
                    frame(join_syn(port(CLIENT2, 50_002), SERVER, 1), XDP_DROP),
                    // Another source has a bucket of its own.
                    frame(join_syn(port(CLIENT, 50_003), SERVER, 1), XDP_PASS),
                ])
            },
            check: |t| {
                let c = t.counters()?;
                expect!("joins_dropped_rate_limit", c.joins_dropped_rate_limit, 1);
                expect!("joins_admitted", c.joins_admitted, 3);
                expect!("subflows_created", c.subflows_created, 3);
                expect!("dropped join's subflow", t.has_subflow(port(CLIENT2, 50_002), SERVER), false);
                let source = AddrKey { addr: addr_bytes(ipv4_mapped(CLIENT2.0)) };
                let bucket = t.join_rate.get(&source, 0).context("no rate bucket for the source")?;
                // Less than one join left (the refill of a few milliseconds at 1/s is below 1000).
                ensure!(bucket.millitokens < 1000, "{} millitokens left after the burst", bucket.millitokens);
                Ok(())
            },
        },
        Case {
            name: "verified: a subflow whose HMAC failed has its later packets dropped",
            setup: || Tracker::with_connection(config(admission::VERIFIED)),
            steps: |t| {
                let mut steps = data_after_verdict::<{ hmac_verdict::FAILED }>(t)?;
                steps.push(frame(data_from_join(), XDP_DROP));
                steps.push(frame(Segment::new(SERVER, CLIENT2), XDP_DROP));
                Ok(steps)
            },
            check: |t| {
                let c = t.counters()?;
                expect!("packets_dropped_hmac", c.packets_dropped_hmac, 2);
                expect!("joins_admitted", c.joins_admitted, 1);
                expect!("subflow hmac", t.subflow(CLIENT2, SERVER)?.hmac, hmac_verdict::FAILED);
                Ok(())
            },
        },
        Case {
            name: "verified: HMAC pending until the agent's verdict, then verified passes",
            setup: || Tracker::with_connection(config(admission::VERIFIED)),
            steps: |_| {
                let mut steps = join_handshake(server_token());
                steps.push(Step::Do(|t: &mut Tracker| {
                    expect!(
                        "hmac before the verdict",
                        t.subflow(CLIENT2, SERVER)?.hmac,
                        hmac_verdict::PENDING
                    );
                    t.set_verdict(CLIENT2, SERVER, hmac_verdict::VERIFIED)
                }));
                steps.push(frame(data_from_join(), XDP_PASS));
                steps.push(frame(Segment::new(SERVER, CLIENT2), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                expect!("packets_dropped_hmac", t.counters()?.packets_dropped_hmac, 0);
                expect!("subflow hmac", t.subflow(CLIENT2, SERVER)?.hmac, hmac_verdict::VERIFIED);
                Ok(())
            },
        },
        Case {
            name: "known-token: a failed HMAC is recorded, not enforced",
            setup: || Tracker::with_connection(config(admission::KNOWN_TOKEN)),
            steps: |t| {
                let mut steps = data_after_verdict::<{ hmac_verdict::FAILED }>(t)?;
                steps.push(frame(data_from_join(), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                expect!("packets_dropped_hmac", t.counters()?.packets_dropped_hmac, 0);
                expect!("subflow hmac", t.subflow(CLIENT2, SERVER)?.hmac, hmac_verdict::FAILED);
                Ok(())
            },
        },
        Case {
            name: "observe only: unknown token, failed HMAC and join bursts all pass",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |t| {
                // An unknown token (no connection set up), then a failed verdict.
                let mut steps = data_after_verdict::<{ hmac_verdict::FAILED }>(t)?;
                steps.push(frame(data_from_join(), XDP_PASS));
                for p in 1..=5 {
                    steps.push(frame(join_syn(port(CLIENT2, 50_000 + p), SERVER, 0xdead_beef), XDP_PASS));
                }
                Ok(steps)
            },
            check: |t| {
                let c = t.counters()?;
                expect!("joins_admitted", c.joins_admitted, 6);
                expect!("joins_dropped_unknown_token", c.joins_dropped_unknown_token, 0);
                expect!("joins_dropped_rate_limit", c.joins_dropped_rate_limit, 0);
                expect!("packets_dropped_hmac", c.packets_dropped_hmac, 0);
                let s = t.subflow(CLIENT2, SERVER)?;
                expect!("conn_token", s.conn_token, 0);
                expect!("subflow hmac", s.hmac, hmac_verdict::FAILED);
                Ok(())
            },
        },
    ]
}

fn tracking_cases() -> Vec<Case<Tracker>> {
    vec![
        Case {
            name: "the fuzz targets' crafted session: one connection, both keys, its join verified",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| Ok(frames::mptcp_session()?.into_iter().map(|s| frame(s, XDP_PASS)).collect()),
            check: |t| {
                t.harness.process_events();
                let token = handshake::token(frames::SESSION_SERVER_KEY);
                let c = t.harness.tables.connections.get(&token, 0).context("no connection")?;
                let keys = connection_flags::CLIENT_KEY | connection_flags::SERVER_KEY;
                expect!("key flags", c.flags & keys, keys);
                expect!("client token", c.client_token, handshake::token(frames::SESSION_CLIENT_KEY));
                expect!("subflows", c.subflows, 2);
                let join = key(frames::SESSION_CLIENT_2, frames::SESSION_SERVER);
                let subflows = t.harness.tables.subflows()?;
                let (_, s) = subflows.iter().find(|(k, _)| *k == join).context("no join subflow")?;
                expect!("join conn_token", s.conn_token, token);
                expect!("join HMAC", s.hmac, hmac_verdict::VERIFIED);
                expect!("fallback", s.fallback, 0);
                Ok(())
            },
        },
        Case {
            name: "MP_CAPABLE SYN: initial subflow in SYN_SENT, no connection yet",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| Ok(vec![frame(Segment::syn(CLIENT, SERVER).with(capable(None, None)), XDP_PASS)]),
            check: |t| {
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("kind", s.kind, subflow_kind::INITIAL);
                expect!("state", s.state, subflow_state::SYN_SENT);
                expect!("conn_token", s.conn_token, 0);
                // CLIENT sorts before SERVER: side a of the key sent the SYN.
                expect!("client_is_b", s.client_is_b, 0);
                expect!("client MPTCP flag", s.dir[0].flags & direction_flags::MPTCP, direction_flags::MPTCP);
                expect!("client packets", s.dir[0].packets, 1);
                let c = t.counters()?;
                expect!("subflows_created", c.subflows_created, 1);
                expect!("connections_created", c.connections_created, 0);
                expect!("mp_capable", c.mp_capable, 1);
                Ok(())
            },
        },
        Case {
            name: "MP_CAPABLE SYN on a 4-tuple reused after RST: a new connection",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(Segment::new(SERVER, CLIENT).rst(), XDP_PASS));
                steps.push(frame(Segment::syn(CLIENT, SERVER).with(capable(None, None)), XDP_PASS));
                steps.push(frame(Segment::syn_ack(SERVER, CLIENT).with(capable(Some(0x99), None)), XDP_PASS));
                steps.push(frame(
                    Segment::new(CLIENT, SERVER).with(capable(Some(0x77), Some(0x99))),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("state", s.state, subflow_state::ESTABLISHED);
                expect!("conn_token", s.conn_token, handshake::token(0x99));
                let c = t
                    .harness
                    .tables
                    .connections
                    .get(&handshake::token(0x99), 0)
                    .context("no new connection")?;
                expect!("client_key", c.client_key, 0x77);
                expect!("packets", s.dir[0].packets, 2);
                Ok(())
            },
        },
        Case {
            name: "MP_CAPABLE SYN retransmitted, before and after the SYN-ACK: the same subflow",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let syn = Segment::syn(CLIENT, SERVER).with(capable(None, None));
                let mut steps = vec![frame(syn.clone(), XDP_PASS)];
                steps.extend(capable_handshake().into_iter().take(2));
                steps.push(frame(syn, XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("state", s.state, subflow_state::SYN_RECEIVED);
                expect!("conn_token", s.conn_token, 0);
                expect!("client packets", s.dir[0].packets, 3);
                expect!("subflows_created", t.counters()?.subflows_created, 1);
                expect!("half-open key", t.half_open.get(&key(CLIENT, SERVER), 0)?.server_key, SERVER_KEY);
                Ok(())
            },
        },
        Case {
            name: "MP_JOIN SYN on a 4-tuple reused after FIN: linked to the new token's connection",
            setup: || {
                let mut t = Tracker::with_connection(config(admission::ALLOW))?;
                let other = Connection {
                    server_key: 0x99,
                    server_token: handshake::token(0x99),
                    subflows: 1,
                    ..Connection::default()
                };
                t.harness.tables.connections.insert(handshake::token(0x99), other, 0)?;
                Ok(t)
            },
            steps: |_| {
                let mut steps = join_handshake(server_token());
                steps.push(frame(Segment::new(CLIENT2, SERVER).fin(), XDP_PASS));
                steps.extend(join_handshake(handshake::token(0x99)));
                Ok(steps)
            },
            check: |t| {
                let s = t.subflow(CLIENT2, SERVER)?;
                expect!("conn_token", s.conn_token, handshake::token(0x99));
                expect!("join_token", s.join_token, handshake::token(0x99));
                expect!("state", s.state, subflow_state::ESTABLISHED);
                expect!("client FIN flag", s.dir[0].flags & direction_flags::FIN, 0);
                let other = t.harness.tables.connections.get(&handshake::token(0x99), 0)?;
                expect!("new connection's subflows", other.subflows, 2);
                expect!("subflows_created", t.counters()?.subflows_created, 2);
                Ok(())
            },
        },
        Case {
            name: "MP_CAPABLE SYN-ACK: the server's key held half-open, no connection yet",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| Ok(capable_handshake().into_iter().take(2).collect()),
            check: |t| {
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("state", s.state, subflow_state::SYN_RECEIVED);
                expect!("conn_token", s.conn_token, 0);
                expect!("server packets", s.dir[1].packets, 1);
                expect!("server MPTCP flag", s.dir[1].flags & direction_flags::MPTCP, direction_flags::MPTCP);
                expect!("in SUBFLOWS", t.is_established(CLIENT, SERVER), false);
                let h = t.half_open.get(&key(CLIENT, SERVER), 0).context("no HALF_OPEN entry")?;
                expect!("half-open server_key", h.server_key, SERVER_KEY);
                expect!("half-open version", h.version, 1);
                expect!("connection", t.connection().is_ok(), false);
                let n = t.counters()?;
                expect!("connections_created", n.connections_created, 0);
                expect!("half_open_created", n.half_open_created, 1);
                expect!("half_open_subflows_created", n.half_open_subflows_created, 1);
                Ok(())
            },
        },
        Case {
            name: "MP_CAPABLE third ACK: the client's key completes the connection",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| Ok(capable_handshake()),
            check: |t| {
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("state", s.state, subflow_state::ESTABLISHED);
                expect!("kind", s.kind, subflow_kind::INITIAL);
                expect!("fallback", s.fallback, fallback_reason::NONE);
                expect!("client packets", s.dir[0].packets, 2);
                let c = t.connection()?;
                expect!("client_key", c.client_key, CLIENT_KEY);
                expect!("client_token", c.client_token, handshake::token(CLIENT_KEY));
                expect!("client_idsn", c.client_idsn, handshake::idsn(CLIENT_KEY));
                expect!("data_start[0]", c.data_start[0], client_dsn());
                expect!("server_key", c.server_key, SERVER_KEY);
                expect!("flags", c.flags, connection_flags::SERVER_KEY | connection_flags::CLIENT_KEY);
                expect!("subflows", c.subflows, 1);
                expect!(
                    "CLIENT_TOKENS entry",
                    t.client_tokens.get(&handshake::token(CLIENT_KEY), 0).ok(),
                    Some(server_token())
                );
                let n = t.counters()?;
                expect!("connections_created", n.connections_created, 1);
                expect!("subflows_created", n.subflows_created, 1);
                expect!("mp_capable", n.mp_capable, 3);
                expect!("subflows_established", n.subflows_established, 1);
                expect!("in SUBFLOWS", t.is_established(CLIENT, SERVER), true);
                expect!("HALF_OPEN entry", t.half_open.get(&key(CLIENT, SERVER), 0).is_ok(), false);
                Ok(())
            },
        },
        Case {
            name: "MP_CAPABLE third ACK alone (SYN-ACK unseen) creates the connection with both keys",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.remove(1);
                Ok(steps)
            },
            check: |t| {
                expect!("state", t.subflow(CLIENT, SERVER)?.state, subflow_state::ESTABLISHED);
                let c = t.connection()?;
                expect!("server_key", c.server_key, SERVER_KEY);
                expect!("client_key", c.client_key, CLIENT_KEY);
                expect!("flags", c.flags, connection_flags::SERVER_KEY | connection_flags::CLIENT_KEY);
                Ok(())
            },
        },
        Case {
            name: "MP_JOIN handshake links the subflow to its connection",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::syn(CLIENT2, SERVER).with(MptcpOption::Join(MpJoin::Syn {
                        backup: true,
                        addr_id: 1,
                        token: server_token(),
                        nonce: 7,
                    })),
                    XDP_PASS,
                ));
                steps.extend(join_handshake(server_token()).into_iter().skip(1));
                Ok(steps)
            },
            check: |t| {
                let s = t.subflow(CLIENT2, SERVER)?;
                expect!("kind", s.kind, subflow_kind::JOIN);
                expect!("state", s.state, subflow_state::ESTABLISHED);
                expect!("conn_token", s.conn_token, server_token());
                expect!("join_token", s.join_token, server_token());
                expect!("join_nonce_client", s.join_nonce_client, 7);
                expect!("join_nonce_server", s.join_nonce_server, 9);
                expect!("join_synack_hmac", s.join_synack_hmac, 0x0102_0304_0506_0708);
                expect!("join_ack_hmac", s.join_ack_hmac, [4; 20]);
                expect!("hmac", s.hmac, hmac_verdict::PENDING);
                expect!("server_initiated", s.server_initiated, 0);
                expect!("client addr_id", s.dir[0].addr_id, 1);
                expect!("server addr_id", s.dir[1].addr_id, 0);
                expect!(
                    "client flags",
                    s.dir[0].flags & (direction_flags::MPTCP | direction_flags::BACKUP),
                    direction_flags::MPTCP | direction_flags::BACKUP
                );
                expect!("server flags", s.dir[1].flags & direction_flags::BACKUP, 0);
                expect!("connection subflows", t.connection()?.subflows, 2);
                expect!("subflows_created", t.counters()?.subflows_created, 2);
                Ok(())
            },
        },
        Case {
            name: "DSS mappings count each data byte once; the data ACK is recorded",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let dsn = client_dsn();
                let mut steps = capable_handshake();
                // A 2800-byte mapping over two segments (each repeats it), then a new one.
                for _ in 0..2 {
                    steps.push(frame(
                        Segment::new(CLIENT, SERVER)
                            .with(dss(Some((dsn, 1, 2800)), None, false))
                            .payload(1400),
                        XDP_PASS,
                    ));
                }
                steps.push(frame(
                    Segment::new(CLIENT, SERVER)
                        .with(dss(Some((dsn + 2800, 2801, 1000)), None, false))
                        .payload(1000),
                    XDP_PASS,
                ));
                steps.push(frame(
                    Segment::new(SERVER, CLIENT).with(dss(None, Some(dsn + 3800), false)),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                let dsn = client_dsn();
                let c = t.connection()?;
                expect!("data_bytes[0]", c.data_bytes[0], 3800);
                expect!("mapped_bytes[0]", c.mapped_bytes[0], 3800);
                expect!("mapped_end[0]", c.mapped_end[0], dsn + 3800);
                expect!("data_bytes[1]", c.data_bytes[1], 0);
                expect!("reinjections", c.reinjections, 0);
                expect!("data_ack[0]", c.data_ack[0], dsn + 3800);
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("client bytes", s.dir[0].bytes, 3800);
                expect!("client packets", s.dir[0].packets, 5);
                expect!("map_dsn", s.dir[0].map_dsn, dsn + 2800);
                expect!("map_ssn", s.dir[0].map_ssn, 2801);
                expect!("map_len", s.dir[0].map_len, 1000);
                expect!("dsn_end", s.dir[0].dsn_end, dsn + 3800);
                expect!("server data_ack", s.dir[1].data_ack, dsn + 3800);
                expect!("fallback", s.fallback, fallback_reason::NONE);
                Ok(())
            },
        },
        Case {
            name: "DSS mapping back in data sequence on its subflow: reinjection counted",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let dsn = client_dsn();
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::new(CLIENT, SERVER).with(dss(Some((dsn, 1, 1000)), None, false)).payload(1000),
                    XDP_PASS,
                ));
                // The same data again, at new subflow sequence numbers.
                steps.push(frame(
                    Segment::new(CLIENT, SERVER)
                        .with(dss(Some((dsn, 1001, 1000)), None, false))
                        .payload(1000),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                let c = t.connection()?;
                expect!("data_bytes[0]", c.data_bytes[0], 1000);
                expect!("mapped_bytes[0]", c.mapped_bytes[0], 2000);
                expect!("reinjections", c.reinjections, 1);
                expect!("client bytes", t.subflow(CLIENT, SERVER)?.dir[0].bytes, 2000);
                Ok(())
            },
        },
        Case {
            name: "segments without MPTCP options, judged in place or walked, count alike",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(Step::Do(|t: &mut Tracker| {
                    let raw = |src: Endpoint, options: &[u8]| {
                        frames::RawSegment {
                            src: SocketAddr::from(src),
                            dst: SocketAddr::from(SERVER),
                            flags: frames::tcp_flag::ACK,
                            seq: 1000,
                            ack: 1,
                            options,
                            payload: &[],
                        }
                        .frame()
                    };
                    let timestamps = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
                    let untracked = ([192, 0, 2, 1], 40_001);
                    // A header claiming timestamps that the frame cuts short.
                    let mut cut = raw(untracked, &timestamps)?;
                    cut.truncate(cut.len() - 8);
                    let frames = [
                        // In place: no options, timestamps alone; walked: another layout.
                        raw(CLIENT, &[])?,
                        raw(CLIENT, &timestamps)?,
                        raw(CLIENT, &[1, 1, 4, 2])?,
                        raw(untracked, &timestamps)?,
                        cut,
                    ];
                    let before = t.counters()?;
                    let packets = t.subflow(CLIENT, SERVER)?.dir[0].packets;
                    for (i, frame) in frames.iter().enumerate() {
                        let action = t.harness.run_xdp(TRACKER_XDP, frame, 1)?.action;
                        ensure!(action == XDP_PASS, "frame {i}: {}", action_name(action));
                    }
                    let after = t.counters()?;
                    expect!("tcp_packets", after.tcp_packets - before.tcp_packets, 5);
                    expect!("tcp_without_mptcp", after.tcp_without_mptcp - before.tcp_without_mptcp, 5);
                    expect!("malformed", after.malformed - before.malformed, 1);
                    expect!("subflow packets", t.subflow(CLIENT, SERVER)?.dir[0].packets - packets, 3);
                    ensure!(!t.has_subflow(untracked, SERVER), "the untracked 4-tuple got a subflow");
                    Ok(())
                }));
                Ok(steps)
            },
            check: |t| {
                ensure!(t.subflow(CLIENT, SERVER)?.fallback == 0, "pure ACKs without DSS made a fallback");
                Ok(())
            },
        },
        Case {
            name: "MP_PRIO: the sender's backup flag set, then cleared",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let prio = |backup| MptcpOption::Prio(MpPrio { backup, addr_id: None });
                let mut steps = capable_handshake();
                steps.push(frame(Segment::new(SERVER, CLIENT).with(prio(true)), XDP_PASS));
                steps.push(Step::Do(|t: &mut Tracker| {
                    let s = t.subflow(CLIENT, SERVER)?;
                    expect!(
                        "server BACKUP flag",
                        s.dir[1].flags & direction_flags::BACKUP,
                        direction_flags::BACKUP
                    );
                    expect!("client BACKUP flag", s.dir[0].flags & direction_flags::BACKUP, 0);
                    Ok(())
                }));
                steps.push(frame(Segment::new(SERVER, CLIENT).with(prio(false)), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                expect!(
                    "server BACKUP flag",
                    t.subflow(CLIENT, SERVER)?.dir[1].flags & direction_flags::BACKUP,
                    0
                );
                expect!("mp_prio", t.counters()?.mp_prio, 2);
                Ok(())
            },
        },
        Case {
            name: "DSS infinite mapping: fallback recorded on subflow and connection",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::new(CLIENT, SERVER)
                        .with(dss(Some((client_dsn(), 1, 0)), None, false))
                        .payload(100),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                expect!(
                    "subflow fallback",
                    t.subflow(CLIENT, SERVER)?.fallback,
                    fallback_reason::INFINITE_MAPPING
                );
                let c = t.connection()?;
                expect!("connection fallback", c.fallback, fallback_reason::INFINITE_MAPPING);
                expect!("FALLBACK flag", c.flags & connection_flags::FALLBACK, connection_flags::FALLBACK);
                expect!("data_bytes[0]", c.data_bytes[0], 0);
                Ok(())
            },
        },
        Case {
            name: "SYN-ACK without MP_CAPABLE: fallback, no connection",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                Ok(vec![
                    frame(Segment::syn(CLIENT, SERVER).with(capable(None, None)), XDP_PASS),
                    frame(Segment::syn_ack(SERVER, CLIENT), XDP_PASS),
                ])
            },
            check: |t| {
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("fallback", s.fallback, fallback_reason::NO_MP_CAPABLE_REPLY);
                expect!("conn_token", s.conn_token, 0);
                expect!("server MPTCP flag", s.dir[1].flags & direction_flags::MPTCP, 0);
                expect!("connections_created", t.counters()?.connections_created, 0);
                expect!("connection", t.connection().is_err(), true);
                Ok(())
            },
        },
        Case {
            name: "first data segment without DSS or MP_CAPABLE data: fallback",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(Segment::new(CLIENT, SERVER).payload(100), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                expect!(
                    "subflow fallback",
                    t.subflow(CLIENT, SERVER)?.fallback,
                    fallback_reason::OPTIONS_VANISHED
                );
                let c = t.connection()?;
                expect!("connection fallback", c.fallback, fallback_reason::OPTIONS_VANISHED);
                expect!("FALLBACK flag", c.flags & connection_flags::FALLBACK, connection_flags::FALLBACK);
                Ok(())
            },
        },
        Case {
            name: "one 3000-byte mapping in the first of three 1000-byte segments: no fallback",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                // ISN 1000 (the SYN's), so relative subflow sequence 1 is TCP sequence 1001.
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::new(CLIENT, SERVER)
                        .seq(1001)
                        .with(dss(Some((client_dsn(), 1, 3000)), None, false))
                        .payload(1000),
                    XDP_PASS,
                ));
                steps.push(frame(Segment::new(CLIENT, SERVER).seq(2001).payload(1000), XDP_PASS));
                // A data ACK alone from the server, then the third segment with nothing MPTCP.
                steps.push(frame(
                    Segment::new(SERVER, CLIENT).with(dss(None, Some(client_dsn() + 2000), false)),
                    XDP_PASS,
                ));
                steps.push(frame(Segment::new(CLIENT, SERVER).seq(3001).payload(1000), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("subflow fallback", s.fallback, fallback_reason::NONE);
                expect!("client ISN", s.dir[0].isn, 1000);
                expect!("client bytes", s.dir[0].bytes, 3000);
                let c = t.connection()?;
                expect!("connection fallback", c.fallback, fallback_reason::NONE);
                expect!("FALLBACK flag", c.flags & connection_flags::FALLBACK, 0);
                expect!("data_bytes[0]", c.data_bytes[0], 3000);
                Ok(())
            },
        },
        Case {
            name: "a segment beyond its mapping without DSS: fallback",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::new(CLIENT, SERVER)
                        .seq(1001)
                        .with(dss(Some((client_dsn(), 1, 2000)), None, false))
                        .payload(1000),
                    XDP_PASS,
                ));
                steps.push(frame(Segment::new(CLIENT, SERVER).seq(2001).payload(1000), XDP_PASS));
                steps.push(Step::Do(|t: &mut Tracker| {
                    expect!("fallback", t.subflow(CLIENT, SERVER)?.fallback, fallback_reason::NONE);
                    Ok(())
                }));
                steps.push(frame(Segment::new(CLIENT, SERVER).seq(3001).payload(1000), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                expect!(
                    "subflow fallback",
                    t.subflow(CLIENT, SERVER)?.fallback,
                    fallback_reason::OPTIONS_VANISHED
                );
                expect!("connection fallback", t.connection()?.fallback, fallback_reason::OPTIONS_VANISHED);
                Ok(())
            },
        },
        Case {
            name: "MP_FAIL: fallback recorded",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::new(SERVER, CLIENT).with(MptcpOption::Fail(MpFail { dsn: client_dsn() })),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                expect!("subflow fallback", t.subflow(CLIENT, SERVER)?.fallback, fallback_reason::MP_FAIL);
                expect!("connection fallback", t.connection()?.fallback, fallback_reason::MP_FAIL);
                expect!("mp_fail", t.counters()?.mp_fail, 1);
                Ok(())
            },
        },
        Case {
            name: "MP_FAIL on one of two subflows: that subflow falls back, the connection does not",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.extend(join_handshake(server_token()));
                steps.push(frame(
                    Segment::new(SERVER, CLIENT2).with(MptcpOption::Fail(MpFail { dsn: client_dsn() })),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                expect!("join fallback", t.subflow(CLIENT2, SERVER)?.fallback, fallback_reason::MP_FAIL);
                expect!("initial fallback", t.subflow(CLIENT, SERVER)?.fallback, fallback_reason::NONE);
                let c = t.connection()?;
                expect!("connection fallback", c.fallback, fallback_reason::NONE);
                expect!("FALLBACK flag", c.flags & connection_flags::FALLBACK, 0);
                Ok(())
            },
        },
        Case {
            name: "MP_FASTCLOSE then RST: connection fast-closed, subflow closed",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::new(CLIENT, SERVER)
                        .with(MptcpOption::FastClose(MpFastClose { receiver_key: SERVER_KEY })),
                    XDP_PASS,
                ));
                steps.push(frame(Segment::new(SERVER, CLIENT).rst(), XDP_PASS));
                Ok(steps)
            },
            check: |t| {
                let c = t.connection()?;
                expect!("FASTCLOSE flag", c.flags & connection_flags::FASTCLOSE, connection_flags::FASTCLOSE);
                expect!("FALLBACK flag", c.flags & connection_flags::FALLBACK, 0);
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("state", s.state, subflow_state::CLOSED);
                expect!("server RST flag", s.dir[1].flags & direction_flags::RST, direction_flags::RST);
                expect!("client RST flag", s.dir[0].flags & direction_flags::RST, 0);
                expect!("mp_fastclose", t.counters()?.mp_fastclose, 1);
                Ok(())
            },
        },
        Case {
            name: "RST with MP_TCPRST: connection marked, subflow closed",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                steps.push(frame(
                    Segment::new(SERVER, CLIENT)
                        .rst()
                        .with(MptcpOption::TcpRst(MpTcpRst { flags: 0, reason: 1 })),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                expect!(
                    "TCPRST flag",
                    t.connection()?.flags & connection_flags::TCPRST,
                    connection_flags::TCPRST
                );
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("state", s.state, subflow_state::CLOSED);
                expect!("server RST flag", s.dir[1].flags & direction_flags::RST, direction_flags::RST);
                Ok(())
            },
        },
        Case {
            name: "DATA_FIN and FIN: connection half-closed, subflow closing",
            setup: || Tracker::new(config(admission::ALLOW)),
            steps: |_| {
                let mut steps = capable_handshake();
                // The DATA_FIN alone: a one-byte mapping at the first DSN, no payload.
                steps.push(frame(
                    Segment::new(CLIENT, SERVER).fin().with(dss(Some((client_dsn(), 0, 1)), None, true)),
                    XDP_PASS,
                ));
                Ok(steps)
            },
            check: |t| {
                let c = t.connection()?;
                expect!(
                    "DATA_FIN_C2S",
                    c.flags & connection_flags::DATA_FIN_C2S,
                    connection_flags::DATA_FIN_C2S
                );
                expect!("DATA_FIN_S2C", c.flags & connection_flags::DATA_FIN_S2C, 0);
                expect!("data_bytes[0]", c.data_bytes[0], 0);
                let s = t.subflow(CLIENT, SERVER)?;
                expect!("state", s.state, subflow_state::CLOSING);
                expect!(
                    "client flags",
                    s.dir[0].flags & (direction_flags::FIN | direction_flags::DATA_FIN),
                    direction_flags::FIN | direction_flags::DATA_FIN
                );
                Ok(())
            },
        },
    ]
}

#[test]
fn admission() {
    run("admission", &admission_cases());
}

#[test]
fn tracking() {
    run("tracking", &tracking_cases());
}

/// One MPTCP connection from CLIENT's `client_port` with its own keys: the handshake, then
/// `data` from the client and a DSS data ACK alone from the server after the first segment.
fn crafted_connection(client_port: u16, keys: (u64, u64), data: &[Segment]) -> Vec<Segment> {
    let (client, (client_key, server_key)) = (port(CLIENT, client_port), keys);
    let mut segments = vec![
        Segment::syn(client, SERVER).with(capable(None, None)),
        Segment::syn_ack(SERVER, client).seq(5000).with(capable(Some(server_key), None)),
        Segment::new(client, SERVER).seq(1001).with(capable(Some(client_key), Some(server_key))),
    ];
    for (i, segment) in data.iter().enumerate() {
        segments.push(Segment { src: client, dst: SERVER, ..segment.clone() });
        if i == 0 {
            segments.push(Segment::new(SERVER, client).seq(5001).with(dss(None, Some(1000), false)));
        }
    }
    segments
}

/// decode and replay read one crafted capture and agree on which connection fell back: the
/// one whose 3000-byte mapping covers three segments did not, the one whose first data carries
/// no DSS did (RFC 8684 3.3.1, 3.7), although its peer sends DSS data ACKs.
#[test]
fn decode_and_replay_agree_on_fallback() -> Result<()> {
    use std::collections::BTreeMap;

    use mptcp_agent::analysis::{decode, replay};
    use pcap_file::{
        DataLink,
        pcap::{PcapHeader, PcapPacket, PcapWriter},
    };

    let covered = crafted_connection(
        40_001,
        (CLIENT_KEY, SERVER_KEY),
        &[
            Segment::new(CLIENT, SERVER).seq(1001).with(dss(Some((1, 1, 3000)), None, false)).payload(1000),
            Segment::new(CLIENT, SERVER).seq(2001).payload(1000),
            Segment::new(CLIENT, SERVER).seq(3001).payload(1000),
        ],
    );
    let unmapped = crafted_connection(
        40_002,
        (CLIENT_KEY ^ 1, SERVER_KEY ^ 1),
        &[
            Segment::new(CLIENT, SERVER).seq(1001).payload(1000),
            Segment::new(CLIENT, SERVER).seq(2001).payload(1000),
        ],
    );
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(Vec::new(), header)?;
    for segment in covered.iter().chain(&unmapped) {
        let frame = segment.frame()?;
        writer.write_packet(&PcapPacket::new(std::time::Duration::ZERO, frame.len() as u32, &frame))?;
    }
    let path = std::env::temp_dir().join(format!("fallback-agreement-{}.pcap", std::process::id()));
    std::fs::write(&path, writer.into_writer())?;
    let decoded = decode::decode_file(&path, false);
    let replayed = replay::replay(&path);
    std::fs::remove_file(&path)?;

    let decoded: BTreeMap<SocketAddr, bool> =
        decoded?.subflows.iter().map(|s| (s.initiator, s.fallback.is_some())).collect();
    let replayed: BTreeMap<SocketAddr, bool> = replayed?
        .connections
        .iter()
        .flat_map(|c| c.subflows.iter().map(move |s| (s.client, c.fallback)))
        .collect();
    let addr = |p: u16| SocketAddr::from((CLIENT.0, p));
    let expected = BTreeMap::from([(addr(40_001), false), (addr(40_002), true)]);
    ensure!(decoded == expected, "decode: {decoded:?}, expected {expected:?}");
    ensure!(replayed == expected, "replay: {replayed:?}, expected {expected:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The balancer.

const BACKENDS: [&str; 3] = ["backend1", "backend2", "backend3"];
/// Not a VIP.
const ELSEWHERE: Endpoint = ([192, 0, 2, 99], 80);

struct Balancer {
    harness: TestHarness,
    maps: LbMaps,
    /// The VIP's Maglev table as configured.
    table: Vec<u32>,
    /// What the program hands the sync daemon.
    sync_ring: RingBuf<MapData>,
}

impl Fixture for Balancer {
    const PROGRAM: &'static str = BALANCER_XDP;
    fn harness(&mut self) -> &mut TestHarness {
        &mut self.harness
    }
    fn backend_mac(&self, slot: u32) -> Option<[u8; 6]> {
        Some(synthetic_link(slot).mac)
    }
}

impl Balancer {
    /// One VIP (SERVER) served by `backends` of BACKENDS, configured as `mptcp-agent lb` does.
    fn new(steering: Steering, backends: &[&str]) -> Result<Self> {
        let BalancerHarness { mut harness, maps } = balancer_harness(steering, backends)?;
        let ring = harness.take_map(LB_SYNC_EVENTS_MAP).context("no sync ring")?;
        let sync_ring = RingBuf::try_from(ring)?;
        let members: Vec<maglev::Member<'_>> = BACKENDS
            .iter()
            .enumerate()
            .filter(|(_, name)| backends.contains(name))
            .map(|(slot, name)| maglev::Member { slot: slot as u32, name, weight: 1 })
            .collect();
        let table = maglev::table(&members, MAGLEV_SIZE, NO_BACKEND);
        Ok(Self { harness, maps, table, sync_ring })
    }

    /// Token steering with `settings` in place of the configured ones.
    fn with_settings(settings: LbSettings) -> Result<Self> {
        let mut b = Self::token()?;
        b.maps.settings.set(0, settings, 0)?;
        Ok(b)
    }

    /// A client port whose flow Maglev places on a backend other than `not`'s.
    fn port_placed_apart(&self, client: Endpoint, not: u32) -> Result<Endpoint> {
        (41_000..u16::MAX)
            .map(|p| port(client, p))
            .find(|c| self.pick(*c) != not)
            .context("no port Maglev maps elsewhere")
    }

    /// Every event in the sync ring.
    fn sync_events(&mut self) -> Vec<LbSyncEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.sync_ring.next() {
            events.extend(mptcp_agent::bpf::maps::ring_record::<LbSyncEvent>(&item));
        }
        events
    }

    fn token() -> Result<Self> {
        Self::new(Steering::Token, &BACKENDS)
    }

    /// The backend Maglev picks for the flow between `client` and the VIP.
    fn pick(&self, client: Endpoint) -> u32 {
        self.table[maglev_slot(&key(client, SERVER)) as usize]
    }

    /// A backend other than the one Maglev picks for `client`.
    fn other_than_pick(&self, client: Endpoint) -> u32 {
        (self.pick(client) + 1) % BACKENDS.len() as u32
    }

    fn flow(&self, client: Endpoint) -> Result<LbFlow> {
        self.maps
            .flows
            .get(&key(client, SERVER), 0)
            .with_context(|| format!("no LB_FLOWS entry for {client:?}"))
    }

    fn half_open_flow(&self, client: Endpoint) -> Result<LbFlow> {
        self.maps
            .half_open
            .get(&key(client, SERVER), 0)
            .with_context(|| format!("no LB_HALF_OPEN entry for {client:?}"))
    }

    /// Whether either table holds the flow between `client` and the VIP.
    fn recorded(&self, client: Endpoint) -> bool {
        self.flow(client).is_ok() || self.half_open_flow(client).is_ok()
    }

    /// A second address and port of the client whose join Maglev would send elsewhere than to
    /// the backend CLIENT's connection is on, so that only the token steers it right.
    fn joiner(&self) -> Result<Endpoint> {
        (50_000..u16::MAX)
            .map(|p| port(CLIENT2, p))
            .find(|c| self.pick(*c) != self.pick(CLIENT))
            .context("no port Maglev maps elsewhere")
    }
}

/// CLIENT's MP_CAPABLE handshake as the balancer sees it (direct server return: no SYN-ACK),
/// its backend then drained (so that Maglev would place the flow elsewhere: only the flow
/// table keeps it), then `flood`, then CLIENT's data and a join from [`Balancer::joiner`]: each
/// must reach the backend the connection is on.
fn lb_flood_steps(b: &Balancer, flood: fn(&mut Balancer) -> Result<()>) -> Result<Vec<Step<Balancer>>> {
    let owner = b.pick(CLIENT);
    Ok(vec![
        to_backend(Segment::syn(CLIENT, SERVER).with(capable(None, None)), owner),
        to_backend(Segment::new(CLIENT, SERVER).with(capable(Some(CLIENT_KEY), Some(SERVER_KEY))), owner),
        Step::Do(|b| {
            Ok(b.maps.set_backend_state(BACKENDS[b.pick(CLIENT) as usize], backend_state::DRAINING)?)
        }),
        Step::Do(flood),
        to_backend(Segment::new(CLIENT, SERVER).payload(100), owner),
        to_backend(lb_join_syn(b.joiner()?, server_token()), owner),
    ])
}

/// Each spoofed packet of the balancer's floods is sent twice in a row (a retransmission). The
/// kernel's LRU gives entries looked up after their insertion a
/// second chance: entries of single packets are only ever evicted by one another, while entries
/// touched twice compete with established flows (measured: with single packets both floods leave
/// the flow table intact even when flows and floods share it).
const FLOOD_TIMES: u32 = 2;

/// After [`lb_flood_steps`]: CLIENT's flow, alone in the flow table, and its token, alone in the
/// token table, are still there; the join went by the token and waits half-open.
fn lb_flood_check(b: &mut Balancer) -> Result<LbCounters> {
    let owner = b.pick(CLIENT);
    lb_flow(&b.flow(CLIENT)?, owner, flow_kind::INITIAL, 3, 1)?;
    expect!("LB_FLOWS entries", b.maps.flows.keys().count(), 1);
    expect!("LB_TOKENS entry", b.maps.tokens.get(&server_token(), 0).ok().map(|t| t.backend), Some(owner));
    expect!("LB_TOKENS entries", b.maps.tokens.keys().count(), 1);
    lb_flow(&b.half_open_flow(b.joiner()?)?, owner, flow_kind::JOIN, 1, 0)?;
    let c = b.maps.counters()?;
    expect!("joins_steered_by_token", c.joins_steered_by_token, 1);
    expect!("tokens_learned", c.tokens_learned, 1);
    expect!("half_open_promoted", c.half_open_promoted, 1);
    expect!("table_errors", c.table_errors, 0);
    Ok(c)
}

/// A token entry for backend `slot`, as the program learns one.
fn owned_by(slot: u32) -> LbToken {
    LbToken { backend: slot, origin: token_origin::LEARNED, stored_ns: 0 }
}

fn lb_join_syn(client: Endpoint, token: u32) -> Segment {
    join_syn(client, SERVER, token)
}

fn lb_flow(f: &LbFlow, backend: u32, kind: u32, packets: u64, token_learned: u32) -> Result<()> {
    expect!("flow backend", f.backend, backend);
    expect!("flow kind", f.kind, kind);
    expect!("flow packets", f.packets, packets);
    expect!("flow token_learned", f.token_learned, token_learned);
    Ok(())
}

fn balancer_cases() -> Vec<Case<Balancer>> {
    vec![
        Case {
            name: "MP_CAPABLE SYN: new flow placed by Maglev, recorded half-open",
            setup: Balancer::token,
            steps: |b| {
                Ok(vec![to_backend(Segment::syn(CLIENT, SERVER).with(capable(None, None)), b.pick(CLIENT))])
            },
            check: |b| {
                let pick = b.pick(CLIENT);
                lb_flow(&b.half_open_flow(CLIENT)?, pick, flow_kind::INITIAL, 1, 0)?;
                expect!("LB_FLOWS entry", b.flow(CLIENT).is_err(), true);
                let c = b.maps.counters()?;
                expect!("packets", c.packets, 1);
                expect!("flows_hashed", c.flows_hashed, 1);
                expect!("half_open_created", c.half_open_created, 1);
                expect!("half_open_promoted", c.half_open_promoted, 0);
                expect!("forwarded", c.forwarded, 1);
                let s = b.maps.backend_counters(pick)?;
                expect!("backend connections", s.connections, 1);
                expect!("backend packets", s.packets, 1);
                expect!("backend plain_flows", s.plain_flows, 0);
                Ok(())
            },
        },
        Case {
            name: "plain TCP SYN: new flow placed by Maglev as a plain flow",
            setup: Balancer::token,
            steps: |b| Ok(vec![to_backend(Segment::syn(CLIENT, SERVER), b.pick(CLIENT))]),
            check: |b| {
                let pick = b.pick(CLIENT);
                lb_flow(&b.half_open_flow(CLIENT)?, pick, flow_kind::PLAIN, 1, 0)?;
                expect!("backend plain_flows", b.maps.backend_counters(pick)?.plain_flows, 1);
                expect!("backend connections", b.maps.backend_counters(pick)?.connections, 0);
                Ok(())
            },
        },
        Case {
            name: "MP_JOIN SYN steered by its token (LB_TOKENS), not by Maglev",
            setup: || {
                let mut b = Balancer::token()?;
                let owner = b.other_than_pick(CLIENT2);
                b.maps.tokens.insert(server_token(), owned_by(owner), 0)?;
                Ok(b)
            },
            steps: |b| Ok(vec![to_backend(lb_join_syn(CLIENT2, server_token()), b.other_than_pick(CLIENT2))]),
            check: |b| {
                let owner = b.other_than_pick(CLIENT2);
                lb_flow(&b.half_open_flow(CLIENT2)?, owner, flow_kind::JOIN, 1, 0)?;
                let c = b.maps.counters()?;
                expect!("joins_steered_by_token", c.joins_steered_by_token, 1);
                expect!("joins_unknown_token", c.joins_unknown_token, 0);
                expect!("flows_hashed", c.flows_hashed, 0);
                expect!("backend subflows", b.maps.backend_counters(owner)?.subflows, 1);
                Ok(())
            },
        },
        Case {
            name: "MP_JOIN SYN with an unknown token: hashed by Maglev, counted",
            setup: Balancer::token,
            steps: |b| Ok(vec![to_backend(lb_join_syn(CLIENT2, 0xdead_beef), b.pick(CLIENT2))]),
            check: |b| {
                let pick = b.pick(CLIENT2);
                lb_flow(&b.half_open_flow(CLIENT2)?, pick, flow_kind::JOIN, 1, 0)?;
                let c = b.maps.counters()?;
                expect!("joins_unknown_token", c.joins_unknown_token, 1);
                expect!("joins_steered_by_token", c.joins_steered_by_token, 0);
                expect!("backend subflows", b.maps.backend_counters(pick)?.subflows, 1);
                Ok(())
            },
        },
        Case {
            name: "hash-only VIP: MP_JOIN SYN hashed although its token is known",
            setup: || {
                let mut b = Balancer::new(Steering::HashOnly, &BACKENDS)?;
                let other = b.other_than_pick(CLIENT2);
                b.maps.tokens.insert(server_token(), owned_by(other), 0)?;
                Ok(b)
            },
            steps: |b| Ok(vec![to_backend(lb_join_syn(CLIENT2, server_token()), b.pick(CLIENT2))]),
            check: |b| {
                lb_flow(&b.half_open_flow(CLIENT2)?, b.pick(CLIENT2), flow_kind::JOIN, 1, 0)?;
                let c = b.maps.counters()?;
                expect!("joins_hashed", c.joins_hashed, 1);
                expect!("joins_steered_by_token", c.joins_steered_by_token, 0);
                expect!("joins_unknown_token", c.joins_unknown_token, 0);
                Ok(())
            },
        },
        Case {
            name: "draining backend: keeps its flows and joins, gets no new flow",
            setup: Balancer::token,
            steps: |b| {
                let drained = b.pick(CLIENT);
                // A new client Maglev sent to the drained backend before it drained.
                let newcomer = (41_000..)
                    .map(|p| port(CLIENT, p))
                    .find(|c| b.pick(*c) == drained)
                    .context("no port Maglev maps to the backend")?;
                Ok(vec![
                    to_backend(Segment::syn(CLIENT, SERVER).with(capable(None, None)), drained),
                    Step::Do(|b| {
                        let owner = b.pick(CLIENT);
                        b.maps.tokens.insert(server_token(), owned_by(owner), 0)?;
                        Ok(b.maps
                            .set_backend_state(BACKENDS[b.pick(CLIENT) as usize], backend_state::DRAINING)?)
                    }),
                    to_backend(Segment::new(CLIENT, SERVER).payload(100), drained),
                    to_backend(lb_join_syn(CLIENT2, server_token()), drained),
                    frame(Segment::syn(newcomer, SERVER).with(capable(None, None)), XDP_REDIRECT),
                    Step::Do(|b| {
                        let drained = b.pick(CLIENT);
                        let newcomer = (41_000..).map(|p| port(CLIENT, p)).find(|c| b.pick(*c) == drained);
                        let newcomer = newcomer.context("no newcomer")?;
                        let placed = b.half_open_flow(newcomer)?.backend;
                        ensure!(placed != drained, "a new flow went to the drained backend {drained}");
                        let table = b.maps.maglev_table(0)?;
                        expect!(
                            "new flow's backend",
                            placed,
                            table[maglev_slot(&key(newcomer, SERVER)) as usize]
                        );
                        ensure!(!table.contains(&drained), "the Maglev table still has the drained backend");
                        Ok(())
                    }),
                ])
            },
            check: |b| {
                let drained = b.pick(CLIENT);
                // The data confirmed the flow; the join waits for its third ACK.
                lb_flow(&b.flow(CLIENT)?, drained, flow_kind::INITIAL, 2, 0)?;
                lb_flow(&b.half_open_flow(CLIENT2)?, drained, flow_kind::JOIN, 1, 0)?;
                let s = b.maps.backend_counters(drained)?;
                expect!("drained backend packets", s.packets, 3);
                expect!("drained backend connections", s.connections, 1);
                expect!("drained backend subflows", s.subflows, 1);
                Ok(())
            },
        },
        Case {
            name: "flow met mid-stream: sent by Maglev, recorded nowhere",
            setup: Balancer::token,
            steps: |b| {
                Ok(vec![
                    to_backend(Segment::new(CLIENT, SERVER).payload(100), b.pick(CLIENT)),
                    to_backend(Segment::new(CLIENT, SERVER).payload(100), b.pick(CLIENT)),
                ])
            },
            check: |b| {
                let pick = b.pick(CLIENT);
                expect!("recorded", b.recorded(CLIENT), false);
                let c = b.maps.counters()?;
                expect!("midstream_hashed", c.midstream_hashed, 2);
                expect!("flows_hashed", c.flows_hashed, 0);
                expect!("half_open_missing", c.half_open_missing, 0);
                let s = b.maps.backend_counters(pick)?;
                // Not a new connection: only SYNs count as flows of a backend.
                expect!("backend plain_flows", s.plain_flows, 0);
                expect!("backend packets", s.packets, 2);
                Ok(())
            },
        },
        Case {
            name: "no active backend: XDP_DROP, counted, no flow recorded",
            setup: || Balancer::new(Steering::Token, &[]),
            steps: |_| Ok(vec![frame(Segment::syn(CLIENT, SERVER).with(capable(None, None)), XDP_DROP)]),
            check: |b| {
                let c = b.maps.counters()?;
                expect!("no_backend", c.no_backend, 1);
                expect!("forwarded", c.forwarded, 0);
                expect!("recorded", b.recorded(CLIENT), false);
                Ok(())
            },
        },
        Case {
            name: "not a VIP (other address, other port): XDP_PASS, counted",
            setup: Balancer::token,
            steps: |_| {
                Ok(vec![
                    frame(Segment::syn(CLIENT, ELSEWHERE).with(capable(None, None)), XDP_PASS),
                    frame(Segment::syn(CLIENT, port(SERVER, 8080)), XDP_PASS),
                ])
            },
            check: |b| {
                let c = b.maps.counters()?;
                expect!("packets", c.packets, 2);
                expect!("not_vip", c.not_vip, 2);
                expect!("forwarded", c.forwarded, 0);
                expect!("flows_hashed", c.flows_hashed, 0);
                expect!("LB_FLOWS entries", b.maps.flows.keys().count(), 0);
                expect!("LB_HALF_OPEN entries", b.maps.half_open.keys().count(), 0);
                Ok(())
            },
        },
        Case {
            name: "MP_CAPABLE third ACK teaches the server's token; the join then follows it",
            setup: Balancer::token,
            steps: |b| {
                let pick = b.pick(CLIENT);
                Ok(vec![
                    to_backend(Segment::syn(CLIENT, SERVER).with(capable(None, None)), pick),
                    to_backend(
                        Segment::new(CLIENT, SERVER).with(capable(Some(CLIENT_KEY), Some(SERVER_KEY))),
                        pick,
                    ),
                    // Later packets do not learn again.
                    to_backend(
                        Segment::new(CLIENT, SERVER)
                            .with(capable(Some(CLIENT_KEY), Some(SERVER_KEY)))
                            .payload(10),
                        pick,
                    ),
                    to_backend(lb_join_syn(CLIENT2, server_token()), pick),
                ])
            },
            check: |b| {
                let pick = b.pick(CLIENT);
                expect!(
                    "LB_TOKENS entry",
                    b.maps.tokens.get(&server_token(), 0).ok().map(|t| t.backend),
                    Some(pick)
                );
                expect!("LB_TOKENS entries", b.maps.tokens.keys().count(), 1);
                lb_flow(&b.flow(CLIENT)?, pick, flow_kind::INITIAL, 3, 1)?;
                expect!("half-open", b.half_open_flow(CLIENT).is_err(), true);
                let c = b.maps.counters()?;
                expect!("half_open_promoted", c.half_open_promoted, 1);
                expect!("tokens_learned", c.tokens_learned, 1);
                expect!("joins_steered_by_token", c.joins_steered_by_token, 1);
                Ok(())
            },
        },
        Case {
            name: "1,000,000 spoofed MP_CAPABLE SYNs evict no established flow and no token",
            setup: Balancer::token,
            steps: |b| {
                lb_flood_steps(b, |b| {
                    run_flood(&mut b.harness, BALANCER_XDP, XDP_REDIRECT, FLOOD_TIMES, |client, _| {
                        vec![Segment::syn(client, SERVER).with(capable(None, None))]
                    })
                })
            },
            check: |b| {
                let c = lb_flood_check(b)?;
                let flood = u64::from(FLOOD_HANDSHAKES);
                // CLIENT's SYN, one per spoofed 4-tuple (its retransmission found it), the join.
                expect!("half_open_created", c.half_open_created, flood + 2);
                expect!("flows_hashed", c.flows_hashed, flood + 1);
                expect!("midstream_hashed", c.midstream_hashed, 0);
                Ok(())
            },
        },
        Case {
            name: "1,000,000 lone ACKs with forged MP_CAPABLE keys insert no token, evict no flow",
            setup: Balancer::token,
            steps: |b| {
                lb_flood_steps(b, |b| {
                    run_flood(&mut b.harness, BALANCER_XDP, XDP_REDIRECT, FLOOD_TIMES, |client, i| {
                        let forged = 0xf200_0000_0000_0000 | u64::from(i);
                        vec![Segment::new(client, SERVER).with(capable(Some(forged), Some(!forged)))]
                    })
                })
            },
            check: |b| {
                let c = lb_flood_check(b)?;
                let sent = u64::from(FLOOD_HANDSHAKES) * u64::from(FLOOD_TIMES);
                expect!("midstream_hashed", c.midstream_hashed, sent);
                expect!("half_open_missing", c.half_open_missing, sent);
                expect!("half_open_created", c.half_open_created, 2);
                expect!("LB_HALF_OPEN entries", b.maps.half_open.keys().count(), 1);
                Ok(())
            },
        },
        Case {
            name: "SYN then ACK promotes; a retransmitted SYN keeps its backend; a join is promoted at its third ACK",
            setup: Balancer::token,
            steps: |b| {
                let owner = b.pick(CLIENT);
                let joiner = b.joiner()?;
                let syn = Segment::syn(CLIENT, SERVER).with(capable(None, None));
                Ok(vec![
                    to_backend(syn.clone(), owner),
                    // Maglev would now send a new flow elsewhere; the retransmission stays.
                    Step::Do(|b| {
                        expect!("LB_FLOWS entry after the SYN", b.flow(CLIENT).is_err(), true);
                        let owner = BACKENDS[b.pick(CLIENT) as usize];
                        Ok(b.maps.set_backend_state(owner, backend_state::DRAINING)?)
                    }),
                    to_backend(syn, owner),
                    Step::Do(|b| {
                        lb_flow(&b.half_open_flow(CLIENT)?, b.pick(CLIENT), flow_kind::INITIAL, 2, 0)
                    }),
                    to_backend(
                        Segment::new(CLIENT, SERVER).with(capable(Some(CLIENT_KEY), Some(SERVER_KEY))),
                        owner,
                    ),
                    Step::Do(|b| {
                        lb_flow(&b.flow(CLIENT)?, b.pick(CLIENT), flow_kind::INITIAL, 3, 1)?;
                        expect!("LB_HALF_OPEN entry after the ACK", b.half_open_flow(CLIENT).is_err(), true);
                        Ok(())
                    }),
                    to_backend(lb_join_syn(joiner, server_token()), owner),
                    to_backend(lb_join_syn(joiner, server_token()), owner),
                    Step::Do(|b| {
                        let joiner = b.joiner()?;
                        lb_flow(&b.half_open_flow(joiner)?, b.pick(CLIENT), flow_kind::JOIN, 2, 0)?;
                        expect!("join in LB_FLOWS before its third ACK", b.flow(joiner).is_err(), true);
                        Ok(())
                    }),
                    to_backend(join_ack(joiner, SERVER), owner),
                    to_backend(Segment::new(joiner, SERVER).payload(100), owner),
                ])
            },
            check: |b| {
                let owner = b.pick(CLIENT);
                lb_flow(&b.flow(b.joiner()?)?, owner, flow_kind::JOIN, 4, 0)?;
                expect!("LB_HALF_OPEN entries", b.maps.half_open.keys().count(), 0);
                expect!(
                    "LB_TOKENS entry",
                    b.maps.tokens.get(&server_token(), 0).ok().map(|t| t.backend),
                    Some(owner)
                );
                let c = b.maps.counters()?;
                expect!("half_open_created", c.half_open_created, 2);
                expect!("half_open_promoted", c.half_open_promoted, 2);
                expect!("tokens_learned", c.tokens_learned, 1);
                expect!("flows_hashed", c.flows_hashed, 1);
                // Placed by its token each time: the same 4-tuple may carry a new subflow.
                expect!("joins_steered_by_token", c.joins_steered_by_token, 2);
                expect!("half_open_missing", c.half_open_missing, 0);
                expect!("midstream_hashed", c.midstream_hashed, 0);
                let s = b.maps.backend_counters(owner)?;
                expect!("backend connections", s.connections, 1);
                expect!("backend subflows", s.subflows, 1);
                expect!("backend packets", s.packets, 7);
                Ok(())
            },
        },
    ]
}

#[test]
fn balancer() {
    run("balancer", &balancer_cases());
}

/// A backend's join address, outside the VIP.
const JOIN_ADDR: Endpoint = ([192, 0, 2, 129], 80);

/// An MP_CAPABLE SYN and the third ACK carrying `server_key`, from `client`.
fn lb_capable(client: Endpoint, server_key: u64, backend: u32) -> [Step<Balancer>; 2] {
    [
        to_backend(Segment::syn(client, SERVER).with(capable(None, None)), backend),
        to_backend(Segment::new(client, SERVER).with(capable(Some(CLIENT_KEY), Some(server_key))), backend),
    ]
}

const SYNC_ON: LbSettings =
    LbSettings { learn_rate: 0, learn_burst: 0, unknown_token: unknown_token::HASH, sync: 1 };

/// What several instances behind ECMP rely on: join addresses, the collision rule, the
/// learning rate, deferred joins and the sync ring.
fn instance_cases() -> Vec<Case<Balancer>> {
    vec![
        Case {
            name: "join address: every packet to it goes to its backend, recorded nowhere",
            setup: || {
                let mut b = Balancer::token()?;
                b.maps.set_join_addresses(1, &[std::net::IpAddr::from(JOIN_ADDR.0)])?;
                Ok(b)
            },
            steps: |_| {
                Ok(vec![
                    to_backend(join_syn(CLIENT2, JOIN_ADDR, 0xdead_beef), 1),
                    to_backend(join_ack(CLIENT2, JOIN_ADDR), 1),
                    to_backend(Segment::new(CLIENT2, JOIN_ADDR).payload(100), 1),
                    frame(Segment::syn(CLIENT2, ELSEWHERE), XDP_PASS),
                ])
            },
            check: |b| {
                let c = b.maps.counters()?;
                expect!("join_address_packets", c.join_address_packets, 3);
                expect!("join_address_joins", c.join_address_joins, 1);
                expect!("not_vip", c.not_vip, 1);
                expect!("LB_FLOWS entries", b.maps.flows.keys().count(), 0);
                expect!("LB_HALF_OPEN entries", b.maps.half_open.keys().count(), 0);
                expect!("joins_unknown_token", c.joins_unknown_token, 0);
                Ok(())
            },
        },
        Case {
            name: "a token learned for a second backend while its owner lives: kept, counted, reported",
            setup: Balancer::token,
            steps: |b| {
                let owner = b.pick(CLIENT);
                let second = b.port_placed_apart(CLIENT2, owner)?;
                let mut steps: Vec<Step<Balancer>> = lb_capable(CLIENT, SERVER_KEY, owner).into();
                // Another backend's kernel drew the same token (or a forger found a key for it).
                steps.extend(lb_capable(second, SERVER_KEY, b.pick(second)));
                steps.push(to_backend(lb_join_syn(b.joiner()?, server_token()), owner));
                Ok(steps)
            },
            check: |b| {
                let owner = b.pick(CLIENT);
                let second = b.pick(b.port_placed_apart(CLIENT2, owner)?);
                let entry = b.maps.tokens.get(&server_token(), 0)?;
                expect!("token owner", entry.backend, owner);
                let collision = b.maps.collisions.get(&server_token(), 0)?;
                expect!("collision kept", collision.kept, owner);
                expect!("collision refused", collision.refused, second);
                expect!("collision origin", collision.refused_origin, token_origin::LEARNED);
                expect!("collision count", collision.count, 1);
                let c = b.maps.counters()?;
                expect!("token_collisions", c.token_collisions, 1);
                expect!("tokens_learned", c.tokens_learned, 1);
                expect!("half_open_promoted", c.half_open_promoted, 2);
                expect!("joins_steered_by_token", c.joins_steered_by_token, 1);
                Ok(())
            },
        },
        Case {
            name: "a token whose backend was removed is learned afresh for the new one",
            setup: || {
                let mut b = Balancer::token()?;
                let gone = b.other_than_pick(CLIENT);
                b.maps.tokens.insert(server_token(), owned_by(gone), 0)?;
                b.maps.set_backend_state(BACKENDS[gone as usize], backend_state::UNUSED)?;
                // Maglev without the removed backend.
                let members: Vec<maglev::Member<'_>> = (0..BACKENDS.len() as u32)
                    .filter(|slot| *slot != gone)
                    .map(|slot| maglev::Member { slot, name: BACKENDS[slot as usize], weight: 1 })
                    .collect();
                b.table = maglev::table(&members, MAGLEV_SIZE, NO_BACKEND);
                Ok(b)
            },
            steps: |b| Ok(lb_capable(CLIENT, SERVER_KEY, b.pick(CLIENT)).into()),
            check: |b| {
                expect!("token owner", b.maps.tokens.get(&server_token(), 0)?.backend, b.pick(CLIENT));
                let c = b.maps.counters()?;
                expect!("token_collisions", c.token_collisions, 0);
                expect!("tokens_learned", c.tokens_learned, 1);
                Ok(())
            },
        },
        Case {
            name: "learning is rate-limited per source: the flow goes on, its token is not learned",
            setup: || {
                Balancer::with_settings(LbSettings { learn_rate: 1, learn_burst: 2, ..LbSettings::default() })
            },
            steps: |b| {
                let mut steps = Vec::new();
                for (i, client_port) in [41_001u16, 41_002, 41_003].into_iter().enumerate() {
                    let client = port(CLIENT, client_port);
                    steps.extend(lb_capable(client, SERVER_KEY + i as u64, b.pick(client)));
                }
                // Another source has its own bucket.
                steps.extend(lb_capable(CLIENT2, SERVER_KEY + 3, b.pick(CLIENT2)));
                Ok(steps)
            },
            check: |b| {
                let c = b.maps.counters()?;
                expect!("tokens_learned", c.tokens_learned, 3);
                expect!("learn_rate_limited", c.learn_rate_limited, 1);
                expect!("half_open_promoted", c.half_open_promoted, 4);
                expect!(
                    "token of the third",
                    b.maps.tokens.get(&handshake::token(SERVER_KEY + 2), 0).is_err(),
                    true
                );
                expect!(
                    "token of the other source",
                    b.maps.tokens.get(&handshake::token(SERVER_KEY + 3), 0).is_ok(),
                    true
                );
                Ok(())
            },
        },
        Case {
            name: "retry-once: an unknown token's first join SYN is dropped; synced meanwhile, the retransmission is steered",
            setup: || {
                Balancer::with_settings(LbSettings {
                    unknown_token: unknown_token::RETRY_ONCE,
                    ..LbSettings::default()
                })
            },
            steps: |b| {
                Ok(vec![
                    frame(lb_join_syn(CLIENT2, server_token()), XDP_DROP),
                    Step::Do(|b| {
                        ensure!(
                            b.maps.unknown_since(server_token()).is_some(),
                            "the unknown token is not remembered"
                        );
                        let owner = b.other_than_pick(CLIENT2);
                        let outcome = b.maps.store_synced_token(server_token(), owner, 1)?;
                        expect!("sync outcome", outcome, TokenLearn::Store);
                        Ok(())
                    }),
                    to_backend(lb_join_syn(CLIENT2, server_token()), b.other_than_pick(CLIENT2)),
                ])
            },
            check: |b| {
                let c = b.maps.counters()?;
                expect!("joins_deferred", c.joins_deferred, 1);
                expect!("joins_steered_by_token", c.joins_steered_by_token, 1);
                expect!("joins_unknown_token", c.joins_unknown_token, 0);
                expect!("token origin", b.maps.tokens.get(&server_token(), 0)?.origin, token_origin::SYNCED);
                Ok(())
            },
        },
        Case {
            name: "retry-once: a token still unknown at the retransmission is hashed",
            setup: || {
                Balancer::with_settings(LbSettings {
                    unknown_token: unknown_token::RETRY_ONCE,
                    ..LbSettings::default()
                })
            },
            steps: |b| {
                Ok(vec![
                    frame(lb_join_syn(CLIENT2, 0xdead_beef), XDP_DROP),
                    to_backend(lb_join_syn(CLIENT2, 0xdead_beef), b.pick(CLIENT2)),
                ])
            },
            check: |b| {
                let c = b.maps.counters()?;
                expect!("joins_deferred", c.joins_deferred, 1);
                expect!("joins_unknown_token", c.joins_unknown_token, 1);
                Ok(())
            },
        },
        Case {
            name: "synced tokens follow the same rule: a live owner is kept, the same owner refreshed",
            setup: Balancer::token,
            steps: |b| Ok(lb_capable(CLIENT, SERVER_KEY, b.pick(CLIENT)).into()),
            check: |b| {
                let owner = b.pick(CLIENT);
                let other = b.other_than_pick(CLIENT);
                expect!(
                    "same owner",
                    b.maps.store_synced_token(server_token(), owner, 7)?,
                    TokenLearn::Refresh
                );
                expect!(
                    "other owner",
                    b.maps.store_synced_token(server_token(), other, 8)?,
                    TokenLearn::Collision
                );
                expect!("token owner", b.maps.tokens.get(&server_token(), 0)?.backend, owner);
                let collision = b.maps.collisions.get(&server_token(), 0)?;
                expect!("collision kept", collision.kept, owner);
                expect!("collision refused", collision.refused, other);
                expect!("collision origin", collision.refused_origin, token_origin::SYNCED);
                Ok(())
            },
        },
        Case {
            name: "with sync on, a confirmed flow and its learned token go to the sync ring",
            setup: || Balancer::with_settings(SYNC_ON),
            steps: |b| {
                let owner = b.pick(CLIENT);
                let mut steps: Vec<Step<Balancer>> = lb_capable(CLIENT, SERVER_KEY, owner).into();
                steps.push(to_backend(lb_join_syn(b.joiner()?, server_token()), owner));
                steps.push(to_backend(join_ack(b.joiner()?, SERVER), owner));
                Ok(steps)
            },
            check: |b| {
                let owner = b.pick(CLIENT);
                let joiner = key(b.joiner()?, SERVER);
                let events = b.sync_events();
                let kinds: Vec<(u32, u32)> = events.iter().map(|e| (e.kind, e.flow_kind)).collect();
                expect!(
                    "sync events",
                    kinds,
                    vec![
                        (sync_kind::TOKEN, flow_kind::INITIAL),
                        (sync_kind::FLOW, flow_kind::INITIAL),
                        (sync_kind::FLOW, flow_kind::JOIN)
                    ]
                );
                expect!("token", events[0].token, server_token());
                expect!("backends", events.iter().all(|e| e.backend == owner), true);
                expect!("initial flow", events[1].flow, key(CLIENT, SERVER));
                expect!("join flow", events[2].flow, joiner);
                expect!("sync_events_lost", b.maps.counters()?.sync_events_lost, 0);
                Ok(())
            },
        },
        Case {
            name: "an RFC 6824 (version 0) third ACK teaches the SHA-1 token",
            setup: Balancer::token,
            steps: |b| {
                let pick = b.pick(CLIENT);
                let v0 = |sender, receiver| match capable(sender, receiver) {
                    MptcpOption::Capable(c) => MptcpOption::Capable(MpCapable { version: 0, ..c }),
                    other => other,
                };
                Ok(vec![
                    to_backend(Segment::syn(CLIENT, SERVER).with(v0(Some(CLIENT_KEY), None)), pick),
                    to_backend(
                        Segment::new(CLIENT, SERVER).with(v0(Some(CLIENT_KEY), Some(SERVER_KEY))),
                        pick,
                    ),
                ])
            },
            check: |b| {
                let sha1_token = mptcp_common::keys::key_digest_v0_in(SERVER_KEY, &mut [0; 16]).token;
                ensure!(sha1_token != server_token(), "SHA-1 and SHA-256 tokens coincide");
                expect!("token owner", b.maps.tokens.get(&sha1_token, 0)?.backend, b.pick(CLIENT));
                expect!("SHA-256 token", b.maps.tokens.get(&server_token(), 0).is_err(), true);
                Ok(())
            },
        },
        Case {
            name: "with sync off, nothing goes to the sync ring",
            setup: Balancer::token,
            steps: |b| Ok(lb_capable(CLIENT, SERVER_KEY, b.pick(CLIENT)).into()),
            check: |b| {
                expect!("sync events", b.sync_events().len(), 0);
                expect!("tokens_learned", b.maps.counters()?.tokens_learned, 1);
                Ok(())
            },
        },
        Case {
            name: "a flow a peer confirmed is stored unless known, and its packets follow it",
            setup: Balancer::token,
            steps: |b| {
                let elsewhere = b.other_than_pick(CLIENT);
                Ok(vec![
                    Step::Do(|b| {
                        let flow = LbFlow {
                            backend: b.other_than_pick(CLIENT),
                            kind: flow_kind::JOIN,
                            ..LbFlow::default()
                        };
                        expect!("stored", b.maps.store_synced_flow(&key(CLIENT, SERVER), &flow)?, true);
                        expect!(
                            "stored again",
                            b.maps.store_synced_flow(&key(CLIENT, SERVER), &flow)?,
                            false
                        );
                        Ok(())
                    }),
                    to_backend(Segment::new(CLIENT, SERVER).payload(100), elsewhere),
                ])
            },
            check: |b| {
                expect!("midstream_hashed", b.maps.counters()?.midstream_hashed, 0);
                Ok(())
            },
        },
    ]
}

#[test]
fn balancer_instances() {
    run("balancer instances", &instance_cases());
}
