//! The structured input: a crafted TCP session (`frames::mptcp_session`, every key and HMAC
//! right, or `frames::fallback_session`) with arbitrary edits, so that mutations start deep in
//! the connection, mapping and HMAC state machines instead of at a random option byte.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::OnceLock,
};

use arbitrary::Arbitrary;
use mptcp_agent::dataplane::testrun::frames::{self, PAYLOAD_BYTE, RawSegment, Segment};

/// The largest frame generated: an Ethernet frame of a 1500-byte MTU.
pub const MAX_FRAME: usize = 1514;
/// At most this many packets per session, and edits applied.
const MAX_PACKETS: usize = 64;
const MAX_EDITS: usize = 32;
/// What fits in [`MAX_FRAME`] behind Ethernet, IPv6 and a TCP header with 40 option bytes.
const MAX_PAYLOAD: usize = MAX_FRAME - 14 - 40 - 60;

/// A session to render: which crafted one to start from, and what to change in it.
#[derive(Debug, Arbitrary)]
pub struct Session {
    /// Modulo the number of crafted sessions, one more for "start empty".
    base: u8,
    /// Every address moved into 2001:db8::/32.
    ipv6: bool,
    edits: Vec<Edit>,
}

/// One change to the session; packet indices wrap around the packets there are.
#[derive(Debug, Arbitrary)]
pub enum Edit {
    Packet {
        index: u8,
        change: Change,
    },
    Duplicate {
        index: u8,
    },
    Remove {
        index: u8,
    },
    /// Two packets swapped: reordering.
    Swap {
        a: u8,
        b: u8,
    },
    /// A new packet between two endpoints of the session.
    Insert {
        at: u8,
        from: u8,
        to: u8,
        flags: u8,
        seq: u32,
        options: Vec<u8>,
        payload: u16,
    },
}

/// A change to one packet.
#[derive(Debug, Arbitrary)]
pub enum Change {
    /// The whole TCP option area replaced (cut to 40 bytes, zero-padded).
    Options(Vec<u8>),
    /// One byte of the option area overwritten: a length, a subtype, a flag, a key byte.
    OptionByte {
        index: u8,
        value: u8,
    },
    Payload(Vec<u8>),
    /// The TCP flags byte replaced.
    Flags(u8),
    Seq(u32),
    Ack(u32),
    /// Sent the other way.
    Reverse,
    /// One port changed: the same options on another 4-tuple.
    Port {
        source: bool,
        port: u16,
    },
    /// Captured only up to this many bytes (a snap length): the programs see a frame cut short.
    Truncate(u16),
}

/// One packet of a session, as the edits see it.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Bytes captured of the frame, when fewer than all.
    pub captured: Option<usize>,
}

impl Packet {
    fn from_segment(segment: &Segment) -> anyhow::Result<Self> {
        Ok(Self {
            src: SocketAddr::from(segment.src),
            dst: SocketAddr::from(segment.dst),
            flags: segment.flags(),
            seq: segment.seq,
            ack: 1,
            options: segment.option_area()?,
            payload: vec![PAYLOAD_BYTE; segment.payload],
            captured: None,
        })
    }

    /// The Ethernet frame, cut to what was captured, and its length on the wire.
    pub fn frame(&self) -> (Vec<u8>, u32) {
        let mut frame = RawSegment {
            src: self.src,
            dst: self.dst,
            flags: self.flags,
            seq: self.seq,
            ack: self.ack,
            options: &self.options,
            payload: &self.payload,
        }
        .frame()
        // The edits keep options within 40 bytes and both addresses of one family.
        .expect("an edited packet renders");
        let wire_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        if let Some(keep) = self.captured {
            frame.truncate(keep);
        }
        (frame, wire_len)
    }
}

