//! Header parsing shared by both attach points: Ethernet, one 802.1Q/802.1ad tag, IPv4 or IPv6
//! (with up to [`MAX_IPV6_EXT_HEADERS`] extension headers), then TCP.

use core::mem::MaybeUninit;

use mptcp_common::options::TCP_OPTION_SPACE;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr, vlan::VlanHdr};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DEST_OPTS: u8 = 60;
/// IPv6 extension headers skipped before giving up on finding TCP.
const MAX_IPV6_EXT_HEADERS: usize = 3;

/// What both attach points offer: direct access to the linear part of the packet and a copy
/// helper that also reaches fragments.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Copies `len` bytes from `offset` to `dst`; false if the packet is shorter.
    fn load_bytes(&self, offset: usize, dst: *mut u8, len: usize) -> bool;
}

/// A pointer to a `T` at `offset`, if the packet's linear data holds all of it.
#[inline(always)]
fn ptr_at<T>(packet: &impl Packet, offset: usize) -> Option<*const T> {
    let start = packet.data();
    if start + offset + size_of::<T>() > packet.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Where the TCP header and its option area are.
pub struct TcpSegment {
    pub tcp_offset: usize,
    /// Length of the option area, 0..=40; zero as well when the header is malformed.
    pub options_len: usize,
    /// The data offset claims fewer than 20 bytes.
    pub bad_header: bool,
}

impl TcpSegment {
    pub fn options_offset(&self) -> usize {
        self.tcp_offset + TcpHdr::LEN
    }
}

/// Finds the TCP header of an IPv4 or IPv6 packet; `None` for anything else, for non-first
/// fragments and for headers cut short.
#[inline(always)]
pub fn parse_tcp(packet: &impl Packet) -> Option<TcpSegment> {
    let eth: *const EthHdr = ptr_at(packet, 0)?;
    let mut offset = EthHdr::LEN;
    // SAFETY (all header reads below): ptr_at checked the header lies within the packet.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(packet, offset)?;
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IPV4 => {
            let ip: *const Ipv4Hdr = ptr_at(packet, offset)?;
            let (vihl, proto, frags) = unsafe { ((*ip).vihl, (*ip).proto, (*ip).frags) };
            let header_len = usize::from(vihl & 0x0f) * 4;
            if proto != IPPROTO_TCP || header_len < Ipv4Hdr::LEN {
                return None;
            }
            // A non-first fragment carries no TCP header.
            if u16::from_be_bytes(frags) & 0x1fff != 0 {
                return None;
            }
            offset += header_len;
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(packet, offset)?;
            let mut next = unsafe { (*ip).next_hdr };
            offset += Ipv6Hdr::LEN;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                if !matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS) {
                    break;
                }
                let ext: *const [u8; 2] = ptr_at(packet, offset)?;
                let [ext_next, ext_len] = unsafe { *ext };
                next = ext_next;
                offset += (usize::from(ext_len) + 1) * 8;
            }
            if next != IPPROTO_TCP {
                return None;
            }
        }
        _ => return None,
    }
    let tcp: *const TcpHdr = ptr_at(packet, offset)?;
    let header_len = usize::from(unsafe { (*tcp).doff() }) * 4;
    let bad_header = header_len < TcpHdr::LEN;
    Some(TcpSegment {
        tcp_offset: offset,
        options_len: if bad_header { 0 } else { header_len - TcpHdr::LEN },
        bad_header,
    })
}

/// Stack buffer the option area is copied into before the codec walks it.
///
/// Only the first `options_len` bytes are packet data and the codec never reads past them, but
/// the verifier bounds each nested offset (option start, field position) separately, each up to
/// the 40-byte area; the slack keeps every offset it can imagine inside the buffer. It is left
/// uninitialised: zeroing 128 bytes per packet would cost more than the walk.
pub struct OptionBuffer(MaybeUninit<[u8; 128]>);

impl OptionBuffer {
    #[inline(always)]
    pub fn new() -> Self {
        Self(MaybeUninit::uninit())
    }

    /// Copies the option area of `segment` in; `None` if the packet is shorter than its header
    /// claims.
    #[inline(always)]
    pub fn load<'a>(&'a mut self, packet: &impl Packet, segment: &TcpSegment) -> Option<&'a [u8]> {
        let len = segment.options_len.min(TCP_OPTION_SPACE);
        let ptr = self.0.as_mut_ptr().cast::<u8>();
        if len > 0 && !packet.load_bytes(segment.options_offset(), ptr, len) {
            return None;
        }
        // SAFETY: the helper initialised the first `len` bytes (len <= 40 < 128).
        Some(unsafe { core::slice::from_raw_parts(ptr, len) })
    }
}
