//! The MPTCP option codec: RFC 8684 (version 1), and RFC 6824 (version 0) where it differs.
//!
//! [`MptcpOption::parse`] takes one whole option as [`crate::options::OptionWalker`] yields it
//! (kind and length bytes included) and tells every shape apart by subtype and length, as the
//! RFCs define them; [`MptcpOption::encode`] writes the same shapes back.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::options::kind;
use crate::wire::{EncodeError, Reader, Writer};

#[cfg(feature = "serde")]
mod ser;

/// MPTCP option subtypes (RFC 8684 section 7.2, IANA "MPTCP Option Subtypes").
pub mod subtype {
    pub const MP_CAPABLE: u8 = 0x0;
    pub const MP_JOIN: u8 = 0x1;
    pub const DSS: u8 = 0x2;
    pub const ADD_ADDR: u8 = 0x3;
    pub const REMOVE_ADDR: u8 = 0x4;
    pub const MP_PRIO: u8 = 0x5;
    pub const MP_FAIL: u8 = 0x6;
    pub const MP_FASTCLOSE: u8 = 0x7;
    pub const MP_TCPRST: u8 = 0x8;
    pub const MP_EXPERIMENTAL: u8 = 0xf;
}

/// MP_CAPABLE flag bits (RFC 8684 section 3.1).
pub mod capable_flags {
    /// A: checksum required.
    pub const CHECKSUM_REQUIRED: u8 = 0x80;
    /// B: extensibility.
    pub const EXTENSIBILITY: u8 = 0x40;
    /// C: do not open additional subflows to the source address of this packet.
    pub const NO_MORE_SUBFLOWS_TO_SOURCE: u8 = 0x20;
    /// H: HMAC-SHA256 (SHA-1 in version 0).
    pub const HMAC_SHA256: u8 = 0x01;
}

/// MP_TCPRST flag bits (RFC 8684 section 3.6).
pub mod tcprst_flags {
    pub const U: u8 = 0x8;
    pub const V: u8 = 0x4;
    pub const W: u8 = 0x2;
    /// T: transient error, the sender may retry later.
    pub const TRANSIENT: u8 = 0x1;
}

/// DSS flag bits (RFC 8684 section 3.3).
mod dss_flags {
    pub const DATA_FIN: u8 = 0x10;
    pub const DSN_WIDE: u8 = 0x08;
    pub const MAPPING: u8 = 0x04;
    pub const ACK_WIDE: u8 = 0x02;
    pub const ACK: u8 = 0x01;
}

/// Why an MPTCP option could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MptcpError {
    /// Not an MPTCP option: the kind byte is not 30, or the length byte is not the slice length.
    NotMptcp,
    /// Shorter than the three bytes (kind, length, subtype) every MPTCP option has.
    TooShort { len: u8 },
    /// A length this subtype (and its flags) does not allow.
    BadLength { subtype: u8, len: u8 },
    /// A subtype RFC 8684 leaves unassigned.
    UnknownSubtype { subtype: u8 },
    /// A subtype's own parser got an option of another subtype.
    WrongSubtype { expected: u8, found: u8 },
}

impl core::error::Error for MptcpError {}

impl core::fmt::Display for MptcpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NotMptcp => f.write_str("not an MPTCP option"),
            Self::TooShort { len } => write!(f, "MPTCP option of length {len} is too short"),
            Self::BadLength { subtype, len } => {
                write!(f, "MPTCP subtype {subtype:#x} cannot have length {len}")
            }
            Self::UnknownSubtype { subtype } => write!(f, "unassigned MPTCP subtype {subtype:#x}"),
            Self::WrongSubtype { expected, found } => {
                write!(f, "expected MPTCP subtype {expected:#x}, found {found:#x}")
            }
        }
    }
}

/// MP_CAPABLE. Which keys are present tells the handshake step: none (v1 SYN), the sender's key
/// (v0 SYN, SYN-ACK), both keys (third ACK), both keys and the data-level length (first data
/// packet, with a checksum when the checksum is negotiated). Version 0 (RFC 6824) has only the
/// 12- and 20-byte shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "mp_capable"))]
pub struct MpCapable {
    pub version: u8,
    /// See [`capable_flags`].
    pub flags: u8,
    pub sender_key: Option<u64>,
    pub receiver_key: Option<u64>,
    pub data_len: Option<u16>,
    pub checksum: Option<u16>,
}

