//! Offline checks of the grouping, orientation and verdict logic on synthetic captures. The
//! HMAC values come from [`handshake`] (checked against independent vectors there); the
//! integration test `tests/tests/decode.rs` checks everything against kernel traffic.

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use etherparse::PacketBuilder;
use mptcp_common::mptcp::{
    AddAddr, DataAck, Dss, DssMapping, MpCapable, MpExperimental, MpJoin, MpPrio, MptcpOption, OptionBytes,
    RemoveAddr,
};
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        PcapNgWriter,
        blocks::{enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock},
    },
};

use super::{hmac::hex, *};
use crate::{
    analysis::capture_file::{self, CaptureFileError},
    dataplane::handshake,
};

const CLIENT_KEY: u64 = 0x0102_0304_0506_0708;
const SERVER_KEY: u64 = 0x1112_1314_1516_1718;
const CLIENT_NONCE: u32 = 0x0102_0304;
const SERVER_NONCE: u32 = 0x0a0b_0c0d;
const CLIENT: [u8; 4] = [192, 0, 2, 1];
const CLIENT_2: [u8; 4] = [198, 51, 100, 1];
const SERVER: [u8; 4] = [192, 0, 2, 2];
const SERVER_2: [u8; 4] = [198, 51, 100, 2];

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
}

/// An IPv4 TCP packet carrying `options` (padded with NOPs), with as many payload bytes as its
/// DSS mapping maps (none without one: data outside a mapping is a fallback).
fn packet(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: Flags, options: &[MptcpOption]) -> Vec<u8> {
    let mut area = Vec::new();
    for option in options {
        let mut buf = [0u8; 40];
        let len = option.encode(&mut buf).unwrap();
        area.extend_from_slice(&buf[..len]);
    }
    while area.len() % 4 != 0 {
        area.push(1);
    }
    let payload = options
        .iter()
        .find_map(|o| match o {
            MptcpOption::Dss(Dss { mapping: Some(m), .. }) => Some(usize::from(m.data_len)),
            _ => None,
        })
        .unwrap_or(0);
    segment(src, dst, flags, 1, &area, payload)
}

/// An IPv4 TCP packet with a raw option area (a multiple of 4 bytes) and 8 payload bytes.
fn packet_with_area(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: Flags, area: &[u8]) -> Vec<u8> {
    segment(src, dst, flags, 1, area, 8)
}

/// An IPv4 TCP packet at sequence number `seq` with a raw option area and `payload` bytes.
fn segment(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: Flags,
    seq: u32,
    area: &[u8],
    payload: usize,
) -> Vec<u8> {
    let mut builder = PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 1000);
    builder = match flags {
        Flags::Syn => builder.syn(),
        Flags::SynAck => builder.syn().ack(1),
        Flags::Ack => builder.ack(1),
    };
    let builder = builder.options_raw(area).unwrap();
    let mut out = Vec::new();
    builder.write(&mut out, &vec![0x5a; payload]).unwrap();
    out
}

fn capable(sender_key: Option<u64>, receiver_key: Option<u64>) -> MptcpOption {
    MptcpOption::Capable(MpCapable {
        version: 1,
        flags: 0x01,
        sender_key,
        receiver_key,
        data_len: None,
        checksum: None,
    })
}

