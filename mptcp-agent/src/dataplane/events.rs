//! Handshake events from the programs: what the agent makes of them (MP_JOIN and ADD_ADDR HMAC
//! verdicts, key cross-checks) and how they are recorded. The daemon and `replay` share it.

use std::{
    borrow::Cow,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use mptcp_common::maps::{
    CONNECTIONS_MAP, Connection, ConnectionChecks, Event, FlowKey, HMAC_VERDICTS_MAP, SUBFLOWS_MAP, Subflow,
    addr_words, connection_flags, event_flags, event_kind, hmac_verdict, subflow_kind,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    bpf::maps,
    dataplane::handshake,
    dataplane::tables::{Hex64, TableError, Tables, Token, fallback_name, hmac_name, ip, map_error},
    report::Chain,
};

/// An event as the agent records it (`events --json`, the daemon's log, which `events` reads
/// back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time_ns: u64,
    /// What the event is, under `kind`, and what the agent made of it.
    #[serde(flatten)]
    pub details: EventDetails,
    pub hook: Hook,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Server token of the subflow's connection, when known.
    pub token: Option<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Ingress,
    Egress,
}

/// The per-kind part of an [`EventRecord`]. Keys are hex (`0x` and 16 digits), HMACs hex bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventDetails {
    MpCapable {
        sender_key: Hex64,
        receiver_key: Option<Hex64>,
        /// The programs' tokens and IDSNs of the keys equal the agent's own SHA-256 of them.
        tokens_checked: Option<bool>,
    },
    JoinSyn {
        join_token: Token,
        nonce: Token,
        addr_id: u8,
        backup: bool,
    },
    JoinSynack {
        hmac: String,
        nonce: Token,
        addr_id: u8,
        backup: bool,
    },
    JoinAck {
        hmac: String,
        verdict: Option<Cow<'static, str>>,
    },
    AddAddr {
        addr: IpAddr,
        port: Option<u16>,
        addr_id: u8,
        echo: bool,
        hmac: Option<String>,
        verdict: Option<Cow<'static, str>>,
    },
    RemoveAddr {
        addr_ids: Vec<u8>,
    },
    MpPrio {
        backup: bool,
    },
    MpFail {
        dsn: u64,
    },
    MpFastclose {
        receiver_key: Hex64,
    },
    MpTcprst {
        reason: u8,
        flags: u8,
    },
    Fallback {
        reason: Option<Cow<'static, str>>,
    },
    Unknown,
}