/// MP_JOIN, one shape per handshake step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype"))]
pub enum MpJoin {
    /// The SYN: the receiver's token and the sender's nonce.
    #[cfg_attr(feature = "serde", serde(rename = "mp_join_syn"))]
    Syn { backup: bool, addr_id: u8, token: u32, nonce: u32 },
    /// The SYN-ACK: the leftmost 64 bits of the sender's HMAC and its nonce.
    #[cfg_attr(feature = "serde", serde(rename = "mp_join_syn_ack"))]
    SynAck { backup: bool, addr_id: u8, truncated_hmac: u64, nonce: u32 },
    /// The third ACK: the leftmost 160 bits of the sender's HMAC.
    #[cfg_attr(feature = "serde", serde(rename = "mp_join_ack"))]
    Ack {
        #[cfg_attr(feature = "serde", serde(serialize_with = "ser::hex"))]
        hmac: [u8; 20],
    },
}

/// A DSS data ACK; `wide` is true when it was sent as 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAck {
    pub value: u64,
    pub wide: bool,
}

/// A DSS mapping of subflow bytes onto the data sequence space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DssMapping {
    /// Data sequence number; only the low 32 bits are on the wire unless `dsn_wide`.
    pub dsn: u64,
    pub dsn_wide: bool,
    /// Relative to the subflow's initial sequence number.
    pub subflow_seq: u32,
    /// Zero means an infinite mapping (fallback).
    pub data_len: u16,
    pub checksum: Option<u16>,
}

impl DssMapping {
    pub fn is_infinite(&self) -> bool {
        self.data_len == 0
    }

    /// The 64-bit DSN of the mapping, a 4-byte one widened against `previous` (see
    /// [`widen_sequence`]).
    #[inline(always)]
    pub fn wide_dsn(&self, previous: u64) -> u64 {
        if self.dsn_wide { self.dsn } else { widen_sequence(self.dsn as u32, previous) }
    }
}

impl DataAck {
    /// The 64-bit data ACK, a 4-byte one widened against `previous` (see [`widen_sequence`]).
    #[inline(always)]
    pub fn wide_value(&self, previous: u64) -> u64 {
        if self.wide { self.value } else { widen_sequence(self.value as u32, previous) }
    }
}

/// The 64-bit data sequence number a 4-byte one (its low 32 bits) stands for, given `previous`,
/// the last 64-bit number seen in that sequence space: the one nearest `previous` (serial
/// arithmetic, as Linux's `__mptcp_expand_seq`). That takes the high 32 bits of `previous`, one
/// more when the low bits wrapped forward past 2^32, one less when they are from just before a
/// wrap `previous` already went past. Nothing seen yet (`previous` 0) gives the high bits 0.
#[inline(always)]
pub fn widen_sequence(low: u32, previous: u64) -> u64 {
    let same_high = (previous & !0xffff_ffff) | u64::from(low);
    // How far `low` is from `previous`'s low bits, either way, within half the 32-bit space.
    let delta = low.wrapping_sub(previous as u32) as i32;
    previous.checked_add_signed(i64::from(delta)).unwrap_or(same_high)
}

/// The value to widen a 4-byte DSN or data ACK against (see [`widen_sequence`]): the last 64-bit
/// value known of that data sequence space, else where the space starts (its sender's IDSN + 1,
/// RFC 8684 3.3.1), so that a stack sending only 4-byte values from the start gets the IDSN's
/// high bits rather than zero; 0 when neither is known.
#[inline(always)]
pub fn widening_base(last: u64, start: u64) -> u64 {
    if last != 0 { last } else { start }
}

/// DSS: data ACK, mapping and DATA_FIN, each optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dss {
    pub data_fin: bool,
    pub data_ack: Option<DataAck>,
    pub mapping: Option<DssMapping>,
}