/// A connection with an ADD_ADDR from the server and a join from the client's second address.
fn handshake_packets(join_ack_hmac: [u8; 20]) -> Vec<Vec<u8>> {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let (c2, s1) = ((CLIENT_2, 40001), (SERVER, 80));
    let announced = IpAddr::from(SERVER_2);
    let add_addr = AddAddr {
        echo: false,
        addr_id: 1,
        addr: announced,
        port: None,
        hmac: Some(handshake::add_addr_hmac(SERVER_KEY, CLIENT_KEY, 1, announced, None)),
    };
    let dss = Dss {
        data_fin: false,
        data_ack: Some(DataAck { value: 7, wide: true }),
        mapping: Some(DssMapping { dsn: 9, dsn_wide: true, subflow_seq: 1, data_len: 8, checksum: None }),
    };
    let synack_hmac = handshake::join_synack_hmac(SERVER_KEY, CLIENT_KEY, SERVER_NONCE, CLIENT_NONCE);
    let token = handshake::token(SERVER_KEY);
    vec![
        packet(c, s, Flags::Syn, &[capable(None, None)]),
        packet(s, c, Flags::SynAck, &[capable(Some(SERVER_KEY), None)]),
        packet(c, s, Flags::Ack, &[capable(Some(CLIENT_KEY), Some(SERVER_KEY))]),
        packet(s, c, Flags::Ack, &[MptcpOption::AddAddr(add_addr)]),
        packet(
            c2,
            s1,
            Flags::Syn,
            &[MptcpOption::Join(MpJoin::Syn { backup: true, addr_id: 2, token, nonce: CLIENT_NONCE })],
        ),
        packet(
            s1,
            c2,
            Flags::SynAck,
            &[MptcpOption::Join(MpJoin::SynAck {
                backup: false,
                addr_id: 0,
                truncated_hmac: synack_hmac,
                nonce: SERVER_NONCE,
            })],
        ),
        packet(c2, s1, Flags::Ack, &[MptcpOption::Join(MpJoin::Ack { hmac: join_ack_hmac })]),
        packet(c, s, Flags::Ack, &[MptcpOption::Dss(dss)]),
    ]
}

fn good_join_ack() -> [u8; 20] {
    handshake::join_ack_hmac(CLIENT_KEY, SERVER_KEY, CLIENT_NONCE, SERVER_NONCE)
}

struct Scratch(std::path::PathBuf);

