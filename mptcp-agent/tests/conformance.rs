//! The conformance corpus (`mptcp_agent::dataplane::testrun::corpus`): crafted captures of what
//! RFC 8684 allows and stacks other than Linux send, each case with the RFC's answer written
//! here. The whole corpus is one capture (a connection per case, each on its own client port)
//! that goes once through `decode`, once through the tracker (`replay`'s test runs) and once
//! through tshark: decode and the tracker must agree on every connection, and decode's option
//! fields and 64-bit DSNs must equal tshark's. `live_tracking_equals_replay` sends the corpus
//! over a veth into a namespace where the tracker is attached.
//!
//! Needs root (the tracker's test runs) and tshark, like the program fixtures.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_agent::{
    analysis::{
        capture_file,
        decode::{
            self, AddAddrRecord, Connection, HmacCheck, MappingRecord, PacketRecord, Report, Subflow, Verdict,
        },
        replay::{self, TableConnection},
    },
    dataplane::{
        handshake,
        tables::{ConnectionView, Snapshot},
        testrun::corpus::{self, Case},
    },
};
use mptcp_common::mptcp::{MpFastClose, MpTcpRst, MptcpOption, tcprst_flags};
use mptcp_tests::{
    TempDir,
    agent::{Daemon, Dataplane},
    capture::{Capture, tshark_fields_with_prefs},
    craft,
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    netns::{Netns, veth},
    traffic::{ClientOptions, Proto, Server, transfer},
    tshark::{FIELDS, MORE_FIELDS, TSHARK_PREFS, compare_with_tshark},
};
use serde_json::Value;

/// What decode, the tracker and tshark made of the whole corpus.
struct Corpus {
    decoded: Report,
    table: Vec<TableConnection>,
    views: Vec<ConnectionView>,
    /// tshark's 64-bit DSN of each DSS mapping, by frame.
    tshark_dsns: BTreeMap<u64, u64>,
}

/// What the readers made of one case.
struct Seen<'a> {
    subflow: &'a Subflow,
    connection: &'a Connection,
    mappings: Vec<&'a MappingRecord>,
    add_addrs: Vec<&'a AddAddrRecord>,
    hmac_checks: Vec<&'a HmacCheck>,
    packets: Vec<&'a PacketRecord>,
    replayed: &'a TableConnection,
    view: &'a ConnectionView,
    /// DSNs past a 32-bit wrap that tshark widened with the high word from before it.
    tshark_missed_wrap: Vec<u64>,
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Result<Corpus, String>> = OnceLock::new();
    match CORPUS.get_or_init(|| read_corpus().map_err(|e| format!("{e:#}"))) {
        Ok(corpus) => corpus,
        Err(error) => panic!("reading the corpus: {error}"),
    }
}

fn corpus_frames() -> Result<Vec<Vec<u8>>> {
    let mut frames = Vec::new();
    for case in corpus::cases() {
        frames.extend(case.frames()?);
    }
    Ok(frames)
}

fn read_corpus() -> Result<Corpus> {
    let scratch = TempDir::new("conf")?;
    let pcap = scratch.path().join("corpus.pcap");
    corpus::write_pcap(&pcap, &corpus_frames()?)?;
    let decoded = decode::decode_file(&pcap, true)?;
    let (harness, skipped) = replay::run_capture(&mut capture_file::open(&pcap)?)?;
    ensure!(skipped == 0, "{skipped} frames not replayed");
    let table = replay::table(&harness.tables)?.connections;
    let views = Snapshot::read(&harness.tables)?.connection_views();

    let fields: Vec<&'static str> = FIELDS.iter().chain(MORE_FIELDS).copied().collect();
    let compared = compare_with_tshark(&pcap, &serde_json::to_value(&decoded)?, &fields)?;
    // The corpus has no MP_JOIN and no IPv6; every other field is compared at least once.
    let exercised =
        fields.iter().filter(|f| !f.contains("recvtok") && !f.contains("send") || f.ends_with("sendkey"));
    for field in exercised.filter(|f| !f.ends_with("ipv6") && !f.ends_with(".port") && !f.contains("backup"))
    {
        ensure!(
            compared.get(field).copied().unwrap_or(0) > 0,
            "no {field} compared with tshark: {compared:?}"
        );
    }
    let mut tshark_dsns = BTreeMap::new();
    for row in tshark_fields_with_prefs(&pcap, TSHARK_PREFS, &["frame.number", "mptcp.dss.dsn"])? {
        if let (Some(frame), Some(Ok(dsn))) = (row.first(), row.get(1).map(|d| d.parse::<u64>())) {
            tshark_dsns.insert(frame.parse()?, dsn);
        }
    }
    // Everything is read: the capture goes with `scratch` here (a static is never dropped).
    Ok(Corpus { decoded, table, views, tshark_dsns })
}