/// ADD_ADDR. Version 1 options carry either the echo flag or a truncated HMAC; a version 0
/// option (RFC 6824) has neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "add_addr"))]
pub struct AddAddr {
    pub echo: bool,
    pub addr_id: u8,
    pub addr: IpAddr,
    pub port: Option<u16>,
    /// The rightmost 64 bits of the HMAC.
    pub hmac: Option<u64>,
}

impl AddAddr {
    /// True for the RFC 6824 shape (IP version nibble, no HMAC).
    pub fn is_v0(&self) -> bool {
        !self.echo && self.hmac.is_none()
    }
}

/// The variable-length content of an option (REMOVE_ADDR IDs, MP_EXPERIMENTAL payload), held
/// inline. A reference into the packet would share the enum's storage with the integer fields
/// of the other variants, and the eBPF verifier rejects the pointer/integer mix LLVM makes of
/// that.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OptionBytes {
    len: u8,
    bytes: [u8; OptionBytes::CAPACITY],
}

impl OptionBytes {
    /// An option fills at most the 40-byte option area, three bytes of which are kind, length
    /// and subtype.
    pub const CAPACITY: usize = 37;

    /// `None` when `bytes` exceed [`Self::CAPACITY`].
    #[inline(always)]
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let mut inline = [0u8; Self::CAPACITY];
        inline.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self { len: u8::try_from(bytes.len()).ok()?, bytes: inline })
    }

    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsRef<[u8]> for OptionBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl core::fmt::Debug for OptionBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// REMOVE_ADDR: the address IDs removed (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "remove_addr"))]
pub struct RemoveAddr {
    pub ids: OptionBytes,
}

/// MP_PRIO; version 0 may name the address ID it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "mp_prio"))]
pub struct MpPrio {
    pub backup: bool,
    pub addr_id: Option<u8>,
}

/// MP_FAIL with the data sequence number where the checksum failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "mp_fail"))]
pub struct MpFail {
    pub dsn: u64,
}

/// MP_FASTCLOSE with the option receiver's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "mp_fastclose"))]
pub struct MpFastClose {
    pub receiver_key: u64,
}

/// MP_TCPRST; `flags` are the four bits of [`tcprst_flags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "mp_tcprst"))]
pub struct MpTcpRst {
    pub flags: u8,
    pub reason: u8,
}

/// MP_EXPERIMENTAL: the low nibble of the subtype byte and the bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(tag = "subtype", rename = "mp_experimental"))]
pub struct MpExperimental {
    pub nibble: u8,
    #[cfg_attr(feature = "serde", serde(serialize_with = "ser::hex"))]
    pub payload: OptionBytes,
}

/// One parsed MPTCP option of any subtype.
///
/// Each subtype's type also parses on its own (`Dss::parse`, ...): the eBPF programs dispatch on
/// the subtype first and parse into that one type, because LLVM turns a value of this enum,
/// whose variants share storage, into code the verifier rejects.
///
/// With the `serde` feature it serializes as its subtype's type, which names itself in a
/// `subtype` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(untagged))]
pub enum MptcpOption {
    Capable(MpCapable),
    Join(MpJoin),
    Dss(Dss),
    AddAddr(AddAddr),
    RemoveAddr(RemoveAddr),
    Prio(MpPrio),
    Fail(MpFail),
    FastClose(MpFastClose),
    TcpRst(MpTcpRst),
    Experimental(MpExperimental),
}

/// The subtype nibble of a whole MPTCP option, if it is long enough to have one.
#[inline(always)]
pub fn subtype_of(option: &[u8]) -> Option<u8> {
    option.get(2).map(|b| b >> 4)
}

/// Checks the framing every MPTCP option shares and returns a reader positioned after the
/// subtype byte, the subtype, the low nibble of that byte and the option length.
#[inline(always)]
fn open(option: &[u8]) -> Result<(Reader<'_>, u8, u8, u8), MptcpError> {
    let mut r = Reader::new(option);
    let (Some(kind_byte), Some(len)) = (r.u8(), r.u8()) else {
        return Err(MptcpError::NotMptcp);
    };
    if kind_byte != kind::MPTCP || usize::from(len) != option.len() {
        return Err(MptcpError::NotMptcp);
    }
    let Some(first) = r.u8() else {
        return Err(MptcpError::TooShort { len });
    };
    Ok((r, first >> 4, first & 0x0f, len))
}

