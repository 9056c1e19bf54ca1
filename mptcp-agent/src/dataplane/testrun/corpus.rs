//! A conformance corpus: small crafted captures of what RFC 8684 allows and stacks other than
//! Linux send (one mapping over several segments, 4-byte sequence numbers, DSS checksums,
//! MP_CAPABLE carrying the first data, RFC 6824 peers, lone DATA_FINs, ADD_ADDR echoes,
//! MP_FASTCLOSE and MP_TCPRST, retransmissions and reordering, segmentation-offload sizes).
//! Each case is one connection on its own client port; the RFC's answer for each is written in
//! the tests that read them (`tests/conformance.rs`), in process and through a live interface.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Result;
use mptcp_common::{
    checksum::DssChecksum,
    mptcp::{
        AddAddr, DataAck, Dss, DssMapping, MpCapable, MpFail, MpFastClose, MpTcpRst, MptcpOption,
        capable_flags, tcprst_flags,
    },
};
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use super::frames::{PAYLOAD_BYTE, Segment};
use crate::dataplane::handshake;

/// The client's address; each case has its own port.
pub const CLIENT: [u8; 4] = [192, 0, 2, 1];
/// The server, 192.0.2.2:80.
pub const SERVER: ([u8; 4], u16) = ([192, 0, 2, 2], 80);
/// The address the server announces.
pub const ANNOUNCED: [u8; 4] = [198, 51, 100, 2];
/// TCP initial sequence numbers: the client's data starts at 1001, the server's at 5001.
pub const CLIENT_ISN: u32 = 1000;
pub const SERVER_ISN: u32 = 5000;
/// What the corpus's captures keep of each frame, as `tcpdump -s 2048` would: every frame but the
/// offload-sized one whole (and that one short enough for a test run of XDP, which takes at
/// most a page).
pub const SNAPLEN: usize = 2048;
/// A client key whose data sequence space starts 2,286 bytes below a multiple of 2^32
/// (IDSN + 1 = 0x82f03ef0_fffff712), so 1000-byte mappings cross the 32-bit wrap in the third.
pub const WRAPPING_CLIENT_KEY: u64 = 0x0c0f_0000_001f_48bb;

/// One crafted connection.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub client: ([u8; 4], u16),
    pub client_key: u64,
    pub server_key: u64,
    pub version: u8,
    pub segments: Vec<Segment>,
}

impl Case {
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(self.client)
    }

    /// Where the client's data sequence space starts (its IDSN + 1, RFC 8684 3.3); with the
    /// version's hash.
    pub fn client_data_start(&self) -> u64 {
        idsn(self.version, self.client_key).wrapping_add(1)
    }

    pub fn server_data_start(&self) -> u64 {
        idsn(self.version, self.server_key).wrapping_add(1)
    }

    /// The Ethernet frames, whole.
    pub fn frames(&self) -> Result<Vec<Vec<u8>>> {
        self.segments.iter().map(Segment::frame).collect()
    }
}

fn idsn(version: u8, key: u64) -> u64 {
    if version == 0 { handshake::idsn_v0(key) } else { handshake::idsn(key) }
}

