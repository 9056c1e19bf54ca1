//! Frames for test runs of the programs: Ethernet/IPv4/TCP segments carrying the options Linux
//! sends, built with etherparse and mptcp-common's option encoders. The benchmarks, the program
//! fixtures (`tests/program_fixtures.rs`) and the fuzz targets (`mptcp-agent/fuzz`) build their
//! frames here.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};
use etherparse::PacketBuilder;
use mptcp_common::{
    mptcp::{
        AddAddr, DataAck, Dss, DssMapping, MpCapable, MpFastClose, MpJoin, MpPrio, MpTcpRst, MptcpOption,
        OptionBytes, RemoveAddr, capable_flags,
    },
    options::TcpOption,
};
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use crate::dataplane::handshake;

/// Source MAC of every frame.
pub const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Destination MAC of every frame.
pub const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// One TCP segment over IPv4 from `src` to `dst` (address, port).
#[derive(Debug, Clone)]
pub struct Segment {
    pub src: ([u8; 4], u16),
    pub dst: ([u8; 4], u16),
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub mptcp: Option<MptcpOption>,
    /// Payload bytes.
    pub payload: usize,
    /// TCP sequence number (the SYN's is the ISN).
    pub seq: u32,
}

impl Segment {
    /// A pure ACK without MPTCP option.
    pub fn new(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Self {
        Self { src, dst, syn: false, ack: true, fin: false, rst: false, mptcp: None, payload: 0, seq: 1000 }
    }

    /// A SYN (no ACK flag).
    pub fn syn(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Self {
        Self { syn: true, ack: false, ..Self::new(src, dst) }
    }

    /// A SYN-ACK.
    pub fn syn_ack(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Self {
        Self { syn: true, ..Self::new(src, dst) }
    }

    /// The segment with `option` as its MPTCP option.
    pub fn with(mut self, option: MptcpOption) -> Self {
        self.mptcp = Some(option);
        self
    }

    /// The segment with `bytes` of payload.
    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload = bytes;
        self
    }

    /// The segment at TCP sequence number `seq`.
    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }

    /// The segment with FIN set.
    pub fn fin(mut self) -> Self {
        self.fin = true;
        self
    }

    /// The segment with RST set.
    pub fn rst(mut self) -> Self {
        self.rst = true;
        self
    }

    /// The option area Linux sends: timestamps, then the MPTCP option, NOP-padded to 4 bytes.
    pub fn option_area(&self) -> Result<Vec<u8>> {
        let mut options = [0u8; 40];
        let mut len = TcpOption::Nop.encode(&mut options)?;
        len += TcpOption::Nop.encode(&mut options[len..])?;
        len += TcpOption::Timestamps { value: 1, echo: 2 }.encode(&mut options[len..])?;
        if let Some(option) = self.mptcp {
            len += option.encode(&mut options[len..])?;
        }
        while len % 4 != 0 {
            len += TcpOption::Nop.encode(&mut options[len..])?;
        }
        Ok(options[..len].to_vec())
    }

    /// The TCP flags byte (FIN, SYN, RST, PSH, ACK, ... from the low bit up).
    pub fn flags(&self) -> u8 {
        [
            (self.fin, tcp_flag::FIN),
            (self.syn, tcp_flag::SYN),
            (self.rst, tcp_flag::RST),
            (self.ack, tcp_flag::ACK),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |flags, (_, flag)| flags | flag)
    }

    /// Ethernet/IPv4/TCP with the options Linux sends ([`Self::option_area`]).
    pub fn frame(&self) -> Result<Vec<u8>> {
        RawSegment {
            src: SocketAddr::from(self.src),
            dst: SocketAddr::from(self.dst),
            flags: self.flags(),
            seq: self.seq,
            ack: 1,
            options: &self.option_area()?,
            payload: &vec![PAYLOAD_BYTE; self.payload],
        }
        .frame()
    }
}

/// The byte every [`Segment`]'s payload is made of (DSS checksums are computed over it).
pub const PAYLOAD_BYTE: u8 = 0x5a;

/// TCP header flag bits.
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A TCP segment over IPv4 or IPv6 with any flags and a raw option area: what a [`Segment`]
/// renders to, and what the fuzz targets generate.
#[derive(Debug, Clone, Copy)]
pub struct RawSegment<'a> {
    /// Both IPv4 or both IPv6.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// See [`tcp_flag`].
    pub flags: u8,
    pub seq: u32,
    /// The acknowledgment number (sent only with the ACK flag).
    pub ack: u32,
    /// At most 40 bytes; padded with end-of-options bytes to a multiple of 4.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl RawSegment<'_> {
    /// The Ethernet frame, [`SRC_MAC`] to [`DST_MAC`].
    pub fn frame(&self) -> Result<Vec<u8>> {
        if self.options.len() > 40 {
            bail!("{} bytes of TCP options exceed the 40-byte option area", self.options.len());
        }
        let mut options = [0u8; 40];
        options[..self.options.len()].copy_from_slice(self.options);
        let options = &options[..self.options.len().next_multiple_of(4)];
        let ethernet = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let ip = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => ethernet.ipv4(src.octets(), dst.octets(), 64),
            (IpAddr::V6(src), IpAddr::V6(dst)) => ethernet.ipv6(src.octets(), dst.octets(), 64),
            (src, dst) => bail!("{src} and {dst} are not of one IP version"),
        };
        let mut builder = ip.tcp(self.src.port(), self.dst.port(), self.seq, 65535);
        let flag = |bit: u8| self.flags & bit != 0;
        if flag(tcp_flag::FIN) {
            builder = builder.fin();
        }
        if flag(tcp_flag::SYN) {
            builder = builder.syn();
        }
        if flag(tcp_flag::RST) {
            builder = builder.rst();
        }
        if flag(tcp_flag::PSH) {
            builder = builder.psh();
        }
        if flag(tcp_flag::ACK) {
            builder = builder.ack(self.ack);
        }
        if flag(tcp_flag::URG) {
            builder = builder.urg(0);
        }
        if flag(tcp_flag::ECE) {
            builder = builder.ece();
        }
        if flag(tcp_flag::CWR) {
            builder = builder.cwr();
        }
        let mut frame = Vec::new();
        builder.options_raw(options)?.write_to_vec(&mut frame, self.payload)?;
        Ok(frame)
    }
}