/// Implements `parse` for the type of one subtype from its body parser.
macro_rules! subtype_parse {
    ($($ty:ident => $subtype:expr, $body:expr;)+) => {
        $(
            impl $ty {
                /// Parses one whole option (kind and length bytes included) of this subtype.
                #[inline(always)]
                pub fn parse(option: &[u8]) -> Result<Self, MptcpError> {
                    let (mut r, subtype, low, len) = open(option)?;
                    if subtype != $subtype {
                        return Err(MptcpError::WrongSubtype { expected: $subtype, found: subtype });
                    }
                    let body: fn(&mut Reader<'_>, u8, u8) -> Option<Self> = $body;
                    body(&mut r, low, len).ok_or(MptcpError::BadLength { subtype, len })
                }
            }
        )+
    };
}

subtype_parse! {
    MpCapable => subtype::MP_CAPABLE, parse_capable;
    MpJoin => subtype::MP_JOIN, parse_join;
    Dss => subtype::DSS, parse_dss;
    AddAddr => subtype::ADD_ADDR, parse_add_addr;
    RemoveAddr => subtype::REMOVE_ADDR, parse_remove_addr;
    MpPrio => subtype::MP_PRIO, parse_prio;
    MpFail => subtype::MP_FAIL, parse_fail;
    MpFastClose => subtype::MP_FASTCLOSE, parse_fastclose;
    MpTcpRst => subtype::MP_TCPRST, parse_tcprst;
    MpExperimental => subtype::MP_EXPERIMENTAL, parse_experimental;
}

#[inline(always)]
fn parse_remove_addr(r: &mut Reader<'_>, _low: u8, _len: u8) -> Option<RemoveAddr> {
    let ids = r.rest();
    if ids.is_empty() { None } else { OptionBytes::new(ids).map(|ids| RemoveAddr { ids }) }
}

#[inline(always)]
fn parse_prio(r: &mut Reader<'_>, low: u8, len: u8) -> Option<MpPrio> {
    let backup = low & 1 != 0;
    match len {
        3 => Some(MpPrio { backup, addr_id: None }),
        4 => r.u8().map(|id| MpPrio { backup, addr_id: Some(id) }),
        _ => None,
    }
}

#[inline(always)]
fn parse_fail(r: &mut Reader<'_>, _low: u8, len: u8) -> Option<MpFail> {
    (len == 12).then_some(())?;
    r.u8().and(r.be64()).map(|dsn| MpFail { dsn })
}

#[inline(always)]
fn parse_fastclose(r: &mut Reader<'_>, _low: u8, len: u8) -> Option<MpFastClose> {
    (len == 12).then_some(())?;
    r.u8().and(r.be64()).map(|receiver_key| MpFastClose { receiver_key })
}

#[inline(always)]
fn parse_tcprst(r: &mut Reader<'_>, low: u8, len: u8) -> Option<MpTcpRst> {
    (len == 4).then_some(())?;
    r.u8().map(|reason| MpTcpRst { flags: low, reason })
}

#[inline(always)]
fn parse_experimental(r: &mut Reader<'_>, low: u8, _len: u8) -> Option<MpExperimental> {
    OptionBytes::new(r.rest()).map(|payload| MpExperimental { nibble: low, payload })
}

impl MptcpOption {
    /// The option's subtype (see [`subtype`]).
    pub fn subtype(&self) -> u8 {
        match self {
            Self::Capable(_) => subtype::MP_CAPABLE,
            Self::Join(_) => subtype::MP_JOIN,
            Self::Dss(_) => subtype::DSS,
            Self::AddAddr(_) => subtype::ADD_ADDR,
            Self::RemoveAddr(_) => subtype::REMOVE_ADDR,
            Self::Prio(_) => subtype::MP_PRIO,
            Self::Fail(_) => subtype::MP_FAIL,
            Self::FastClose(_) => subtype::MP_FASTCLOSE,
            Self::TcpRst(_) => subtype::MP_TCPRST,
            Self::Experimental(_) => subtype::MP_EXPERIMENTAL,
        }
    }

    /// Parses one whole MPTCP option (kind and length bytes included).
    pub fn parse(option: &[u8]) -> Result<Self, MptcpError> {
        let (_, subtype, _, _) = open(option)?;
        match subtype {
            subtype::MP_CAPABLE => MpCapable::parse(option).map(Self::Capable),
            subtype::MP_JOIN => MpJoin::parse(option).map(Self::Join),
            subtype::DSS => Dss::parse(option).map(Self::Dss),
            subtype::ADD_ADDR => AddAddr::parse(option).map(Self::AddAddr),
            subtype::REMOVE_ADDR => RemoveAddr::parse(option).map(Self::RemoveAddr),
            subtype::MP_PRIO => MpPrio::parse(option).map(Self::Prio),
            subtype::MP_FAIL => MpFail::parse(option).map(Self::Fail),
            subtype::MP_FASTCLOSE => MpFastClose::parse(option).map(Self::FastClose),
            subtype::MP_TCPRST => MpTcpRst::parse(option).map(Self::TcpRst),
            subtype::MP_EXPERIMENTAL => MpExperimental::parse(option).map(Self::Experimental),
            _ => Err(MptcpError::UnknownSubtype { subtype }),
        }
    }

    /// Length of the encoded option, kind and length bytes included.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        self.encode(&mut [0u8; 255])
    }

    /// Writes the option (kind and length included) at the start of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        // The length byte is patched in at the end.
        w.put(&[kind::MPTCP, 0])?;
        let sub = self.subtype() << 4;
        match *self {
            Self::Capable(c) => encode_capable(&mut w, &c)?,
            Self::Join(j) => encode_join(&mut w, &j)?,
            Self::Dss(d) => encode_dss(&mut w, &d)?,
            Self::AddAddr(a) => encode_add_addr(&mut w, &a)?,
            Self::RemoveAddr(RemoveAddr { ids }) => {
                if ids.is_empty() {
                    return Err(EncodeError::Invalid("REMOVE_ADDR needs at least one address ID"));
                }
                w.u8(sub)?;
                w.put(ids.as_slice())?;
            }
            Self::Prio(MpPrio { backup, addr_id }) => {
                w.u8(sub | u8::from(backup))?;
                if let Some(id) = addr_id {
                    w.u8(id)?;
                }
            }
            Self::Fail(MpFail { dsn }) => {
                w.put(&[sub, 0])?;
                w.be64(dsn)?;
            }
            Self::FastClose(MpFastClose { receiver_key }) => {
                w.put(&[sub, 0])?;
                w.be64(receiver_key)?;
            }
            Self::TcpRst(MpTcpRst { flags, reason }) => {
                if flags > 0x0f {
                    return Err(EncodeError::Invalid("MP_TCPRST has four flag bits"));
                }
                w.put(&[sub | flags, reason])?;
            }
            Self::Experimental(MpExperimental { nibble, payload }) => {
                if nibble > 0x0f {
                    return Err(EncodeError::Invalid("MP_EXPERIMENTAL nibble is four bits"));
                }
                w.u8(sub | nibble)?;
                w.put(payload.as_slice())?;
            }
        }
        let len = w.len();
        w.patch(1, u8::try_from(len).map_err(|_| EncodeError::Invalid("option longer than 255 bytes"))?)?;
        Ok(len)
    }
}