/// Writes `frames` as a pcap of Ethernet frames cut to [`SNAPLEN`] bytes, as tcpdump `-s 2048`
/// writes them (the original length kept).
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) -> Result<()> {
    let header =
        PcapHeader { datalink: DataLink::ETHERNET, snaplen: SNAPLEN as u32, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(Vec::new(), header)?;
    for (i, frame) in frames.iter().enumerate() {
        let captured = &frame[..frame.len().min(SNAPLEN)];
        let at = Duration::from_micros(i as u64);
        writer.write_packet(&PcapPacket::new(at, u32::try_from(frame.len())?, captured))?;
    }
    std::fs::write(path, writer.into_writer())?;
    Ok(())
}

/// A DSS option: a mapping (DSN, relative subflow sequence, length, checksum) and a data ACK,
/// each 8 bytes when `wide`.
pub fn dss(
    mapping: Option<(u64, u32, u16, Option<u16>)>,
    data_ack: Option<u64>,
    data_fin: bool,
    wide: bool,
) -> MptcpOption {
    MptcpOption::Dss(Dss {
        data_fin,
        data_ack: data_ack
            .map(|value| DataAck { value: if wide { value } else { value & 0xffff_ffff }, wide }),
        mapping: mapping.map(|(dsn, subflow_seq, data_len, checksum)| DssMapping {
            dsn: if wide { dsn } else { dsn & 0xffff_ffff },
            dsn_wide: wide,
            subflow_seq,
            data_len,
            checksum,
        }),
    })
}

/// The DSS checksum of a mapping over `payload` bytes of [`PAYLOAD_BYTE`] (the frames' payload).
pub fn checksum(dsn: u64, subflow_seq: u32, data_len: u16, payload: usize) -> u16 {
    let mut sum = DssChecksum::new(dsn, subflow_seq, data_len);
    sum.add(&vec![PAYLOAD_BYTE; payload]);
    sum.finish()
}

fn capable(version: u8, flags: u8, sender: Option<u64>, receiver: Option<u64>) -> MptcpOption {
    MptcpOption::Capable(MpCapable {
        version,
        flags,
        sender_key: sender,
        receiver_key: receiver,
        data_len: None,
        checksum: None,
    })
}

/// Builds one case's segments: from the client, from the server, at relative sequence numbers.
struct Builder {
    client: ([u8; 4], u16),
    segments: Vec<Segment>,
}

impl Builder {
    /// The MP_CAPABLE SYN and SYN-ACK of `version` with `flags` (v0 SYNs carry the sender's key).
    fn new(port: u16, version: u8, flags: u8, keys: (u64, u64)) -> Self {
        let client = (CLIENT, port);
        let syn_key = (version == 0).then_some(keys.0);
        let segments = vec![
            Segment::syn(client, SERVER).seq(CLIENT_ISN).with(capable(version, flags, syn_key, None)),
            Segment::syn_ack(SERVER, client).seq(SERVER_ISN).with(capable(
                version,
                flags,
                Some(keys.1),
                None,
            )),
        ];
        Self { client, segments }
    }

    /// The v1 handshake with HMAC-SHA256, third ACK included.
    fn handshake(port: u16, keys: (u64, u64)) -> Self {
        Self::new(port, 1, capable_flags::HMAC_SHA256, keys).third_ack(1, capable_flags::HMAC_SHA256, keys)
    }

    fn third_ack(self, version: u8, flags: u8, keys: (u64, u64)) -> Self {
        self.client_sends(1, 0, Some(capable(version, flags, Some(keys.0), Some(keys.1))))
    }

    /// A client segment at relative sequence `rel` with `payload` bytes.
    fn client_sends(mut self, rel: u32, payload: usize, option: Option<MptcpOption>) -> Self {
        let segment = Segment::new(self.client, SERVER).seq(CLIENT_ISN.wrapping_add(rel)).payload(payload);
        self.segments.push(Segment { mptcp: option, ..segment });
        self
    }

    /// A server segment at relative sequence `rel` with `payload` bytes.
    fn server_sends(mut self, rel: u32, payload: usize, option: Option<MptcpOption>) -> Self {
        let segment = Segment::new(SERVER, self.client).seq(SERVER_ISN.wrapping_add(rel)).payload(payload);
        self.segments.push(Segment { mptcp: option, ..segment });
        self
    }

    fn last(mut self, change: impl FnOnce(Segment) -> Segment) -> Self {
        if let Some(segment) = self.segments.pop() {
            self.segments.push(change(segment));
        }
        self
    }

    fn case(self, name: &'static str, version: u8, keys: (u64, u64)) -> Case {
        Case {
            name,
            client: self.client,
            client_key: keys.0,
            server_key: keys.1,
            version,
            segments: self.segments,
        }
    }
}

/// Keys of case `n`: distinct per case, so every connection has its own tokens.
fn keys(n: u64) -> (u64, u64) {
    (0x1111_2222_3333_0000 | n, 0x5555_6666_7777_0000 | n)
}

/// Every case, in the order the README lists them.
pub fn cases() -> Vec<Case> {
    vec![
        one_mapping_over_three_segments(),
        four_byte_sequence_numbers_wrapping(),
        dss_checksums(),
        mp_capable_with_data_after_a_lost_third_ack(),
        rfc6824_v0(),
        lone_data_fin(),
        add_addr_and_echo(),
        fastclose(),
        tcprst(),
        retransmitted_and_reordered(),
        offload_sized_segments(),
        first_data_without_mapping(),
    ]
}

/// Case 1: a 3000-byte mapping sent on the first of three 1000-byte segments (3.3.1: a mapping
/// need not be repeated on every segment it covers).
pub fn one_mapping_over_three_segments() -> Case {
    let keys = keys(1);
    let b = Builder::handshake(41_001, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    b.client_sends(1, 1000, Some(dss(Some((c, 1, 3000, None)), Some(s), false, true)))
        .server_sends(1, 0, Some(dss(None, Some(c + 1000), false, true)))
        .client_sends(1001, 1000, None)
        .client_sends(2001, 1000, None)
        .server_sends(1, 0, Some(dss(None, Some(c + 3000), false, true)))
        .case("one mapping over three segments", 1, keys)
}

/// Case 2: 4-byte DSNs and data ACKs (flags m=0, a=0): four 1000-byte mappings, the client's
/// data sequence numbers crossing 2^32 inside the third; the fourth's and the last data ACKs'
/// low 32 bits are past the wrap.
pub fn four_byte_sequence_numbers_wrapping() -> Case {
    let keys = (WRAPPING_CLIENT_KEY, keys(2).1);
    let b = Builder::handshake(41_002, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    b.client_sends(1, 1000, Some(dss(Some((c, 1, 1000, None)), Some(s), false, false)))
        .server_sends(1, 0, Some(dss(None, Some(c + 1000), false, false)))
        .client_sends(1001, 1000, Some(dss(Some((c + 1000, 1001, 1000, None)), Some(s), false, false)))
        .server_sends(1, 0, Some(dss(None, Some(c + 2000), false, false)))
        .client_sends(2001, 1000, Some(dss(Some((c + 2000, 2001, 1000, None)), Some(s), false, false)))
        .server_sends(1, 0, Some(dss(None, Some(c + 3000), false, false)))
        .client_sends(3001, 1000, Some(dss(Some((c + 3000, 3001, 1000, None)), Some(s), false, false)))
        .server_sends(1, 0, Some(dss(None, Some(c + 4000), false, false)))
        .case("4-byte DSNs and data ACKs across the 32-bit wrap", 1, keys)
}

/// Case 3: checksums negotiated (the A bit in both MP_CAPABLEs): a correct checksum on a
/// one-segment mapping and on a mapping over two segments, a wrong one on the third mapping,
/// which the server answers with MP_FAIL naming its DSN (3.7).
pub fn dss_checksums() -> Case {
    let keys = keys(3);
    let flags = capable_flags::CHECKSUM_REQUIRED | capable_flags::HMAC_SHA256;
    let b = Builder::new(41_003, 1, flags, keys).third_ack(1, flags, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    let good_one = checksum(c, 1, 1000, 1000);
    let good_two = checksum(c + 1000, 1001, 2000, 2000);
    let wrong = checksum(c + 3000, 3001, 500, 500) ^ 0x0100;
    b.client_sends(1, 1000, Some(dss(Some((c, 1, 1000, Some(good_one))), Some(s), false, true)))
        .client_sends(
            1001,
            1000,
            Some(dss(Some((c + 1000, 1001, 2000, Some(good_two))), Some(s), false, true)),
        )
        .client_sends(2001, 1000, None)
        .server_sends(1, 0, Some(dss(None, Some(c + 3000), false, true)))
        .client_sends(3001, 500, Some(dss(Some((c + 3000, 3001, 500, Some(wrong))), Some(s), false, true)))
        .server_sends(1, 0, Some(MptcpOption::Fail(MpFail { dsn: c + 3000 })))
        .case("DSS checksums, right and wrong, and MP_FAIL", 1, keys)
}

/// Case 4: the third ACK is lost; the client's first data carries MP_CAPABLE with both keys
/// and the data-level length (3.1), then DSS takes over.
pub fn mp_capable_with_data_after_a_lost_third_ack() -> Case {
    let keys = keys(4);
    let b = Builder::new(41_004, 1, capable_flags::HMAC_SHA256, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    let with_data = MptcpOption::Capable(MpCapable {
        version: 1,
        flags: capable_flags::HMAC_SHA256,
        sender_key: Some(keys.0),
        receiver_key: Some(keys.1),
        data_len: Some(500),
        checksum: None,
    });
    b.client_sends(1, 500, Some(with_data))
        .server_sends(1, 0, Some(dss(None, Some(c + 500), false, true)))
        .client_sends(501, 500, Some(dss(Some((c + 500, 501, 500, None)), Some(s), false, true)))
        .server_sends(1, 0, Some(dss(None, Some(c + 1000), false, true)))
        .case("MP_CAPABLE with data after a lost third ACK", 1, keys)
}

/// Case 5: RFC 6824 peers: MP_CAPABLE version 0 with the client's key in the SYN, 8-byte DSS, an
/// ADD_ADDR of the v0 shape (IP version nibble, no HMAC).
pub fn rfc6824_v0() -> Case {
    let keys = keys(5);
    let b = Builder::new(41_005, 0, 0, keys).third_ack(0, 0, keys);
    let (c, s) = (idsn(0, keys.0) + 1, idsn(0, keys.1) + 1);
    let add_addr =
        AddAddr { echo: false, addr_id: 3, addr: std::net::IpAddr::from(ANNOUNCED), port: None, hmac: None };
    b.client_sends(1, 1000, Some(dss(Some((c, 1, 1000, None)), Some(s), false, true)))
        .server_sends(1, 0, Some(dss(None, Some(c + 1000), false, true)))
        .server_sends(1, 0, Some(MptcpOption::AddAddr(add_addr)))
        .case("RFC 6824 (version 0) peers", 0, keys)
}

/// Case 6: a lone DATA_FIN (F flag, data-level length 1, subflow sequence 0, no payload,
/// 3.3.3), acknowledged, then both FINs.
pub fn lone_data_fin() -> Case {
    let keys = keys(6);
    let b = Builder::handshake(41_006, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    b.client_sends(1, 100, Some(dss(Some((c, 1, 100, None)), Some(s), false, true)))
        .client_sends(101, 0, Some(dss(Some((c + 100, 0, 1, None)), Some(s), true, true)))
        .server_sends(1, 0, Some(dss(None, Some(c + 101), false, true)))
        .client_sends(101, 0, None)
        .last(Segment::fin)
        .server_sends(1, 0, None)
        .last(Segment::fin)
        .case("a lone DATA_FIN", 1, keys)
}

/// Case 7: the server announces an address with its truncated HMAC; the client echoes it (E
/// flag, no HMAC, 3.4.1).
pub fn add_addr_and_echo() -> Case {
    let keys = keys(7);
    let b = Builder::handshake(41_007, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    let addr = std::net::IpAddr::from(ANNOUNCED);
    let hmac = handshake::add_addr_hmac(keys.1, keys.0, 2, addr, None);
    let announce = AddAddr { echo: false, addr_id: 2, addr, port: None, hmac: Some(hmac) };
    let echo = AddAddr { echo: true, hmac: None, ..announce };
    b.client_sends(1, 100, Some(dss(Some((c, 1, 100, None)), Some(s), false, true)))
        .server_sends(1, 0, Some(MptcpOption::AddAddr(announce)))
        .client_sends(101, 0, Some(MptcpOption::AddAddr(echo)))
        .case("ADD_ADDR and its echo", 1, keys)
}

/// Case 8a: the client closes the connection abruptly: MP_FASTCLOSE with the server's key on
/// an ACK, the server resets the subflow (3.5).
pub fn fastclose() -> Case {
    let keys = keys(8);
    let b = Builder::handshake(41_008, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    b.client_sends(1, 100, Some(dss(Some((c, 1, 100, None)), Some(s), false, true)))
        .client_sends(101, 0, Some(MptcpOption::FastClose(MpFastClose { receiver_key: keys.1 })))
        .server_sends(1, 0, None)
        .last(Segment::rst)
        .case("MP_FASTCLOSE", 1, keys)
}

/// Case 8b: the server resets the subflow with MP_TCPRST, transient, reason 5 ("unacceptable
/// performance", 3.6).
pub fn tcprst() -> Case {
    let keys = keys(9);
    let b = Builder::handshake(41_009, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    let reset = MpTcpRst { flags: tcprst_flags::TRANSIENT, reason: 5 };
    b.client_sends(1, 100, Some(dss(Some((c, 1, 100, None)), Some(s), false, true)))
        .server_sends(1, 0, Some(MptcpOption::TcpRst(reset)))
        .last(Segment::rst)
        .case("MP_TCPRST", 1, keys)
}

/// Case 9: the second mapping's segment arrives before the first's, the first is then sent
/// again with its mapping, and a segment covered by a 2000-byte mapping is sent twice.
pub fn retransmitted_and_reordered() -> Case {
    let keys = keys(10);
    let b = Builder::handshake(41_010, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    let first = dss(Some((c, 1, 1000, None)), Some(s), false, true);
    b.client_sends(1001, 1000, Some(dss(Some((c + 1000, 1001, 1000, None)), Some(s), false, true)))
        .client_sends(1, 1000, Some(first))
        .client_sends(1, 1000, Some(first))
        .client_sends(2001, 1000, Some(dss(Some((c + 2000, 2001, 2000, None)), Some(s), false, true)))
        .client_sends(3001, 1000, None)
        .client_sends(3001, 1000, None)
        .server_sends(1, 0, Some(dss(None, Some(c + 4000), false, true)))
        .case("retransmitted and reordered segments", 1, keys)
}

/// Case 10: a 65,000-byte segment (GRO or TSO sized) under one mapping, then a coalesced
/// 2000-byte segment spanning two mappings: it carries the first one's DSS (1000 bytes); the
/// second mapping (2000 bytes) starts inside it and rides on the next segment.
pub fn offload_sized_segments() -> Case {
    let keys = keys(11);
    let b = Builder::handshake(41_011, keys);
    let (c, s) = (idsn(1, keys.0) + 1, idsn(1, keys.1) + 1);
    b.client_sends(1, 65_000, Some(dss(Some((c, 1, 65_000, None)), Some(s), false, true)))
        .client_sends(65_001, 2000, Some(dss(Some((c + 65_000, 65_001, 1000, None)), Some(s), false, true)))
        .client_sends(67_001, 1000, Some(dss(Some((c + 66_000, 66_001, 2000, None)), Some(s), false, true)))
        .server_sends(1, 0, Some(dss(None, Some(c + 68_000), false, true)))
        .case("offload-sized segments", 1, keys)
}

/// A fallback for comparison: the client's first data carries no mapping although the server
/// sends DSS data ACKs (3.7).
pub fn first_data_without_mapping() -> Case {
    let keys = keys(12);
    let b = Builder::handshake(41_012, keys);
    let c = idsn(1, keys.0) + 1;
    b.client_sends(1, 1000, None)
        .server_sends(1, 0, Some(dss(None, Some(c), false, true)))
        .client_sends(1001, 1000, None)
        .case("first data without a mapping", 1, keys)
}
