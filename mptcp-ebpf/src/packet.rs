//! Header parsing shared by every attach point: Ethernet, one 802.1Q/802.1ad tag, IPv4 or IPv6
//! (with up to [`MAX_IPV6_EXT_HEADERS`] extension headers), then TCP; the option area copied out
//! of the packet and searched.

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use mptcp_common::{
    maps::{AddrWords, ipv4_mapped},
    mptcp::subtype_of,
    options::{OptionWalker, TCP_OPTION_SPACE, kind},
};
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

/// What the XDP and TC attach points offer: direct access to the linear part of the packet and copy
/// helpers that also reach fragments.
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

/// TCP flag bits (byte 13 of the header).
pub use mptcp_common::tcp::flags as tcp_flags;

/// A TCP segment: where its header and options are, and who sent it to whom.
pub struct TcpSegment {
    pub tcp_offset: usize,
    /// Length of the option area, 0..=40; zero as well when the header is malformed.
    pub options_len: usize,
    /// The data offset claims fewer than 20 bytes.
    pub bad_header: bool,
    /// 4 or 6.
    pub family: u8,
    /// Addresses, IPv4 ones IPv4-mapped.
    pub src: AddrWords,
    pub dst: AddrWords,
    pub sport: u16,
    pub dport: u16,
    /// See [`tcp_flags`].
    pub flags: u8,
    /// TCP payload bytes, from the IP length fields.
    pub payload_len: u32,
    /// TCP sequence number.
    pub seq: u32,
}

impl TcpSegment {
    pub fn options_offset(&self) -> usize {
        self.tcp_offset + TcpHdr::LEN
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Finds the TCP header of an IPv4 or IPv6 packet and describes it in `out`; `None` for anything
/// else, for non-first fragments and for headers cut short.
#[inline(always)]
pub fn parse_tcp(packet: &impl Packet, out: &mut TcpSegment) -> Option<()> {
    let eth: *const EthHdr = ptr_at(packet, 0)?;
    let mut offset = EthHdr::LEN;
    // SAFETY (all header reads below): ptr_at checked the header lies within the packet.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(packet, offset)?;
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    let (family, src, dst, l4_len) = match ether_type {
        ETH_P_IPV4 => {
            let ip: *const Ipv4Hdr = ptr_at(packet, offset)?;
            let ip = unsafe { &*ip };
            let header_len = usize::from(ip.vihl & 0x0f) * 4;
            if ip.proto != IPPROTO_TCP || header_len < Ipv4Hdr::LEN {
                return None;
            }
            // A non-first fragment carries no TCP header.
            if u16::from_be_bytes(ip.frags) & 0x1fff != 0 {
                return None;
            }
            offset += header_len;
            let l4_len = usize::from(u16::from_be_bytes(ip.tot_len)).saturating_sub(header_len);
            (4, ipv4_mapped(ip.src_addr), ipv4_mapped(ip.dst_addr), l4_len)
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(packet, offset)?;
            let ip = unsafe { &*ip };
            let mut next = ip.next_hdr;
            let mut l4_len = usize::from(u16::from_be_bytes(ip.payload_len));
            offset += Ipv6Hdr::LEN;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                if !matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS) {
                    break;
                }
                let ext: *const [u8; 2] = ptr_at(packet, offset)?;
                let [ext_next, ext_len] = unsafe { *ext };
                next = ext_next;
                let ext_bytes = (usize::from(ext_len) + 1) * 8;
                offset += ext_bytes;
                l4_len = l4_len.saturating_sub(ext_bytes);
            }
            if next != IPPROTO_TCP {
                return None;
            }
            // SAFETY: reads within the checked header; unaligned because the header may be.
            let (src, dst) = unsafe {
                (
                    core::ptr::read_unaligned(ip.src_addr.as_ptr().cast::<AddrWords>()),
                    core::ptr::read_unaligned(ip.dst_addr.as_ptr().cast::<AddrWords>()),
                )
            };
            (6, src, dst, l4_len)
        }
        _ => return None,
    };
    let tcp: *const TcpHdr = ptr_at(packet, offset)?;
    let tcp = unsafe { &*tcp };
    let header_len = usize::from(tcp.doff()) * 4;
    let bad_header = header_len < TcpHdr::LEN;
    // Byte 13 of the TCP header: CWR ECE URG ACK PSH RST SYN FIN.
    let flags = unsafe { *(tcp as *const TcpHdr).cast::<u8>().add(13) };
    *out = TcpSegment {
        tcp_offset: offset,
        options_len: if bad_header { 0 } else { header_len - TcpHdr::LEN },
        bad_header,
        family,
        src,
        dst,
        sport: u16::from_be_bytes(tcp.source),
        dport: u16::from_be_bytes(tcp.dest),
        flags,
        payload_len: l4_len.saturating_sub(header_len) as u32,
        seq: u32::from_be_bytes(tcp.seq),
    };
    Some(())
}