impl Corpus {
    /// One case's share of everything, after checking that decode and the tracker agree on it:
    /// one subflow, its 4-tuple, packets, fallback, keys; and that every DSN decode widened
    /// equals tshark's.
    fn case(&self, case: &Case) -> Result<Seen<'_>> {
        let name = case.name;
        let client = case.client_addr();
        let d = &self.decoded;
        let subflows: Vec<&Subflow> = d.subflows.iter().filter(|s| s.initiator == client).collect();
        ensure!(subflows.len() == 1, "{name}: decode has {} subflows", subflows.len());
        let subflow = subflows[0];
        let replayed = self
            .table
            .iter()
            .find(|c| c.subflows.iter().any(|s| s.client == client))
            .with_context(|| format!("{name}: not in the tracker's table"))?;
        ensure!(replayed.subflows.len() == 1, "{name}: the tracker has {} subflows", replayed.subflows.len());
        let tracked = &replayed.subflows[0];
        ensure!(
            (subflow.initiator, subflow.responder) == (tracked.client, tracked.server),
            "{name}: 4-tuple"
        );
        ensure!(
            subflow.packets == tracked.packets,
            "{name}: packets {} / {}",
            subflow.packets,
            tracked.packets
        );
        ensure!(
            subflow.fallback.is_some() == replayed.fallback,
            "{name}: decode's fallback {:?}, the tracker's {}",
            subflow.fallback,
            replayed.fallback
        );
        // Listed in the order they finished: found by id.
        let connection =
            d.connections.iter().find(|c| subflow.connection == Some(c.id)).context("no connection")?;
        ensure!(connection.initiator_key == replayed.client_key.map(|k| k.0), "{name}: client key");
        ensure!(connection.responder_key == replayed.server_key.map(|k| k.0), "{name}: server key");
        ensure!(connection.responder_token == replayed.server_token.map(|t| t.0), "{name}: server token");
        ensure!(connection.initiator_token == replayed.client_token.map(|t| t.0), "{name}: client token");
        let token = replayed.server_token.context("no server token")?;
        let view = self.views.iter().find(|v| v.server_token.0 == token.0).context("no connection view")?;

        let mappings: Vec<&MappingRecord> = d.mappings.iter().filter(|m| m.subflow == subflow.id).collect();
        let mut tshark_missed_wrap = Vec::new();
        for mapping in &mappings {
            // tshark has no answer for MP_CAPABLE's implicit mapping.
            let Some(&theirs) = self.tshark_dsns.get(&mapping.frame) else { continue };
            if mapping.dsn.wrapping_sub(theirs) == 1 << 32 {
                tshark_missed_wrap.push(mapping.dsn);
                continue;
            }
            ensure!(
                theirs == mapping.dsn,
                "{name}: frame {} DSN {} / tshark {theirs}",
                mapping.frame,
                mapping.dsn
            );
        }
        let packets = d.packets.iter().flatten().filter(|p| p.src == client || p.dst == client).collect();
        Ok(Seen {
            subflow,
            connection,
            mappings,
            add_addrs: d.add_addrs.iter().filter(|a| a.subflow == subflow.id).collect(),
            hmac_checks: d.hmac_checks.iter().filter(|c| c.subflow == subflow.id).collect(),
            packets,
            replayed,
            view,
            tshark_missed_wrap,
        })
    }
}

