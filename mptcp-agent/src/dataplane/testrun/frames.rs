//! Frames for test runs of the programs: Ethernet/IPv4/TCP segments carrying the options Linux
//! sends, built with etherparse and mptcp-common's option encoders. The benchmarks and the
//! program fixtures (`tests/program_fixtures.rs`) both build their frames here.

use anyhow::Result;
use etherparse::PacketBuilder;
use mptcp_common::{
    mptcp::{MpCapable, MptcpOption, capable_flags},
    options::TcpOption,
};

/// Source MAC of every frame.
pub const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Destination MAC of every frame.
pub const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// Every payload byte (DSS checksums are computed over it).
pub const PAYLOAD_BYTE: u8 = 0x5a;

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

    /// Ethernet/IPv4/TCP with the options Linux sends: timestamps, then the MPTCP option.
    pub fn frame(&self) -> Result<Vec<u8>> {
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
        let mut builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(self.src.0, self.dst.0, 64)
            .tcp(self.src.1, self.dst.1, self.seq, 65535);
        if self.syn {
            builder = builder.syn();
        }
        if self.ack {
            builder = builder.ack(1);
        }
        if self.fin {
            builder = builder.fin();
        }
        if self.rst {
            builder = builder.rst();
        }
        let mut frame = Vec::new();
        builder.options_raw(&options[..len])?.write_to_vec(&mut frame, &vec![PAYLOAD_BYTE; self.payload])?;
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