/// MP_CAPABLE version 1 with HMAC-SHA256: no key (SYN), the sender's (SYN-ACK), or both (third
/// ACK).
pub fn capable(sender: Option<u64>, receiver: Option<u64>) -> MptcpOption {
    MptcpOption::Capable(MpCapable {
        version: 1,
        flags: capable_flags::HMAC_SHA256,
        sender_key: sender,
        receiver_key: receiver,
        data_len: None,
        checksum: None,
    })
}

/// The client's key in [`mptcp_session`].
pub const SESSION_CLIENT_KEY: u64 = 0x0102_0304_0506_0708;
/// The server's key in [`mptcp_session`].
pub const SESSION_SERVER_KEY: u64 = 0x1112_1314_1516_1718;
const SESSION_CLIENT_NONCE: u32 = 0x0102_0304;
const SESSION_SERVER_NONCE: u32 = 0x0a0b_0c0d;
/// The endpoints of [`mptcp_session`]: the client's first and second address, the server.
pub const SESSION_CLIENT: ([u8; 4], u16) = ([192, 0, 2, 1], 40000);
pub const SESSION_CLIENT_2: ([u8; 4], u16) = ([198, 51, 100, 1], 40001);
pub const SESSION_SERVER: ([u8; 4], u16) = ([192, 0, 2, 2], 80);
const SESSION_SERVER_2: [u8; 4] = [198, 51, 100, 2];

/// A DSS option: an optional 8-byte data ACK and an optional 8-byte mapping.
pub fn dss(data_ack: Option<u64>, mapping: Option<(u64, u32, u16)>, data_fin: bool) -> MptcpOption {
    MptcpOption::Dss(Dss {
        data_fin,
        data_ack: data_ack.map(|value| DataAck { value, wide: true }),
        mapping: mapping.map(|(dsn, subflow_seq, data_len)| DssMapping {
            dsn,
            dsn_wide: true,
            subflow_seq,
            data_len,
            checksum: None,
        }),
    })
}