impl EventRecord {
    /// One line for humans.
    pub fn line(&self) -> String {
        let details = match serde_json::to_value(&self.details) {
            Ok(Value::Object(fields)) => fields
                .iter()
                .filter(|(key, value)| key.as_str() != "kind" && !value.is_null())
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        format!(
            "{:>16} {:<12} {:<7} {} -> {} token={} {}",
            self.time_ns,
            self.details.kind(),
            self.hook.name(),
            self.src,
            self.dst,
            Token::or_dash(self.token),
            details.join(" ")
        )
    }
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

impl EventDetails {
    /// The `kind` the record is logged under.
    pub fn kind(&self) -> &'static str {
        match self {
            EventDetails::MpCapable { .. } => "mp_capable",
            EventDetails::JoinSyn { .. } => "join_syn",
            EventDetails::JoinSynack { .. } => "join_synack",
            EventDetails::JoinAck { .. } => "join_ack",
            EventDetails::AddAddr { .. } => "add_addr",
            EventDetails::RemoveAddr { .. } => "remove_addr",
            EventDetails::MpPrio { .. } => "mp_prio",
            EventDetails::MpFail { .. } => "mp_fail",
            EventDetails::MpFastclose { .. } => "mp_fastclose",
            EventDetails::MpTcprst { .. } => "mp_tcprst",
            EventDetails::Fallback { .. } => "fallback",
            EventDetails::Unknown => "unknown",
        }
    }
}

/// Lowercase hex digits of `bytes`, in one allocation (this runs for every join event).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// The subflow key of an event's packet.
fn event_key(event: &Event) -> FlowKey {
    FlowKey::new(event.family, addr_words(event.src), event.sport, addr_words(event.dst), event.dport).0
}

/// The MPTCP client's and server's keys of a connection, when both crossed the wire.
fn keys(connection: &Connection) -> Option<(u64, u64)> {
    let both = connection_flags::CLIENT_KEY | connection_flags::SERVER_KEY;
    (connection.flags & both == both).then_some((connection.client_key, connection.server_key))
}

/// The verdict on a join subflow's HMACs, from the nonces and HMACs the programs stored in its
/// entry and the connection's keys.
pub fn join_verdict(subflow: &Subflow, connection: Option<&Connection>) -> u8 {
    let Some((client_key, server_key)) = connection.and_then(keys) else {
        return hmac_verdict::UNKNOWN;
    };
    // A is the host that sent the join's SYN.
    let (key_a, key_b) =
        if subflow.server_initiated != 0 { (server_key, client_key) } else { (client_key, server_key) };
    let (nonce_a, nonce_b) = (subflow.join_nonce_client, subflow.join_nonce_server);
    let synack = handshake::join_synack_hmac(key_b, key_a, nonce_b, nonce_a);
    let ack = handshake::join_ack_hmac(key_a, key_b, nonce_a, nonce_b);
    if synack == subflow.join_synack_hmac && ack == subflow.join_ack_hmac {
        hmac_verdict::VERIFIED
    } else {
        hmac_verdict::FAILED
    }
}

/// A map read for event processing: a missing entry is `None`; a failed read is logged, and the
/// event is then judged as if the entry were missing.
fn logged<V>(map: &str, read: Result<Option<V>, aya::maps::MapError>) -> Option<V> {
    read.unwrap_or_else(|error| {
        log::warn!("reading {map}: {}", Chain(&error));
        None
    })
}

/// Events a [`Processor`] takes before it writes what it learnt ([`Processor::flush`]): a bound
/// on how late a verdict reaches the programs and on the batch's memory.
const BATCH_EVENTS: usize = 1024;

/// What a [`Processor`] knows between two flushes. Reads are cached only where the answer cannot
/// change meanwhile, writes are coalesced per entry; the flush writes them and forgets all.
#[derive(Default)]
struct Batch {
    events: usize,
    /// Connections read with both keys known, and the key check's result once made: keys,
    /// version and the programs' tokens and IDSNs of an entry are set once, with the keys.
    connections: HashMap<u32, (Connection, Option<bool>)>,
    /// The agent's checks to write; the agent is the map's only writer.
    checks: HashMap<u32, ConnectionChecks>,
    verdicts: Vec<(FlowKey, u8)>,
}

/// Applies events to the tables. What it writes waits for [`Processor::flush`] (or every
/// [`BATCH_EVENTS`] events, or the drop): one write per entry for a burst of events.
pub struct Processor<'t> {
    tables: &'t mut Tables,
    batch: Batch,
}

impl<'t> Processor<'t> {
    pub fn new(tables: &'t mut Tables) -> Self {
        Self { tables, batch: Batch::default() }
    }

    pub fn tables(&self) -> &Tables {
        self.tables
    }