impl Scratch {
    /// A file name unique to this process and call, so tests can run in parallel.
    fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("mptcp-decode-{}-{n}-{name}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_pcap(name: &str, link_type: DataLink, frames: &[Vec<u8>]) -> Scratch {
    let header = PcapHeader { datalink: link_type, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
    for frame in frames {
        writer.write_packet(&PcapPacket::new(Duration::ZERO, frame.len() as u32, frame)).unwrap();
    }
    let scratch = Scratch::new(name);
    std::fs::write(&scratch.0, writer.into_writer()).unwrap();
    scratch
}

fn decode(frames: &[Vec<u8>]) -> Report {
    let file = write_pcap("raw", DataLink::RAW, frames);
    decode_file(&file.0, true).unwrap()
}

#[test]
fn a_whole_connection_is_grouped_and_every_hmac_verifies() {
    let report = decode(&handshake_packets(good_join_ack()));
    assert_eq!(report.read_error, None);
    assert_eq!(report.summary.mptcp_packets, 8);
    assert_eq!(report.connections.len(), 1);
    let connection = &report.connections[0];
    assert_eq!(connection.initiator_key, Some(CLIENT_KEY));
    assert_eq!(connection.responder_key, Some(SERVER_KEY));
    assert_eq!(connection.responder_token, Some(handshake::token(SERVER_KEY)));
    assert_eq!(connection.initiator_idsn, Some(handshake::idsn(CLIENT_KEY)));
    assert_eq!(connection.subflows, [0, 1]);
    let join = report.subflows[1].join.as_ref().unwrap();
    assert_eq!((join.initiator_addr_id, join.responder_addr_id), (2, Some(0)));
    assert_eq!((join.initiator_backup, join.responder_backup), (true, Some(false)));
    let verdicts: Vec<_> = report.hmac_checks.iter().map(|c| (c.frame, c.option, c.verdict)).collect();
    assert_eq!(
        verdicts,
        [
            (4, HmacOption::AddAddr, Verdict::Verified),
            (6, HmacOption::MpJoinSynAck, Verdict::Verified),
            (7, HmacOption::MpJoinAck, Verdict::Verified),
        ]
    );
    assert_eq!(report.summary.fallbacks, 0);
    let packets = report.packets.unwrap();
    assert_eq!(packets.len(), 8);
    assert!(matches!(
        packets[7].options[0].option,
        MptcpOption::Dss(Dss {
            data_ack: Some(DataAck { value: 7, .. }),
            mapping: Some(DssMapping { dsn: 9, .. }),
            ..
        })
    ));
}

#[test]
fn a_wrong_hmac_fails_and_missing_keys_are_unknown() {
    let mut bad = good_join_ack();
    bad[3] ^= 0x80;
    let report = decode(&handshake_packets(bad));
    assert_eq!((report.summary.hmac_verified, report.summary.hmac_failed), (2, 1));
    let failed = report.hmac_checks.iter().find(|c| c.verdict == Verdict::Failed).unwrap();
    assert_eq!((failed.frame, failed.option), (7, HmacOption::MpJoinAck));
    assert_eq!(failed.expected.as_deref(), Some(hex(&good_join_ack()).as_str()));

    // Without the MP_CAPABLE handshake the join belongs to no known connection.
    let report = decode(&handshake_packets(good_join_ack())[4..]);
    assert_eq!(report.connections.len(), 0);
    assert_eq!(report.summary.hmac_unknown, 2);
    assert!(report.hmac_checks.iter().all(|c| c.reason.is_some()));

    // Captured from the SYN-ACK on, the subflows are still oriented from their initiators.
    let report = decode(&handshake_packets(good_join_ack())[1..]);
    assert_eq!(report.summary.hmac_verified, 3);
    assert_eq!(report.subflows[0].kind, SubflowKind::Unknown);
    assert_eq!(report.subflows[0].initiator, SocketAddr::from((CLIENT, 40000)));
}

#[test]
fn fallback_malformed_options_and_broken_frames_are_reported() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut frames = vec![
        packet(c, s, Flags::Syn, &[capable(None, None)]),
        packet(s, c, Flags::SynAck, &[]),
        packet(c, s, Flags::Ack, &[]),
    ];
    // An MP_JOIN of 13 bytes, padded with NOPs: a malformed option.
    let bad_join = [30, 13, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1];
    frames.push(packet_with_area(c, s, Flags::Ack, &bad_join));
    // A frame cut inside its TCP header.
    frames.push(packet(c, s, Flags::Ack, &[])[..30].to_vec());
    // Not TCP: a UDP datagram.
    let mut udp = Vec::new();
    PacketBuilder::ipv4(CLIENT, SERVER, 64).udp(1, 2).write(&mut udp, &[0; 4]).unwrap();
    frames.push(udp);

    let report = decode(&frames);
    assert_eq!(report.summary.frames, 6);
    assert_eq!(report.summary.non_tcp_frames, 1);
    assert_eq!(report.undecodable_frames.len(), 1);
    assert_eq!(report.undecodable_frames[0].frame, 5);
    assert_eq!(report.malformed_options.len(), 1);
    assert_eq!(report.malformed_options[0].frame, 4);
    assert_eq!(report.subflows.len(), 1);
    assert!(report.subflows[0].fallback.as_deref().unwrap().contains("SYN-ACK carries no MP_CAPABLE"));
    assert_eq!(report.summary.fallbacks, 1);
}

#[test]
fn pcapng_with_ethernet_frames_decodes_like_pcap() {
    let frames: Vec<Vec<u8>> = handshake_packets(good_join_ack())
        .into_iter()
        .map(|ip| {
            let mut ethernet = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
            ethernet.extend_from_slice(&ip);
            ethernet
        })
        .collect();
    let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
    writer
        .write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![],
        })
        .unwrap();
    for frame in &frames {
        writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::ZERO,
                original_len: frame.len() as u32,
                data: Cow::Borrowed(frame),
                options: vec![],
            })
            .unwrap();
    }
    let file = Scratch::new("ng");
    std::fs::write(&file.0, writer.into_inner()).unwrap();
    let report = decode_file(&file.0, false).unwrap();
    assert_eq!(report.summary.hmac_verified, 3);
    assert_eq!(report.connections.len(), 1);
    assert!(report.packets.is_none());
}

#[test]
fn bad_files_are_clear_errors_and_a_cut_file_keeps_its_frames() {
    let missing = decode_file(Path::new("/nonexistent/capture.pcap"), false).unwrap_err();
    assert!(matches!(missing, CaptureFileError::Io { .. }), "{missing}");
    let garbage = Scratch::new("garbage");
    std::fs::write(&garbage.0, b"this is not a capture file at all").unwrap();
    let error = decode_file(&garbage.0, false).unwrap_err();
    assert!(matches!(error, CaptureFileError::Format { .. }), "{error}");

    let file = write_pcap("cut", DataLink::RAW, &handshake_packets(good_join_ack()));
    let mut bytes = std::fs::read(&file.0).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&file.0, bytes).unwrap();
    let report = decode_file(&file.0, false).unwrap();
    assert!(report.read_error.is_some());
    assert_eq!(report.summary.frames, 7);
    assert_eq!(report.summary.hmac_verified, 3);
}