/// Rewrites the frame's Ethernet destination and source addresses in place (no helper call:
/// the header is in the linear data, which `parse_tcp` checked); false if the frame is shorter.
#[inline(always)]
pub fn set_macs(packet: &impl Packet, dst: &[u8; 6], src: &[u8; 6]) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(packet, 0) else {
        return false;
    };
    // SAFETY: ptr_at checked the header lies within the packet, which the program may write.
    unsafe {
        let eth = eth.cast_mut();
        (*eth).dst_addr = *dst;
        (*eth).src_addr = *src;
    }
    true
}

/// Per-CPU buffer the option area is copied into before the codec walks it.
///
/// Only the first `options_len` bytes are packet data and the codec never reads past them, but
/// the verifier bounds each nested offset (option start, field position) separately, each up to
/// the 40-byte area; the slack keeps every offset it can imagine inside the buffer. It lives in
/// a map, not on the 512-byte stack, and is not cleared: only bytes just copied in are read.
#[repr(C)]
pub struct OptionBuffer(pub [u8; 128]);

/// Copies the option area of `segment` into `buffer`; `None` if the packet is shorter than its
/// header claims.
#[inline(always)]
pub fn load_options<'a>(
    packet: &impl Packet,
    segment: &TcpSegment,
    buffer: &'a mut OptionBuffer,
) -> Option<&'a [u8]> {
    let len = segment.options_len.min(TCP_OPTION_SPACE);
    let area = buffer.0.get_mut(..len)?;
    if len > 0 && !packet.load_bytes(segment.options_offset(), area.as_mut_ptr(), len) {
        return None;
    }
    Some(area)
}

/// The option area Linux sends on a segment without MPTCP: timestamps, after two NOPs.
const TIMESTAMPS_ONLY: [u8; 4] = [kind::NOP, kind::NOP, kind::TIMESTAMPS, 10];

/// Options further into the frame than this (long IPv6 extension headers) take the copy.
const MAX_IN_PLACE_OFFSET: usize = 256;

/// Whether `segment`'s option area holds no MPTCP option and is well formed, judged in place:
/// true for no options and for [`TIMESTAMPS_ONLY`] (in the linear data), false for anything
/// else, which then takes the copy and the walk. Most segments without MPTCP are one of the
/// two, and skip both.
#[inline(always)]
pub fn no_mptcp_option_in_place(packet: &impl Packet, segment: &TcpSegment) -> bool {
    // Read back from map memory, the offset is unbounded to the verifier until compared.
    let offset = segment.options_offset();
    if offset > MAX_IN_PLACE_OFFSET {
        return false;
    }
    match segment.options_len {
        0 => true,
        12 => ptr_at::<[u8; 12]>(packet, offset)
            // SAFETY: ptr_at checked that the 12 bytes lie within the packet.
            .is_some_and(
                |area| unsafe { core::ptr::read_unaligned(area.cast::<[u8; 4]>()) } == TIMESTAMPS_ONLY,
            ),
        _ => false,
    }
}

/// The first MPTCP option in `area` (an option area [`load_options`] copied) with subtype
/// `wanted`; `None` as well when the walk meets a malformed option first.
#[inline(always)]
pub fn find_mptcp_option(area: &[u8], wanted: u8) -> Option<&[u8]> {
    let mut walker = OptionWalker::new(area);
    loop {
        let raw = walker.next_raw()?.ok()?;
        if raw.kind == kind::MPTCP && subtype_of(raw.bytes) == Some(wanted) {
            return Some(raw.bytes);
        }
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: the caller provides `len` writable bytes at dst.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, dst.cast(), len as u32) == 0 }
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn load_bytes(&self, offset: usize, dst: *mut u8, len: usize) -> bool {
        // SAFETY: the caller provides `len` writable bytes at dst.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset as u32, dst.cast(), len as u32) == 0 }
    }
}