/// (DSN, subflow sequence, data-level length, DATA_FIN) of each mapping, in capture order.
fn mapped(seen: &Seen<'_>) -> Vec<(u64, u32, u16, bool)> {
    seen.mappings.iter().map(|m| (m.dsn, m.subflow_seq, m.data_len, m.data_fin)).collect()
}

/// No fallback, by decode (its reason would say why) and by the tracker.
fn no_fallback(seen: &Seen<'_>) {
    assert_eq!(seen.subflow.fallback, None);
    assert_eq!(seen.view.fallback, None);
}

/// Every option of the case's packets.
fn options<'a>(seen: &'a Seen<'_>) -> impl Iterator<Item = &'a MptcpOption> {
    seen.packets.iter().flat_map(|p| p.options.iter().map(|o| &o.option))
}

/// 3.3.1: a mapping need not repeat on the segments it covers: three 1000-byte segments under
/// one 3000-byte mapping are MPTCP, and 3000 bytes of data.
#[test]
fn one_mapping_over_three_segments() -> Result<()> {
    let case = corpus::one_mapping_over_three_segments();
    let seen = corpus().case(&case)?;
    let (c, s) = (case.client_data_start(), case.server_data_start());
    no_fallback(&seen);
    assert_eq!(mapped(&seen), [(c, 1, 3000, false)]);
    assert_eq!(
        (seen.subflow.data_acks.initiator, seen.subflow.data_acks.responder),
        (Some(s), Some(c + 3000))
    );
    assert_eq!((seen.view.data_bytes.c2s, seen.view.data_bytes.s2c), (3000, 0));
    assert_eq!(seen.view.data_ack.c2s, c + 3000);
    assert_eq!(seen.replayed.subflows[0].state, "established");
    Ok(())
}

/// 3.3.1: 4-byte DSNs and data ACKs are the low 32 bits of the 64-bit ones, which start at the
/// IDSN + 1: the fourth mapping and the last data ACK, past 2^32, take the next high word.
#[test]
fn four_byte_sequence_numbers_widen_across_the_wrap() -> Result<()> {
    let case = corpus::four_byte_sequence_numbers_wrapping();
    let seen = corpus().case(&case)?;
    let c = case.client_data_start();
    assert_eq!(c & 0xffff_ffff, 0xffff_f712, "the key no longer starts the space just below a wrap");
    assert_eq!((c + 3000) >> 32, (c >> 32) + 1);
    no_fallback(&seen);
    assert_eq!(
        mapped(&seen),
        [
            (c, 1, 1000, false),
            (c + 1000, 1001, 1000, false),
            (c + 2000, 2001, 1000, false),
            (c + 3000, 3001, 1000, false)
        ]
    );
    assert!(seen.mappings.iter().all(|m| !m.dsn_wide));
    // tshark 4.0 agrees up to the wrap, then keeps the old high word (4 GiB back, before the
    // IDSN).
    assert_eq!(seen.tshark_missed_wrap, [c + 3000]);
    assert_eq!(seen.subflow.data_acks.responder, Some(c + 4000));
    assert_eq!(seen.view.data_ack.c2s, c + 4000);
    assert_eq!(seen.view.data_bytes.c2s, 4000);
    assert_eq!(seen.view.reinjections, 0);
    Ok(())
}