/// The codec's option and the derived fields make one flat object, `null` for what is absent.
#[test]
fn options_keep_their_json_shape() {
    let options = [
        (
            capable(Some(SERVER_KEY), None),
            r#"{"subtype":"mp_capable","version":1,"flags":1,"sender_key":1230066625199609624,"receiver_key":null,"data_len":null,"checksum":null,"sender_token":3433907628,"sender_idsn":6006656914258689166}"#,
        ),
        (
            MptcpOption::Join(MpJoin::Ack { hmac: [0xab; 20] }),
            r#"{"subtype":"mp_join_ack","hmac":"abababababababababababababababababababab"}"#,
        ),
        (
            MptcpOption::Dss(Dss {
                data_fin: true,
                data_ack: Some(DataAck { value: 70000, wide: false }),
                mapping: None,
            }),
            r#"{"subtype":"dss","data_fin":true,"data_ack":70000,"data_ack_wide":false,"dsn":null,"dsn_wide":null,"subflow_seq":null,"data_len":null,"checksum":null,"infinite_mapping":false}"#,
        ),
        (
            MptcpOption::AddAddr(AddAddr {
                echo: false,
                addr_id: 4,
                addr: IpAddr::from(SERVER_2),
                port: None,
                hmac: None,
            }),
            r#"{"subtype":"add_addr","echo":false,"addr_id":4,"addr":"198.51.100.2","port":null,"hmac":null,"v0":true}"#,
        ),
        (
            MptcpOption::RemoveAddr(RemoveAddr { ids: OptionBytes::new(&[1, 2, 3]).unwrap() }),
            r#"{"subtype":"remove_addr","ids":[1,2,3]}"#,
        ),
        (
            MptcpOption::Prio(MpPrio { backup: true, addr_id: None }),
            r#"{"subtype":"mp_prio","backup":true,"addr_id":null}"#,
        ),
        (
            MptcpOption::Experimental(MpExperimental {
                nibble: 2,
                payload: OptionBytes::new(&[0xde, 0xad, 0x01]).unwrap(),
            }),
            r#"{"subtype":"mp_experimental","nibble":2,"payload":"dead01"}"#,
        ),
    ];
    for (option, json) in options {
        assert_eq!(serde_json::to_string(&OptionRecord::from(&option)).unwrap(), json);
    }
}

/// The fallback rule counts the payload the IP header says was sent, as the programs do: a snap
/// length that kept only the headers of the first data segment still shows it unmapped.
#[test]
fn a_snap_length_hides_no_data_from_the_fallback_rule() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut data = segment(c, s, Flags::Ack, 2, &[], 1000);
    data.truncate(40);
    let frames = vec![
        packet(c, s, Flags::Syn, &[capable(None, None)]),
        packet(s, c, Flags::SynAck, &[capable(Some(SERVER_KEY), None)]),
        packet(c, s, Flags::Ack, &[capable(Some(CLIENT_KEY), Some(SERVER_KEY))]),
        data,
    ];
    let report = decode(&frames);
    assert_eq!(report.undecodable_frames.len(), 0);
    let fallback = report.subflows[0].fallback.as_deref().unwrap_or_default();
    assert!(fallback.contains("frame 4 not covered"), "{fallback:?}");
}

/// A client data segment at relative subflow sequence `rel_seq` with `payload` bytes, carrying
/// `mapping` (8-byte DSN) when given.
fn data_segment(rel_seq: u32, mapping: Option<DssMapping>, payload: usize) -> Vec<u8> {
    let dss = MptcpOption::Dss(Dss { data_fin: false, data_ack: None, mapping });
    let mut area = [0u8; 40];
    let mut len = dss.encode(&mut area).unwrap();
    while !len.is_multiple_of(4) {
        area[len] = 1;
        len += 1;
    }
    // The SYN's sequence number is 1 (`packet`).
    segment((CLIENT, 40000), (SERVER, 80), Flags::Ack, 1 + rel_seq, &area[..len], payload)
}