/// One MPTCP connection from its handshake to its end, every key, token and HMAC right: the
/// MP_CAPABLE handshake, mapped data both ways, an ADD_ADDR, a join from the client's second
/// address, MP_PRIO, REMOVE_ADDR, DATA_FIN, FIN, MP_TCPRST and MP_FASTCLOSE. Where the fuzz
/// targets start from, so that their mutations begin deep in the state machines.
pub fn mptcp_session() -> Result<Vec<Segment>> {
    let (client, server, client_2) = (SESSION_CLIENT, SESSION_SERVER, SESSION_CLIENT_2);
    let (ck, sk) = (SESSION_CLIENT_KEY, SESSION_SERVER_KEY);
    let (cn, sn) = (SESSION_CLIENT_NONCE, SESSION_SERVER_NONCE);
    let client_dsn = handshake::idsn(ck).wrapping_add(1);
    let announced = IpAddr::from(SESSION_SERVER_2);
    let removed = OptionBytes::new(&[1]).ok_or_else(|| anyhow::anyhow!("one address ID fits an option"))?;
    Ok(vec![
        Segment::syn(client, server).with(capable(None, None)).seq(1000),
        Segment::syn_ack(server, client).with(capable(Some(sk), None)).seq(5000),
        Segment::new(client, server).with(capable(Some(ck), Some(sk))).seq(1001),
        Segment::new(client, server)
            .with(dss(None, Some((client_dsn, 1, 100)), false))
            .seq(1001)
            .payload(100),
        Segment::new(server, client).with(dss(Some(client_dsn.wrapping_add(100)), None, false)).seq(5001),
        Segment::new(server, client)
            .with(MptcpOption::AddAddr(AddAddr {
                echo: false,
                addr_id: 1,
                addr: announced,
                port: None,
                hmac: Some(handshake::add_addr_hmac(sk, ck, 1, announced, None)),
            }))
            .seq(5001),
        Segment::syn(client_2, server)
            .with(MptcpOption::Join(MpJoin::Syn {
                backup: false,
                addr_id: 2,
                token: handshake::token(sk),
                nonce: cn,
            }))
            .seq(2000),
        Segment::syn_ack(server, client_2)
            .with(MptcpOption::Join(MpJoin::SynAck {
                backup: false,
                addr_id: 0,
                truncated_hmac: handshake::join_synack_hmac(sk, ck, sn, cn),
                nonce: sn,
            }))
            .seq(7000),
        Segment::new(client_2, server)
            .with(MptcpOption::Join(MpJoin::Ack { hmac: handshake::join_ack_hmac(ck, sk, cn, sn) }))
            .seq(2001),
        Segment::new(client_2, server)
            .with(dss(None, Some((client_dsn.wrapping_add(100), 1, 50)), false))
            .seq(2001)
            .payload(50),
        Segment::new(client_2, server)
            .with(MptcpOption::Prio(MpPrio { backup: true, addr_id: None }))
            .seq(2051),
        Segment::new(server, client).with(MptcpOption::RemoveAddr(RemoveAddr { ids: removed })).seq(5001),
        Segment::new(client, server)
            .with(dss(Some(1), Some((client_dsn.wrapping_add(150), 101, 1)), true))
            .seq(1101),
        Segment::new(client, server).fin().seq(1101),
        Segment::new(server, client_2)
            .with(MptcpOption::TcpRst(MpTcpRst { flags: 0, reason: 1 }))
            .rst()
            .seq(7001),
        Segment::new(client, server).with(MptcpOption::FastClose(MpFastClose { receiver_key: sk })).seq(1102),
    ])
}

/// A connection that falls back to TCP: an MP_CAPABLE SYN answered without MP_CAPABLE, then
/// data without any DSS mapping.
pub fn fallback_session() -> Vec<Segment> {
    let (client, server) = (SESSION_CLIENT, SESSION_SERVER);
    vec![
        Segment::syn(client, server).with(capable(None, None)).seq(1000),
        Segment::syn_ack(server, client).seq(5000),
        Segment::new(client, server).seq(1001),
        Segment::new(client, server).seq(1001).payload(100),
        Segment::new(server, client).seq(5001).payload(20),
    ]
}