    /// Writes the verdicts and checks of the events processed since the last flush.
    pub fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let (keys, verdicts): (Vec<_>, Vec<_>) = batch.verdicts.into_iter().unzip();
        if let Err(error) = maps::insert_batch(&self.tables.verdicts, &keys, &verdicts) {
            log::warn!("recording {} HMAC verdict(s): {}", keys.len(), Chain(&error));
        }
        let (tokens, checks): (Vec<_>, Vec<_>) = batch.checks.into_iter().unzip();
        if let Err(error) = maps::insert_batch(&self.tables.checks, &tokens, &checks) {
            log::warn!("recording the checks of {} connection(s): {}", tokens.len(), Chain(&error));
        }
    }

    fn connection(&mut self, token: u32) -> Option<Connection> {
        if token == 0 {
            return None;
        }
        if let Some((connection, _)) = self.batch.connections.get(&token) {
            return Some(*connection);
        }
        let connection = logged(CONNECTIONS_MAP, maps::lookup(&self.tables.connections, &token))?;
        if keys(&connection).is_some() {
            self.batch.connections.insert(token, (connection, None));
        }
        Some(connection)
    }

    fn subflow(&self, key: &FlowKey) -> Option<Subflow> {
        self.tables.subflow(key).unwrap_or_else(|error| {
            log::warn!("reading a subflow: {}", Chain(&error));
            None
        })
    }

    fn update_checks(&mut self, token: u32, update: impl FnOnce(&mut ConnectionChecks)) {
        let checks = match self.batch.checks.entry(token) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => match self.tables.checks(token) {
                Ok(checks) => entry.insert(checks),
                Err(error) => {
                    log::warn!("reading checks of connection {token:#010x}: {}", Chain(&error));
                    return;
                }
            },
        };
        update(checks);
    }

    /// Verifies the join subflow `key` if its handshake is complete and unjudged; returns the
    /// verdict recorded.
    pub fn verify_join(&mut self, key: &FlowKey) -> Option<u8> {
        let subflow = self.subflow(key)?;
        if subflow.kind != subflow_kind::JOIN || subflow.hmac != hmac_verdict::PENDING {
            return None;
        }
        let connection = self.connection(subflow.conn_token);
        let verdict = join_verdict(&subflow, connection.as_ref());
        self.batch.verdicts.push((*key, verdict));
        Some(verdict)
    }

    /// Verifies every complete join that has no verdict yet: after a restart, events may have
    /// been consumed by a previous run that died before judging them.
    pub fn verify_pending(&mut self) -> Result<usize, TableError> {
        // Verdicts not yet written would be judged twice.
        self.flush();
        let mut pending = Vec::new();
        for (key, subflow) in maps::entries(&self.tables.subflows).map_err(map_error(SUBFLOWS_MAP))? {
            if subflow.kind == subflow_kind::JOIN
                && subflow.hmac == hmac_verdict::PENDING
                && maps::lookup(&self.tables.verdicts, &key).map_err(map_error(HMAC_VERDICTS_MAP))?.is_none()
            {
                pending.push(key);
            }
        }
        let judged = pending.iter().filter(|key| self.verify_join(key).is_some()).count();
        self.flush();
        Ok(judged)
    }

    /// Cross-checks the programs' tokens and IDSNs of a connection's keys against the agent's
    /// own SHA-256 (SHA-1 for version 0).
    fn check_keys(&mut self, token: u32) -> Option<bool> {
        let connection = self.connection(token)?;
        let matched = match self.batch.connections.get_mut(&token) {
            Some((_, Some(matched))) => *matched,
            Some((_, unchecked)) => *unchecked.insert(derived_match(&connection)),
            None => derived_match(&connection),
        };
        self.update_checks(token, |checks| {
            if matched {
                checks.keys_matched += 1;
            } else {
                checks.keys_mismatched += 1;
            }
        });
        Some(matched)
    }

    /// The ADD_ADDR HMAC verdict, or `None` when it carries none (echo, v0) or keys are missing.
    fn verify_add_addr(&mut self, event: &Event) -> Option<bool> {
        if event.flags & event_flags::ECHO != 0 || event.hmac[..8] == [0; 8] {
            return None;
        }
        let connection = self.connection(event.token)?;
        let (client_key, server_key) = keys(&connection)?;
        let subflow = self.subflow(&event_key(event))?;
        // The sender is the MPTCP client when it opened this subflow and the subflow is the
        // client's, or answered a subflow the server opened.
        let sender_is_client = (event.from_client != 0) != (subflow.server_initiated != 0);
        let (sender, receiver) =
            if sender_is_client { (client_key, server_key) } else { (server_key, client_key) };
        let port = (event.port != 0).then_some(event.port);
        let expected =
            handshake::add_addr_hmac(sender, receiver, event.addr_id, ip(event.count, event.addr), port);
        let verified = expected.to_be_bytes() == event.hmac[..8];
        self.update_checks(event.token, |checks| {
            if verified {
                checks.add_addr_verified += 1;
            } else {
                checks.add_addr_failed += 1;
            }
        });
        Some(verified)
    }

    /// Acts on one event and describes it.
    pub fn process(&mut self, event: &Event) -> EventRecord {
        let record = self.describe(event);
        self.batch.events += 1;
        if self.batch.events >= BATCH_EVENTS {
            self.flush();
        }
        record
    }

    fn describe(&mut self, event: &Event) -> EventRecord {
        let backup = event.flags & event_flags::BACKUP != 0;
        let details = match event.kind {
            event_kind::MP_CAPABLE => EventDetails::MpCapable {
                tokens_checked: self.check_keys(event.token),
                sender_key: Hex64(event.keys[0]),
                receiver_key: (event.keys[1] != 0).then_some(Hex64(event.keys[1])),
            },
            event_kind::JOIN_SYN => EventDetails::JoinSyn {
                join_token: Token(event.token),
                nonce: Token(event.nonce),
                addr_id: event.addr_id,
                backup,
            },
            event_kind::JOIN_SYNACK => EventDetails::JoinSynack {
                hmac: hex(&event.hmac[..8]),
                nonce: Token(event.nonce),
                addr_id: event.addr_id,
                backup,
            },
            event_kind::JOIN_ACK => EventDetails::JoinAck {
                verdict: self.verify_join(&event_key(event)).map(|verdict| hmac_name(verdict).into()),
                hmac: hex(&event.hmac),
            },
            event_kind::ADD_ADDR => EventDetails::AddAddr {
                verdict: self.verify_add_addr(event).map(|ok| if ok { "verified" } else { "failed" }.into()),
                addr: ip(event.count, event.addr),
                port: (event.port != 0).then_some(event.port),
                addr_id: event.addr_id,
                echo: event.flags & event_flags::ECHO != 0,
                hmac: (event.hmac[..8] != [0; 8]).then(|| hex(&event.hmac[..8])),
            },
            event_kind::REMOVE_ADDR => {
                EventDetails::RemoveAddr { addr_ids: event.addr[..usize::from(event.count).min(16)].to_vec() }
            }
            event_kind::MP_PRIO => EventDetails::MpPrio { backup },
            event_kind::MP_FAIL => EventDetails::MpFail { dsn: event.keys[0] },
            event_kind::MP_FASTCLOSE => EventDetails::MpFastclose { receiver_key: Hex64(event.keys[0]) },
            event_kind::MP_TCPRST => EventDetails::MpTcprst { reason: event.reason, flags: event.flags },
            event_kind::FALLBACK => {
                EventDetails::Fallback { reason: fallback_name(event.reason).map(Into::into) }
            }
            _ => EventDetails::Unknown,
        };
        // The join token travels in `token` for a join SYN; otherwise it is the connection's.
        let token = (event.kind != event_kind::JOIN_SYN && event.token != 0).then_some(Token(event.token));
        EventRecord {
            time_ns: event.timestamp_ns,
            details,
            hook: if event.hook == 0 { Hook::Ingress } else { Hook::Egress },
            src: SocketAddr::new(ip(event.family, event.src), event.sport),
            dst: SocketAddr::new(ip(event.family, event.dst), event.dport),
            token,
        }
    }
}