/// A connection whose client maps data with a checksum that verifies (its mapping sent twice,
/// on both its segments), one that fails, one without, and one whose data is not captured.
fn checksummed_transfer() -> Vec<Vec<u8>> {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let dsn = handshake::token_and_idsn(1, CLIENT_KEY).1.wrapping_add(1);
    let mapping = |offset: u32, data_len: u16, checksum: Option<u16>| DssMapping {
        dsn: dsn + u64::from(offset),
        dsn_wide: true,
        subflow_seq: 1 + offset,
        data_len,
        checksum,
    };
    let mut good = mptcp_common::checksum::DssChecksum::new(dsn, 1, 200);
    good.add(&[0x5a; 200]);
    let good = mapping(0, 200, Some(good.finish()));
    vec![
        packet(c, s, Flags::Syn, &[capable(None, None)]),
        packet(s, c, Flags::SynAck, &[capable(Some(SERVER_KEY), None)]),
        packet(c, s, Flags::Ack, &[capable(Some(CLIENT_KEY), Some(SERVER_KEY))]),
        data_segment(1, Some(good), 100),
        data_segment(101, Some(good), 100),
        data_segment(201, Some(mapping(200, 100, Some(0x1234))), 100),
        data_segment(301, Some(mapping(300, 50, Some(0x4321))), 0),
        data_segment(351, Some(mapping(350, 10, None)), 10),
    ]
}

#[test]
fn mappings_are_listed_once_with_final_checksum_verdicts() {
    let report = decode(&checksummed_transfer());
    assert_eq!(report.subflows[0].fallback, None);
    let s = &report.summary;
    assert_eq!((s.checksum_verified, s.checksum_failed, s.checksum_unknown), (1, 1, 1), "{s:?}");
    // Listed when final: the mapping without a checksum at once, the one missing data at the end.
    let listed: Vec<(u32, Option<Verdict>)> =
        report.mappings.iter().map(|m| (m.subflow_seq, m.checksum.as_ref().map(|c| c.verdict))).collect();
    assert_eq!(
        listed,
        [
            (1, Some(Verdict::Verified)),
            (201, Some(Verdict::Failed)),
            (351, None),
            (301, Some(Verdict::Unknown))
        ]
    );
}

/// The JSON written while decoding is the report `to_json` gives of the same capture.
#[test]
fn streamed_json_is_the_whole_report() {
    let file = write_pcap("stream", DataLink::RAW, &checksummed_transfer());
    for with_packets in [false, true] {
        let whole = decode_file(&file.0, with_packets).unwrap();
        let mut writer = JsonWriter::new(Vec::new(), &whole.file, with_packets).unwrap();
        let report = stream_file(&file.0, with_packets, &mut writer).unwrap();
        assert!(report.mappings.is_empty() && report.packets.is_none());
        let streamed: serde_json::Value = serde_json::from_slice(&writer.finish(&report).unwrap()).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&to_json(&whole).unwrap()).unwrap();
        assert_eq!(streamed, expected, "with_packets {with_packets}");
        assert_eq!(streamed["mappings"].as_array().map(Vec::len), Some(4));
    }
}

/// An analysis fed frame by frame, with what it handed on so far.
#[derive(Default)]
struct Live {
    analysis: analysis::Analysis,
    handed: Collect,
    frames: u64,
}

impl Live {
    fn frame(&mut self, data: Vec<u8>, time: Option<Duration>) {
        self.frames += 1;
        let frame = capture_file::Frame { number: self.frames, link_type: DataLink::RAW, time, data };
        self.analysis.frame(&frame);
        let Ok(()) = self.analysis.hand_on(&mut self.handed);
    }

    fn end_of_capture(&mut self) {
        self.analysis.end_of_capture();
        let Ok(()) = self.analysis.hand_on(&mut self.handed);
    }
}