/// A pcap file of Ethernet frames, each given with the length it had on the wire (more than
/// its captured bytes for a frame cut by the snap length).
pub fn to_pcap<'a>(frames: impl IntoIterator<Item = (&'a [u8], u32)>) -> Result<Vec<u8>> {
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(Vec::new(), header)?;
    for (number, (data, orig_len)) in (0u64..).zip(frames) {
        let timestamp = std::time::Duration::from_millis(number);
        writer.write_packet(&PcapPacket::new(timestamp, orig_len.max(u32::try_from(data.len())?), data))?;
    }
    Ok(writer.into_writer())
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, path::PathBuf, time::Duration};

    use pcap_file::pcapng::{
        PcapNgWriter,
        blocks::{enhanced_packet::EnhancedPacketBlock, interface_description::InterfaceDescriptionBlock},
    };

    use super::*;
    use crate::analysis::{
        capture_file,
        decode::{self, Report},
    };

    fn rendered(segments: &[Segment]) -> Vec<Vec<u8>> {
        segments.iter().map(|segment| segment.frame().unwrap()).collect()
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        to_pcap(frames.iter().map(|frame| (frame.as_slice(), 0))).unwrap()
    }

    fn pcapng(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut writer = PcapNgWriter::new(Vec::new()).unwrap();
        let interface =
            InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen: 0, options: vec![] };
        writer.write_pcapng_block(interface).unwrap();
        for frame in frames {
            let packet = EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::ZERO,
                original_len: frame.len() as u32,
                data: Cow::Borrowed(frame),
                options: vec![],
            };
            writer.write_pcapng_block(packet).unwrap();
        }
        writer.into_inner()
    }

    fn decoded(capture: &[u8]) -> Report {
        decode::decode("session".to_owned(), &mut capture_file::parse(capture).unwrap(), false)
    }

    /// The fuzz targets start from this session: it must be the deep state it claims to be.
    #[test]
    fn the_crafted_session_is_one_connection_with_every_hmac_verified() {
        let frames = rendered(&mptcp_session().unwrap());
        for capture in [pcap(&frames), pcapng(&frames)] {
            let report = decoded(&capture);
            let summary = &report.summary;
            assert_eq!(report.read_error, None);
            assert_eq!((summary.frames, summary.mptcp_packets), (16, 15), "{summary:?}");
            assert_eq!((summary.connections, summary.subflows), (1, 2), "{summary:?}");
            // The join's SYN-ACK and third ACK, and the ADD_ADDR.
            assert_eq!((summary.hmac_verified, summary.hmac_failed, summary.hmac_unknown), (3, 0, 0));
            assert_eq!((summary.fallbacks, summary.malformed_options), (0, 0), "{summary:?}");
        }
    }

    #[test]
    fn the_fallback_session_falls_back() {
        let report = decoded(&pcap(&rendered(&fallback_session())));
        assert_eq!((report.summary.connections, report.summary.fallbacks), (0, 1), "{:?}", report.summary);
        assert!(report.subflows[0].fallback.as_deref().is_some_and(|why| why.contains("no MP_CAPABLE")));
    }

    #[test]
    fn raw_segments_carry_any_flags_over_ipv6() {
        let (src, dst) = ("[2001:db8::1]:40000".parse().unwrap(), "[2001:db8::2]:80".parse().unwrap());
        let flags = tcp_flag::SYN | tcp_flag::ECE | tcp_flag::CWR;
        let segment = RawSegment { src, dst, flags, seq: 7, ack: 9, options: &[30, 4, 0x01], payload: b"x" };
        let frame = capture_file::Frame {
            number: 1,
            link_type: DataLink::ETHERNET,
            time: None,
            data: segment.frame().unwrap(),
        };
        let tcp = frame.tcp().unwrap();
        assert_eq!((tcp.src, tcp.dst, tcp.seq, tcp.payload_len), (src, dst, 7, 1));
        assert!(tcp.syn && !tcp.ack && !tcp.fin && !tcp.rst);
        // Padded to 4 bytes with end-of-options.
        assert_eq!(tcp.options, [30, 4, 0x01, 0]);
        let mixed = RawSegment { dst: "192.0.2.2:80".parse().unwrap(), ..segment };
        assert!(mixed.frame().is_err());
        assert!(RawSegment { options: &[1; 41], ..segment }.frame().is_err());
    }

    /// The seed corpus of the `decode_capture` fuzz target (mptcp-agent/fuzz/seeds): both
    /// sessions as pcap and pcapng files. `MPTCP_WRITE_FUZZ_SEEDS=1` rewrites them.
    #[test]
    fn the_fuzz_seeds_are_the_crafted_sessions() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode_capture");
        let (session, fallback) = (rendered(&mptcp_session().unwrap()), rendered(&fallback_session()));
        let seeds = [
            ("session.pcap", pcap(&session)),
            ("session.pcapng", pcapng(&session)),
            ("fallback.pcap", pcap(&fallback)),
        ];
        for (name, bytes) in seeds {
            let path = dir.join(name);
            if std::env::var_os("MPTCP_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(committed == bytes, "{} is stale: rerun with MPTCP_WRITE_FUZZ_SEEDS=1", path.display());
        }
    }
}