/// 3.3.1: the DSS checksum covers the pseudo-header (64-bit DSN, subflow sequence, length) and
/// the mapped data, over as many segments as the mapping spans; a wrong one is what MP_FAIL
/// answers (3.7), and MP_FAIL on the only subflow is a fallback.
#[test]
fn dss_checksums_are_verified_and_mp_fail_falls_back() -> Result<()> {
    let case = corpus::dss_checksums();
    let seen = corpus().case(&case)?;
    let c = case.client_data_start();
    let verdicts: Vec<(u64, Verdict)> =
        seen.mappings.iter().filter_map(|m| Some((m.dsn, m.checksum.as_ref()?.verdict))).collect();
    assert_eq!(
        verdicts,
        [(c, Verdict::Verified), (c + 1000, Verdict::Verified), (c + 3000, Verdict::Failed)]
    );
    let failed = seen.mappings[2].checksum.as_ref().context("checksum")?;
    assert_eq!(failed.expected, Some(corpus::checksum(c + 3000, 3001, 500, 500)));
    assert_ne!(failed.received, failed.expected.unwrap_or_default());
    assert!(
        seen.subflow.fallback.as_deref().is_some_and(|r| r.starts_with("MP_FAIL")),
        "{:?}",
        seen.subflow.fallback
    );
    assert_eq!(seen.view.fallback, Some("mp-fail"));
    assert!(seen.view.checksum, "checksum use not recorded");
    Ok(())
}

/// 3.1: when the third ACK is lost, the first data carries MP_CAPABLE with both keys and the
/// data-level length: the connection is established from it, with its data mapped from the
/// IDSN + 1 at subflow sequence 1; not a fallback.
#[test]
fn mp_capable_with_data_establishes_the_connection() -> Result<()> {
    let case = corpus::mp_capable_with_data_after_a_lost_third_ack();
    let seen = corpus().case(&case)?;
    let c = case.client_data_start();
    no_fallback(&seen);
    assert_eq!(
        (seen.connection.initiator_key, seen.connection.responder_key),
        (Some(case.client_key), Some(case.server_key))
    );
    assert_eq!(mapped(&seen), [(c, 1, 500, false), (c + 500, 501, 500, false)]);
    assert_eq!(seen.view.data_bytes.c2s, 1000);
    assert_eq!(seen.view.data_ack.c2s, c + 1000);
    assert_eq!(seen.replayed.subflows[0].state, "established");
    Ok(())
}

/// RFC 6824: a version 0 connection, its tokens and IDSNs from SHA-1 of the keys (3.1 of RFC
/// 6824), its ADD_ADDR of the v0 shape without HMAC.
#[test]
fn rfc6824_peers_are_version_0_with_sha1_tokens() -> Result<()> {
    let case = corpus::rfc6824_v0();
    let seen = corpus().case(&case)?;
    no_fallback(&seen);
    assert_eq!(seen.connection.version, 0);
    assert_eq!(seen.view.version, 0);
    assert_eq!(seen.connection.initiator_token, Some(handshake::token_v0(case.client_key)));
    assert_eq!(seen.connection.responder_token, Some(handshake::token_v0(case.server_key)));
    assert_eq!(seen.replayed.server_token.map(|t| t.0), Some(handshake::token_v0(case.server_key)));
    assert_eq!(seen.replayed.client_idsn.map(|i| i.0), Some(handshake::idsn_v0(case.client_key)));
    assert_eq!(mapped(&seen), [(case.client_data_start(), 1, 1000, false)]);
    assert_eq!(seen.view.data_bytes.c2s, 1000);
    assert_eq!(seen.add_addrs.len(), 1);
    assert_eq!((seen.add_addrs[0].echo, seen.add_addrs[0].hmac), (false, None));
    assert!(seen.hmac_checks.is_empty());
    Ok(())
}

/// 3.3.3: a DATA_FIN alone is a DSS with the F flag and a mapping of length 1 at subflow
/// sequence 0: it takes one data sequence number and carries no byte.
#[test]
fn a_lone_data_fin_takes_one_data_sequence_number() -> Result<()> {
    let case = corpus::lone_data_fin();
    let seen = corpus().case(&case)?;
    let c = case.client_data_start();
    no_fallback(&seen);
    assert_eq!(mapped(&seen), [(c, 1, 100, false), (c + 100, 0, 1, true)]);
    assert!(seen.view.data_fin.c2s && !seen.view.data_fin.s2c);
    assert_eq!(seen.view.data_bytes.c2s, 100);
    assert_eq!(seen.view.data_ack.c2s, c + 101);
    assert_eq!(seen.replayed.subflows[0].state, "closing");
    Ok(())
}