/// A segment from `src` at `seq` acknowledging `ack`, with FIN or RST.
fn closing(src: ([u8; 4], u16), dst: ([u8; 4], u16), seq: u32, ack: u32, fin: bool, rst: bool) -> Vec<u8> {
    let mut builder = PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 1000).ack(ack);
    if fin {
        builder = builder.fin();
    }
    if rst {
        builder = builder.rst();
    }
    let mut out = Vec::new();
    builder.write(&mut out, &[]).unwrap();
    out
}

/// The MP_CAPABLE handshake of `client` with the server (both ISNs 1, as `segment` writes).
fn capable_handshake(client: ([u8; 4], u16)) -> Vec<Vec<u8>> {
    let s = (SERVER, 80);
    vec![
        packet(client, s, Flags::Syn, &[capable(None, None)]),
        packet(s, client, Flags::SynAck, &[capable(Some(SERVER_KEY), None)]),
        packet(client, s, Flags::Ack, &[capable(Some(CLIENT_KEY), Some(SERVER_KEY))]),
    ]
}

/// Both FINs, each acknowledged: the client's FIN, the server's FIN with its ACK, the last ACK.
fn orderly_close(client: ([u8; 4], u16)) -> Vec<Vec<u8>> {
    let s = (SERVER, 80);
    vec![
        closing(client, s, 2, 2, true, false),
        closing(s, client, 2, 3, true, false),
        closing(client, s, 3, 3, false, false),
    ]
}

/// Once both FINs are acknowledged the subflow's state is gone and its connection, with every
/// item, is handed on once: not again at the end of the capture.
#[test]
fn a_closed_connection_is_freed_and_handed_on_once() {
    let c = (CLIENT, 40000);
    let mut live = Live::default();
    for frame in capable_handshake(c) {
        live.frame(frame, None);
    }
    assert_eq!(live.analysis.live_subflows(), 1);
    assert_eq!(live.analysis.live_connections(), (1, 2));
    let close = orderly_close(c);
    for frame in close[..2].iter().cloned() {
        live.frame(frame, None);
    }
    assert_eq!(live.analysis.live_subflows(), 1, "the server's FIN is not acknowledged yet");
    assert!(live.handed.connections.is_empty());
    live.frame(close[2].clone(), None);
    assert_eq!(live.analysis.live_subflows(), 0);
    assert_eq!(live.analysis.live_connections(), (0, 0), "no connection or token kept");
    assert_eq!(live.handed.connections.len(), 1);
    assert_eq!(live.handed.subflows.len(), 1);
    assert_eq!(live.handed.subflows[0].packets, 6);
    assert_eq!(live.handed.connections[0].responder_key, Some(SERVER_KEY));
    live.end_of_capture();
    assert_eq!((live.handed.connections.len(), live.handed.subflows.len()), (1, 1));
    let report = live.analysis.finish("live".to_owned());
    assert_eq!((report.summary.connections, report.summary.subflows), (1, 1));
}

/// A RST ends a subflow at once; a later packet on its 4-tuple is a new subflow.
#[test]
fn a_reset_ends_the_subflow() {
    let (c, s) = ((CLIENT, 40000), (SERVER, 80));
    let mut live = Live::default();
    for frame in capable_handshake(c) {
        live.frame(frame, None);
    }
    live.frame(closing(s, c, 2, 2, false, true), None);
    assert_eq!(live.analysis.live_subflows(), 0);
    assert_eq!(live.handed.connections.len(), 1);
    live.frame(closing(c, s, 2, 2, false, false), None);
    assert_eq!(live.analysis.live_subflows(), 1);
    live.end_of_capture();
    assert_eq!(
        live.handed.subflows.iter().map(|s| (s.id, s.kind)).collect::<Vec<_>>(),
        [(0, SubflowKind::MpCapable), (1, SubflowKind::Unknown)]
    );
}

