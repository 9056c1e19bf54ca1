//! What `decode` reports, and its JSON: field names are stable (see the README).

use std::net::{IpAddr, SocketAddr};

use mptcp_common::mptcp::MptcpOption;
use serde::Serialize;

use crate::dataplane::handshake;

/// One MPTCP option as the per-packet listing shows it: the codec's option, which names its
/// `subtype`, then what follows from it. 64-bit values are JSON integers (exact; read them as
/// 64-bit integers); HMACs longer than 64 bits and opaque payloads are hex strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OptionRecord {
    #[serde(flatten)]
    pub option: MptcpOption,
    #[serde(flatten)]
    pub derived: Option<Derived>,
}

/// The fields an option's own imply; only MP_CAPABLE, DSS and ADD_ADDR have any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Derived {
    /// From `sender_key` with the version's hash.
    Capable {
        sender_token: Option<u32>,
        sender_idsn: Option<u64>,
    },
    Dss {
        infinite_mapping: bool,
    },
    /// `v0`: the RFC 6824 shape (IP version nibble, no HMAC).
    AddAddr {
        v0: bool,
    },
}

impl From<&MptcpOption> for OptionRecord {
    fn from(option: &MptcpOption) -> Self {
        let derived = match option {
            MptcpOption::Capable(capable) => {
                let keys = capable.sender_key.map(|key| token_and_idsn(capable.version, key));
                Some(Derived::Capable {
                    sender_token: keys.map(|(token, _)| token),
                    sender_idsn: keys.map(|(_, idsn)| idsn),
                })
            }
            MptcpOption::Dss(dss) => {
                Some(Derived::Dss { infinite_mapping: dss.mapping.is_some_and(|m| m.is_infinite()) })
            }
            MptcpOption::AddAddr(add) => Some(Derived::AddAddr { v0: add.is_v0() }),
            _ => None,
        };
        Self { option: *option, derived }
    }
}

pub(super) use handshake::token_and_idsn;

/// One TCP packet that carries MPTCP options or malformed options.
#[derive(Debug, Clone, Serialize)]
pub struct PacketRecord {
    pub frame: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP flags among S, A, F, R.
    pub flags: String,
    pub options: Vec<OptionRecord>,
    pub errors: Vec<String>,
}

/// A frame or option the decoder could not make sense of.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub frame: u64,
    pub error: String,
}

/// Which list of the report a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The frame could not be sliced down to a TCP header.
    UndecodableFrame,
    MalformedOption,
}

/// What the report says of one connection once all its subflows have ended, or of one ended
/// subflow of no known connection: handed on then, and forgotten.
#[derive(Debug, Clone)]
pub struct ConnectionItems {
    pub connection: Option<Connection>,
    /// In id order.
    pub subflows: Vec<Subflow>,
    /// In frame order, as the HMAC checks.
    pub add_addrs: Vec<AddAddrRecord>,
    pub hmac_checks: Vec<HmacCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubflowKind {
    /// Its SYN carried MP_CAPABLE: the connection's first subflow.
    MpCapable,
    /// Its SYN carried MP_JOIN.
    MpJoin,
    /// Its SYN carried no MPTCP option.
    Tcp,
    /// Its SYN is not in the capture.
    Unknown,
}

/// The MP_JOIN handshake of a subflow.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinHandshake {
    /// The token in the SYN: the responder's.
    pub token: u32,
    pub initiator_nonce: u32,
    pub responder_nonce: Option<u32>,
    pub initiator_addr_id: u8,
    pub responder_addr_id: Option<u8>,
    pub initiator_backup: bool,
    pub responder_backup: Option<bool>,
}