/// 3.4.1: ADD_ADDR carries the rightmost 64 bits of HMAC-SHA256 over the address; its echo
/// has the E flag and no HMAC, and is not checked.
#[test]
fn add_addr_is_verified_and_its_echo_carries_no_hmac() -> Result<()> {
    let case = corpus::add_addr_and_echo();
    let seen = corpus().case(&case)?;
    no_fallback(&seen);
    let shapes: Vec<(bool, bool, SocketAddr)> =
        seen.add_addrs.iter().map(|a| (a.echo, a.hmac.is_some(), a.sender)).collect();
    let server = SocketAddr::from(corpus::SERVER);
    assert_eq!(shapes, [(false, true, server), (true, false, case.client_addr())]);
    let verdicts: Vec<Verdict> = seen.hmac_checks.iter().map(|c| c.verdict).collect();
    assert_eq!(verdicts, [Verdict::Verified]);
    assert_eq!((seen.view.agent_checks.add_addr_verified, seen.view.agent_checks.add_addr_failed), (1, 0));
    Ok(())
}

/// 3.5: MP_FASTCLOSE carries the receiver's key; the receiver resets the subflow.
#[test]
fn fastclose_closes_the_connection() -> Result<()> {
    let case = corpus::fastclose();
    let seen = corpus().case(&case)?;
    no_fallback(&seen);
    assert!(
        options(&seen).any(|o| *o == MptcpOption::FastClose(MpFastClose { receiver_key: case.server_key }))
    );
    assert!(seen.view.fastclose && !seen.view.tcprst);
    assert_eq!(seen.replayed.subflows[0].state, "closed");
    Ok(())
}

/// 3.6: MP_TCPRST on a RST says why (reason 5, unacceptable performance) and whether it is
/// transient (T).
#[test]
fn tcprst_carries_its_reason() -> Result<()> {
    let case = corpus::tcprst();
    let seen = corpus().case(&case)?;
    no_fallback(&seen);
    let reset = MpTcpRst { flags: tcprst_flags::TRANSIENT, reason: 5 };
    assert!(options(&seen).any(|o| *o == MptcpOption::TcpRst(reset)));
    assert!(seen.view.tcprst && !seen.view.fastclose);
    assert_eq!(seen.replayed.subflows[0].state, "closed");
    Ok(())
}

/// 3.3.1: reordered segments each carry their mapping; a segment sent again, with its mapping or
/// inside a mapping's range, is covered: no fallback, and each byte counted once.
#[test]
fn retransmissions_and_reordering_are_neither_fallback_nor_counted_twice() -> Result<()> {
    let case = corpus::retransmitted_and_reordered();
    let seen = corpus().case(&case)?;
    let c = case.client_data_start();
    no_fallback(&seen);
    // The retransmission repeating the first mapping adds no mapping.
    assert_eq!(
        mapped(&seen),
        [(c + 1000, 1001, 1000, false), (c, 1, 1000, false), (c + 2000, 2001, 2000, false)]
    );
    assert_eq!(seen.view.data_bytes.c2s, 4000);
    assert_eq!(seen.view.reinjections, 0);
    assert_eq!(seen.view.reinjected_bytes.c2s, 0);
    Ok(())
}

/// Offload sizes: a 65,000-byte segment under one mapping, and a coalesced segment whose second
/// half belongs to a mapping that starts inside it and rides on the next segment.
#[test]
fn offload_sized_segments_are_covered_by_their_mappings() -> Result<()> {
    let case = corpus::offload_sized_segments();
    let seen = corpus().case(&case)?;
    let c = case.client_data_start();
    no_fallback(&seen);
    assert_eq!(
        mapped(&seen),
        [(c, 1, 65_000, false), (c + 65_000, 65_001, 1000, false), (c + 66_000, 66_001, 2000, false)]
    );
    assert_eq!(seen.view.data_bytes.c2s, 68_000);
    Ok(())
}