/// A subflow silent for the idle timeout of capture time ends; one still talking does not.
#[test]
fn an_idle_subflow_ends_after_the_timeout() {
    let (quiet, talking) = ((CLIENT, 40000), (CLIENT, 40001));
    let mut live = Live::default();
    let at = |secs: u64| Some(Duration::from_secs(1_700_000_000 + secs));
    for frame in capable_handshake(quiet).into_iter().chain(capable_handshake(talking)) {
        live.frame(frame, at(0));
    }
    let keepalive = || packet(talking, (SERVER, 80), Flags::Ack, &[]);
    let timeout = analysis::IDLE_TIMEOUT.as_secs();
    for secs in [timeout / 4, timeout / 2, timeout - 1] {
        live.frame(keepalive(), at(secs));
    }
    assert_eq!(live.analysis.live_subflows(), 2, "not idle for longer than the timeout yet");
    // The next look over the subflows comes within a sweep interval (30 s) past the timeout.
    live.frame(keepalive(), at(timeout + 40));
    assert_eq!(live.analysis.live_subflows(), 1);
    assert_eq!(live.handed.subflows.len(), 1);
    assert_eq!(live.handed.subflows[0].initiator, SocketAddr::from(quiet));
}

/// A join naming the token of a connection that has finished finds no connection: its HMACs
/// are unknown. One naming a live connection joins it.
#[test]
fn a_join_after_the_connection_closed_is_of_no_known_connection() {
    let c = (CLIENT, 40000);
    let join = handshake_packets(good_join_ack());
    let frames: Vec<Vec<u8>> =
        capable_handshake(c).into_iter().chain(orderly_close(c)).chain(join[4..7].iter().cloned()).collect();
    let report = decode(&frames);
    assert_eq!(report.summary.connections, 1);
    assert_eq!(report.connections[0].subflows, [0]);
    let joined = report.subflows.iter().find(|s| s.kind == SubflowKind::MpJoin).unwrap();
    assert_eq!(joined.connection, None);
    assert_eq!(report.summary.hmac_unknown, 2);
    // Without the close, the same join is the connection's.
    let frames: Vec<Vec<u8>> = capable_handshake(c).into_iter().chain(join[4..7].iter().cloned()).collect();
    let report = decode(&frames);
    assert_eq!(report.connections[0].subflows, [0, 1]);
    assert_eq!(report.summary.hmac_verified, 2);
}

/// The text written while decoding has the lines `to_text` gives of the whole report, in the
/// order things finished (the summary line last).
#[test]
fn streamed_text_has_the_whole_reports_lines() {
    let mut bad = good_join_ack();
    bad[0] ^= 1;
    let file = write_pcap("text", DataLink::RAW, &handshake_packets(bad));
    let whole = crate::cli::decode::to_text(&decode_file(&file.0, true).unwrap()).unwrap();
    let mut writer = crate::cli::decode::TextWriter::new(Vec::new());
    let report = stream_file(&file.0, true, &mut writer).unwrap();
    let streamed = String::from_utf8(writer.finish(&report).unwrap()).unwrap();
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&streamed), sorted(&whole));
    assert!(streamed.contains("HMAC MpJoinAck frame 7 (subflow 1): Failed"), "{streamed}");
}

/// `decode --follow`: a capture written in pieces (cut inside its header and inside a record)
/// is decoded whole once its writer closes it.
#[test]
fn a_capture_still_being_written_is_decoded_as_it_grows() {
    use std::io::Write as _;
    let header = PcapHeader { datalink: DataLink::RAW, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(Vec::new(), header).unwrap();
    for frame in handshake_packets(good_join_ack()) {
        writer.write_packet(&PcapPacket::new(Duration::ZERO, frame.len() as u32, &frame)).unwrap();
    }
    let bytes = writer.into_writer();
    let scratch = Scratch::new("follow");
    let mut file = std::fs::File::create(&scratch.0).unwrap();
    file.write_all(&bytes[..20]).unwrap();
    let rest = bytes[20..].to_vec();
    let appender = std::thread::spawn(move || {
        for chunk in rest.chunks(rest.len() / 2 + 7) {
            std::thread::sleep(Duration::from_millis(300));
            file.write_all(chunk).unwrap();
        }
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut collect = Collect::default();
    let report = follow_file(&scratch.0, false, &stop, &mut collect).unwrap();
    appender.join().unwrap();
    assert_eq!(report.read_error, None);
    assert_eq!(report.summary.frames, 8);
    assert_eq!(report.summary.hmac_verified, 3);
    assert_eq!(collect.connections.len(), 1);
}