/// One TCP subflow (4-tuple), oriented from the host that sent its SYN.
#[derive(Debug, Clone, Serialize)]
pub struct Subflow {
    pub id: usize,
    pub connection: Option<usize>,
    pub initiator: SocketAddr,
    pub responder: SocketAddr,
    pub kind: SubflowKind,
    pub first_frame: u64,
    pub packets: u64,
    pub version: Option<u8>,
    pub join: Option<JoinHandshake>,
    /// Why the subflow fell back to plain TCP, when it did.
    pub fallback: Option<String>,
    /// The highest data ACK each side sent (64-bit, 4-byte ones widened).
    pub data_acks: DataAcks,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DataAcks {
    pub initiator: Option<u64>,
    pub responder: Option<u64>,
}

/// One mapping of subflow bytes onto the data sequence space, where its side first sent it (a
/// segment repeating a mapping adds none).
#[derive(Debug, Clone, Serialize)]
pub struct MappingRecord {
    pub frame: u64,
    pub subflow: usize,
    pub sender: SocketAddr,
    /// 64-bit, a 4-byte one widened (`dsn_wide`: it was sent as 8 bytes).
    pub dsn: u64,
    pub dsn_wide: bool,
    pub subflow_seq: u32,
    pub data_len: u16,
    pub data_fin: bool,
    /// Present when the mapping carries a DSS checksum.
    pub checksum: Option<ChecksumCheck>,
}

/// The check of one DSS checksum over its pseudo-header and mapped payload.
#[derive(Debug, Clone, Serialize)]
pub struct ChecksumCheck {
    pub received: u16,
    pub expected: Option<u16>,
    pub verdict: Verdict,
    /// Why the verdict is unknown.
    pub reason: Option<String>,
}

/// One MPTCP connection: the keys of both hosts and what follows from them.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub id: usize,
    pub version: u8,
    pub initiator_key: Option<u64>,
    pub responder_key: Option<u64>,
    pub initiator_token: Option<u32>,
    pub initiator_idsn: Option<u64>,
    pub responder_token: Option<u32>,
    pub responder_idsn: Option<u64>,
    pub subflows: Vec<usize>,
}

impl Connection {
    /// The key whose token is `token`, and the other key.
    pub(super) fn keys_for_token(&self, token: u32) -> Option<(Option<u64>, Option<u64>)> {
        if self.responder_token == Some(token) {
            Some((self.responder_key, self.initiator_key))
        } else if self.initiator_token == Some(token) {
            Some((self.initiator_key, self.responder_key))
        } else {
            None
        }
    }
}

/// One ADD_ADDR option.
#[derive(Debug, Clone, Serialize)]
pub struct AddAddrRecord {
    pub frame: u64,
    pub subflow: usize,
    pub sender: SocketAddr,
    pub echo: bool,
    pub addr_id: u8,
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub hmac: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacOption {
    MpJoinSynAck,
    MpJoinAck,
    AddAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Verified,
    Failed,
    /// The keys (or nonces) needed are not in the capture.
    Unknown,
}

/// The check of one HMAC carried in one frame.
#[derive(Debug, Clone, Serialize)]
pub struct HmacCheck {
    pub frame: u64,
    pub subflow: usize,
    pub connection: Option<usize>,
    pub option: HmacOption,
    /// Hex, as on the wire.
    pub received: String,
    pub expected: Option<String>,
    pub verdict: Verdict,
    /// Why the verdict is unknown.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub frames: u64,
    pub tcp_packets: u64,
    pub mptcp_packets: u64,
    pub non_tcp_frames: u64,
    pub undecodable_frames: u64,
    pub malformed_options: u64,
    pub connections: usize,
    pub subflows: usize,
    pub fallbacks: usize,
    pub hmac_verified: usize,
    pub hmac_failed: usize,
    pub hmac_unknown: usize,
    pub checksum_verified: usize,
    pub checksum_failed: usize,
    pub checksum_unknown: usize,
}

/// Everything `decode` reports about one capture file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    /// Set when the file ends early or is corrupt; what came before is still decoded.
    pub read_error: Option<String>,
    pub summary: Summary,
    pub connections: Vec<Connection>,
    pub subflows: Vec<Subflow>,
    pub add_addrs: Vec<AddAddrRecord>,
    pub hmac_checks: Vec<HmacCheck>,
    pub mappings: Vec<MappingRecord>,
    pub undecodable_frames: Vec<Problem>,
    pub malformed_options: Vec<Problem>,
    /// Only with `--packets`: every packet carrying MPTCP options or malformed options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<Vec<PacketRecord>>,
}