#[inline(always)]
fn parse_capable(r: &mut Reader<'_>, version: u8, len: u8) -> Option<MpCapable> {
    let flags = r.u8()?;
    let mut c =
        MpCapable { version, flags, sender_key: None, receiver_key: None, data_len: None, checksum: None };
    match len {
        // RFC 6824 (v0) has no key-less SYN and no data-carrying ACK.
        4 | 22 | 24 if version == 0 => return None,
        4 => {}
        12 => c.sender_key = Some(r.be64()?),
        20 | 22 | 24 => {
            c.sender_key = Some(r.be64()?);
            c.receiver_key = Some(r.be64()?);
            if len >= 22 {
                c.data_len = Some(r.be16()?);
            }
            if len == 24 {
                c.checksum = Some(r.be16()?);
            }
        }
        _ => return None,
    }
    Some(c)
}

fn encode_capable(w: &mut Writer<'_>, c: &MpCapable) -> Result<(), EncodeError> {
    if c.version > 0x0f {
        return Err(EncodeError::Invalid("MP_CAPABLE version is four bits"));
    }
    let v0_shape = c.sender_key.is_some() && c.data_len.is_none();
    if c.version == 0 && !v0_shape {
        return Err(EncodeError::Invalid("MP_CAPABLE version 0 carries a key and no data length"));
    }
    w.put(&[(subtype::MP_CAPABLE << 4) | c.version, c.flags])?;
    match (c.sender_key, c.receiver_key, c.data_len, c.checksum) {
        (None, None, None, None) => {}
        (Some(sender), None, None, None) => w.be64(sender)?,
        (Some(sender), Some(receiver), data_len, checksum) => {
            w.be64(sender)?;
            w.be64(receiver)?;
            match (data_len, checksum) {
                (None, None) => {}
                (Some(data_len), checksum) => {
                    w.be16(data_len)?;
                    if let Some(checksum) = checksum {
                        w.be16(checksum)?;
                    }
                }
                (None, Some(_)) => {
                    return Err(EncodeError::Invalid("MP_CAPABLE checksum needs a data length"));
                }
            }
        }
        _ => {
            return Err(EncodeError::Invalid(
                "MP_CAPABLE fields come in order: sender key, receiver key, data length, checksum",
            ));
        }
    }
    Ok(())
}