impl Drop for Processor<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Whether the programs' tokens and IDSNs of a connection's keys equal the agent's own.
fn derived_match(connection: &Connection) -> bool {
    let derived = |key| handshake::token_and_idsn(connection.version, key);
    let mut matched = true;
    if connection.flags & connection_flags::SERVER_KEY != 0 {
        matched &= derived(connection.server_key) == (connection.server_token, connection.server_idsn);
    }
    if connection.flags & connection_flags::CLIENT_KEY != 0 {
        matched &= derived(connection.client_key) == (connection.client_token, connection.client_idsn);
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written_with_the_logged_shape() {
        let record = EventRecord {
            time_ns: 42,
            details: EventDetails::JoinSyn {
                join_token: Token(0xdead_beef),
                nonce: Token(7),
                addr_id: 2,
                backup: true,
            },
            hook: Hook::Ingress,
            src: "198.51.100.1:40000".parse().unwrap(),
            dst: "203.0.113.2:80".parse().unwrap(),
            token: None,
        };
        let line = serde_json::to_string(&record).unwrap();
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["kind"], "join_syn");
        assert_eq!(json["join_token"], "0xdeadbeef");
        assert_eq!(json["nonce"], "0x00000007");
        assert_eq!(json["hook"], "ingress");
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), record);
        let capable = EventRecord {
            details: EventDetails::MpCapable {
                sender_key: Hex64(1),
                receiver_key: None,
                tokens_checked: Some(true),
            },
            token: Some(Token(0x0102_0304)),
            ..record
        };
        let line = serde_json::to_string(&capable).unwrap();
        assert!(line.contains(r#""sender_key":"0x0000000000000001""#), "{line}");
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), capable);
        assert!(serde_json::from_str::<Token>(r#""12""#).is_err());
    }
}