/// The crafted sessions, built once.
fn bases() -> &'static [Vec<Packet>] {
    static BASES: OnceLock<Vec<Vec<Packet>>> = OnceLock::new();
    BASES.get_or_init(|| {
        let sessions =
            [frames::mptcp_session().expect("the crafted session builds"), frames::fallback_session()];
        sessions
            .iter()
            .map(|segments| {
                segments.iter().map(|s| Packet::from_segment(s).expect("a crafted segment renders")).collect()
            })
            .collect()
    })
}

/// 192.0.2.1 -> 2001:db8::c000:201, and so on for the other documentation ranges.
fn to_ipv6(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let ip = Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
            );
            SocketAddr::new(IpAddr::V6(ip), address.port())
        }
        IpAddr::V6(_) => address,
    }
}

fn cut<T: Clone>(bytes: &[T], max: usize) -> Vec<T> {
    bytes[..bytes.len().min(max)].to_vec()
}

impl Session {
    /// The packets after every edit.
    pub fn packets(&self) -> Vec<Packet> {
        let bases = bases();
        let mut packets = bases.get(usize::from(self.base) % (bases.len() + 1)).cloned().unwrap_or_default();
        for edit in self.edits.iter().take(MAX_EDITS) {
            apply(&mut packets, edit);
        }
        if self.ipv6 {
            for packet in &mut packets {
                packet.src = to_ipv6(packet.src);
                packet.dst = to_ipv6(packet.dst);
            }
        }
        packets
    }
}

fn apply(packets: &mut Vec<Packet>, edit: &Edit) {
    let len = packets.len();
    let index = |i: u8| (len > 0).then(|| usize::from(i) % len);
    match *edit {
        Edit::Packet { index: i, ref change } => {
            if let Some(i) = index(i) {
                packets[i].change(change);
            }
        }
        Edit::Duplicate { index: i } => {
            if let Some(i) = index(i)
                && len < MAX_PACKETS
            {
                packets.insert(i, packets[i].clone());
            }
        }
        Edit::Remove { index: i } => {
            if let Some(i) = index(i) {
                packets.remove(i);
            }
        }
        Edit::Swap { a, b } => {
            if let (Some(a), Some(b)) = (index(a), index(b)) {
                packets.swap(a, b);
            }
        }
        Edit::Insert { at, from, to, flags, seq, ref options, payload } => {
            if len >= MAX_PACKETS {
                return;
            }
            // Endpoints of the session (of the crafted one when it is empty).
            let source = if packets.is_empty() { &bases()[0] } else { &*packets };
            let endpoints: Vec<SocketAddr> = source.iter().flat_map(|p| [p.src, p.dst]).collect();
            let packet = Packet {
                src: endpoints[usize::from(from) % endpoints.len()],
                dst: endpoints[usize::from(to) % endpoints.len()],
                flags,
                seq,
                ack: 1,
                options: cut(options, 40),
                payload: vec![PAYLOAD_BYTE; usize::from(payload) % (MAX_PAYLOAD + 1)],
                captured: None,
            };
            packets.insert(usize::from(at) % (len + 1), packet);
        }
    }
}

impl Packet {
    fn change(&mut self, change: &Change) {
        match *change {
            Change::Options(ref bytes) => self.options = cut(bytes, 40),
            Change::OptionByte { index, value } => {
                if let Some(byte) = self.options.get_mut(usize::from(index) % 40) {
                    *byte = value;
                }
            }
            Change::Payload(ref bytes) => self.payload = cut(bytes, MAX_PAYLOAD),
            Change::Flags(flags) => self.flags = flags,
            Change::Seq(seq) => self.seq = seq,
            Change::Ack(ack) => self.ack = ack,
            Change::Reverse => std::mem::swap(&mut self.src, &mut self.dst),
            Change::Port { source, port } => {
                let address = if source { &mut self.src } else { &mut self.dst };
                address.set_port(port);
            }
            Change::Truncate(keep) => self.captured = Some(usize::from(keep)),
        }
    }
}