#[inline(always)]
fn parse_join(r: &mut Reader<'_>, low: u8, len: u8) -> Option<MpJoin> {
    let backup = low & 1 != 0;
    let join = match len {
        12 => MpJoin::Syn { backup, addr_id: r.u8()?, token: r.be32()?, nonce: r.be32()? },
        16 => MpJoin::SynAck { backup, addr_id: r.u8()?, truncated_hmac: r.be64()?, nonce: r.be32()? },
        24 => {
            r.u8()?;
            MpJoin::Ack { hmac: r.array()? }
        }
        _ => return None,
    };
    Some(join)
}

fn encode_join(w: &mut Writer<'_>, j: &MpJoin) -> Result<(), EncodeError> {
    let sub = subtype::MP_JOIN << 4;
    match *j {
        MpJoin::Syn { backup, addr_id, token, nonce } => {
            w.put(&[sub | u8::from(backup), addr_id])?;
            w.be32(token)?;
            w.be32(nonce)
        }
        MpJoin::SynAck { backup, addr_id, truncated_hmac, nonce } => {
            w.put(&[sub | u8::from(backup), addr_id])?;
            w.be64(truncated_hmac)?;
            w.be32(nonce)
        }
        MpJoin::Ack { hmac } => {
            w.put(&[sub, 0])?;
            w.put(&hmac)
        }
    }
}

#[inline(always)]
fn parse_dss(r: &mut Reader<'_>, _low: u8, len: u8) -> Option<Dss> {
    let flags = r.u8()?;
    let ack_len: u8 = match (flags & dss_flags::ACK != 0, flags & dss_flags::ACK_WIDE != 0) {
        (false, _) => 0,
        (true, false) => 4,
        (true, true) => 8,
    };
    let dsn_len: u8 = if flags & dss_flags::DSN_WIDE != 0 { 8 } else { 4 };
    let has_mapping = flags & dss_flags::MAPPING != 0;
    // kind, length, subtype, flags, data ACK, then DSN + subflow sequence + data-level length.
    let base = ack_len.wrapping_add(4);
    let mapping_len = dsn_len.wrapping_add(6);
    let has_checksum = match (has_mapping, len.wrapping_sub(base)) {
        (false, 0) => false,
        (true, rest) if rest == mapping_len => false,
        (true, rest) if rest == mapping_len.wrapping_add(2) => true,
        _ => return None,
    };
    let data_ack = match ack_len {
        0 => None,
        4 => Some(DataAck { value: u64::from(r.be32()?), wide: false }),
        _ => Some(DataAck { value: r.be64()?, wide: true }),
    };
    let mapping = if has_mapping {
        let dsn_wide = dsn_len == 8;
        let dsn = if dsn_wide { r.be64()? } else { u64::from(r.be32()?) };
        let subflow_seq = r.be32()?;
        let data_len = r.be16()?;
        let checksum = if has_checksum { Some(r.be16()?) } else { None };
        Some(DssMapping { dsn, dsn_wide, subflow_seq, data_len, checksum })
    } else {
        None
    };
    Some(Dss { data_fin: flags & dss_flags::DATA_FIN != 0, data_ack, mapping })
}