/// 3.7: data before any mapping falls back, although the peer sends DSS data ACKs.
#[test]
fn first_data_without_a_mapping_falls_back() -> Result<()> {
    let case = corpus::first_data_without_mapping();
    let seen = corpus().case(&case)?;
    assert!(
        seen.subflow.fallback.as_deref().is_some_and(|r| r.contains("not covered")),
        "{:?}",
        seen.subflow.fallback
    );
    assert_eq!(seen.view.fallback, Some("options-vanished"));
    assert!(seen.mappings.is_empty());
    Ok(())
}

/// Every case is read by the tests above; none is left without its answer.
#[test]
fn every_case_has_its_connection() -> Result<()> {
    let corpus = corpus();
    for case in corpus::cases() {
        let seen = corpus.case(&case)?;
        if case.name != corpus::four_byte_sequence_numbers_wrapping().name {
            assert!(seen.tshark_missed_wrap.is_empty(), "{}: {:?}", case.name, seen.tshark_missed_wrap);
        }
    }
    assert_eq!(corpus.table.len(), corpus::cases().len());
    assert_eq!(corpus.decoded.summary.malformed_options, 0);
    assert_eq!(corpus.decoded.summary.undecodable_frames, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Live: the corpus through an interface with the tracker attached.

/// The connection rows of `conns --json` and of the same frames' test runs, without what
/// differs by nature (timestamps) or is not the tracker's (congestion state).
fn comparable(rows: &Value) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for row in rows.as_array().context("connection rows")? {
        let mut row = row.clone();
        let object = row.as_object_mut().context("connection row")?;
        for field in ["first_seen_ns", "last_seen_ns", "subflow_cc"] {
            object.remove(field);
        }
        out.insert(row["server_token"].to_string(), row);
    }
    Ok(out)
}

/// The corpus's frames sent, in order, from one namespace over a veth into another whose end
/// has the tracker attached (tcx ingress, `auto` on veth) and a daemon judging events: `conns`
/// and `table` equal the test runs of the same frames. The 65,000-byte segment does not fit
/// the veth's MTU, so its case is left out of the live run.
#[test]
fn live_tracking_equals_replay() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let (sender, receiver) = (Netns::new("cfs")?, Netns::new("cfr")?);
    let (out_if, in_if) = veth(&sender, "cs", &receiver, "cr")?;
    receiver.ip(&["link", "set", "dev", &in_if, "address", "02:00:00:00:00:02"])?;
    let dataplane = Dataplane::attach(&receiver, &[&in_if])?;
    let _daemon = Daemon::start(&dataplane, &[])?;

    let live_cases: Vec<Case> = corpus::cases()
        .into_iter()
        .filter(|c| c.frames().is_ok_and(|f| f.iter().all(|f| f.len() <= 1514)))
        .collect();
    ensure!(live_cases.len() + 1 == corpus::cases().len(), "only the offload case is too large to send");
    let mut frames = Vec::new();
    for case in &live_cases {
        frames.extend(case.frames()?);
    }
    let scratch = TempDir::new("conf")?;
    let pcap = scratch.path().join("live.pcap");
    corpus::write_pcap(&pcap, &frames)?;
    craft::send_pcap(&sender, &out_if, &pcap)?;

    let (harness, _) = replay::run_capture(&mut capture_file::open(&pcap)?)?;
    let replayed = comparable(&serde_json::to_value(Snapshot::read(&harness.tables)?.connection_views())?)?;
    let replayed_table = serde_json::to_value(replay::table(&harness.tables)?)?;
    // The daemon judges events as they come: wait until its checks are in the maps.
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let live = comparable(&dataplane.json(&["conns"])?)?;
        if live == replayed || Instant::now() > deadline {
            break live;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(live.len(), live_cases.len());
    assert_eq!(live, replayed, "conns --json differs from the test runs of the same frames");
    let live_table: Value = serde_json::from_str(&dataplane.run(&["table"])?)?;
    assert_eq!(sorted(&live_table)?, sorted(&replayed_table)?, "table differs from replay");
    Ok(())
}

/// 3.3.1 on kernel traffic: with `net.mptcp.checksum_enabled = 1` on both hosts, every DSS
/// checksum Linux sends verifies by decode's rule, over whole-packet captures of MPTCP
/// transfers (IPv4 and a join), and decode agrees with tshark on every field tshark has (tshark
/// shows no DSS checksum, see `MORE_FIELDS`).
#[test]
fn kernel_dss_checksums_verify() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    for ns in [&lab.client, &lab.server] {
        ns.sysctl("net.mptcp.checksum_enabled", "1")?;
    }
    // Slow enough for tcpdump to keep every whole packet: a lost one leaves its mapping's
    // checksum unknown.
    lab.shape_client("50mbit")?;
    let scratch = TempDir::new("csum")?;
    let pcap = scratch.path().join("server-any.pcap");
    let mut capture = Capture::start_with_snaplen(&lab.server, "any", &pcap, 0)?;
    let connections = 2;
    let server = Server::start(&lab.server, lab.server_addr(0, 5230), Proto::Mptcp, connections)?;
    for _ in 0..connections {
        let options = ClientOptions { proto: Proto::Mptcp, bytes: 200_000, wait_subflows: 1, hold: None };
        transfer(&lab.client, server.addr, options)?;
    }
    server.join()?;
    std::thread::sleep(Duration::from_millis(300));
    capture.stop()?;

    let decoded = decode::decode_file(&pcap, true)?;
    let summary = &decoded.summary;
    assert_eq!(summary.fallbacks, 0, "{summary:?}");
    assert_eq!(
        summary.checksum_failed,
        0,
        "{:#?}",
        decoded
            .mappings
            .iter()
            .filter(|m| m.checksum.as_ref().is_some_and(|c| c.verdict == Verdict::Failed))
            .collect::<Vec<_>>()
    );
    // A checksum stays unknown only when the capture lost part of its data, as tshark sees it
    // too (tcpdump on `any` misses the odd packet here even unloaded).
    let unknown: Vec<&MappingRecord> = decoded
        .mappings
        .iter()
        .filter(|m| m.checksum.as_ref().is_some_and(|c| c.verdict == Verdict::Unknown))
        .collect();
    for mapping in &unknown {
        let reason = mapping.checksum.as_ref().and_then(|c| c.reason.as_deref());
        ensure!(reason == Some("the capture lacks part of the mapped data"), "{mapping:?}");
    }
    let lost = tshark_fields_with_prefs(&pcap, &[], &["tcp.analysis.lost_segment"])?
        .iter()
        .filter(|row| row.first().is_some_and(|f| !f.is_empty()))
        .count();
    ensure!(
        unknown.is_empty() || lost > 0,
        "{} checksums unknown, no segment missing: {unknown:#?}",
        unknown.len()
    );
    // Data both ways (the transfer, and the server's acknowledgement) and a DATA_FIN each way
    // per connection, on the initial subflows and the joins.
    ensure!(
        summary.checksum_verified >= 4 * connections,
        "only {} checksums verified",
        summary.checksum_verified
    );
    ensure!(decoded.mappings.iter().all(|m| m.checksum.is_some()), "a mapping without checksum");
    let joined = decoded.subflows.iter().filter(|s| s.join.is_some());
    ensure!(
        joined
            .into_iter()
            .any(|s| decoded.mappings.iter().any(|m| m.subflow == s.id && m.checksum.is_some())),
        "no checksummed mapping on a join"
    );
    compare_with_tshark(&pcap, &serde_json::to_value(&decoded)?, FIELDS)?;
    println!(
        "{} DSS checksums verified, {} unknown ({lost} segments missing from the capture), over {} mappings",
        summary.checksum_verified,
        unknown.len(),
        decoded.mappings.len()
    );
    Ok(())
}

/// A table's connections sorted by server token.
fn sorted(table: &Value) -> Result<Vec<Value>> {
    let mut connections = table["connections"].as_array().context("connections")?.clone();
    connections.sort_by_key(|c| c["server_token"].to_string());
    Ok(connections)
}