fn narrow(value: u64, wide: bool, what: &'static str) -> Result<Option<u32>, EncodeError> {
    if wide {
        return Ok(None);
    }
    u32::try_from(value).map(Some).map_err(|_| EncodeError::Invalid(what))
}

fn encode_dss(w: &mut Writer<'_>, d: &Dss) -> Result<(), EncodeError> {
    let mut flags = 0;
    if d.data_fin {
        flags |= dss_flags::DATA_FIN;
    }
    if let Some(ack) = d.data_ack {
        flags |= dss_flags::ACK | if ack.wide { dss_flags::ACK_WIDE } else { 0 };
    }
    if let Some(m) = d.mapping {
        flags |= dss_flags::MAPPING | if m.dsn_wide { dss_flags::DSN_WIDE } else { 0 };
    }
    w.put(&[subtype::DSS << 4, flags])?;
    if let Some(ack) = d.data_ack {
        match narrow(ack.value, ack.wide, "a 4-byte data ACK must fit in 32 bits")? {
            Some(v) => w.be32(v)?,
            None => w.be64(ack.value)?,
        }
    }
    if let Some(m) = d.mapping {
        match narrow(m.dsn, m.dsn_wide, "a 4-byte DSN must fit in 32 bits")? {
            Some(v) => w.be32(v)?,
            None => w.be64(m.dsn)?,
        }
        w.be32(m.subflow_seq)?;
        w.be16(m.data_len)?;
        if let Some(checksum) = m.checksum {
            w.be16(checksum)?;
        }
    }
    Ok(())
}

#[inline(always)]
fn parse_add_addr(r: &mut Reader<'_>, low: u8, len: u8) -> Option<AddAddr> {
    let echo = low & 1 != 0;
    let addr_id = r.u8()?;
    let (v6, has_port, has_hmac) = match len {
        // An echo, or an RFC 6824 option whose low nibble is the IP version.
        8 | 10 | 20 | 22 => {
            let v6 = len >= 20;
            if !echo && low != if v6 { 6 } else { 4 } {
                return None;
            }
            (v6, len == 10 || len == 22, false)
        }
        16 | 18 | 28 | 30 if !echo => (len >= 28, len == 18 || len == 30, true),
        _ => return None,
    };
    let addr = if v6 {
        IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))
    };
    let port = if has_port { Some(r.be16()?) } else { None };
    let hmac = if has_hmac { Some(r.be64()?) } else { None };
    Some(AddAddr { echo, addr_id, addr, port, hmac })
}

fn encode_add_addr(w: &mut Writer<'_>, a: &AddAddr) -> Result<(), EncodeError> {
    let low = match (a.echo, a.hmac, a.addr) {
        (true, None, _) => 1,
        (false, Some(_), _) => 0,
        (false, None, IpAddr::V4(_)) => 4,
        (false, None, IpAddr::V6(_)) => 6,
        (true, Some(_), _) => {
            return Err(EncodeError::Invalid("an ADD_ADDR echo carries no HMAC"));
        }
    };
    w.put(&[(subtype::ADD_ADDR << 4) | low, a.addr_id])?;
    match a.addr {
        IpAddr::V4(v4) => w.put(&v4.octets())?,
        IpAddr::V6(v6) => w.put(&v6.octets())?,
    }
    if let Some(port) = a.port {
        w.be16(port)?;
    }
    if let Some(hmac) = a.hmac {
        w.be64(hmac)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests;
