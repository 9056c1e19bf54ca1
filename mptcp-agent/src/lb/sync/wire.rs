//! The sync datagram, in the spirit of IPVS connection sync: a fixed prefix (magic, version), a
//! body (sender, sequence, entries) and an HMAC-SHA256 over everything before it.
//!
//! The body is postcard (serde, varints): entries are enums of strings and integers, which a
//! fixed layout would pad to their largest case, and postcard's decoder returns an error for
//! any byte string, so hostile input needs no parser of our own. The prefix stays fixed so a
//! datagram of another version is told apart before its body is read.

use std::collections::HashMap;

use hmac::{Hmac, Mac as _};
use mptcp_common::maps::FlowKey;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{SyncCounters, SyncKey};

pub const MAGIC: [u8; 4] = *b"MLBS";
pub const VERSION: u8 = 1;
/// What a datagram may weigh: below the MTU of any path between instances.
pub const MAX_DATAGRAM: usize = 1400;
const PREFIX: usize = MAGIC.len() + 1;
const TAG: usize = 32;
/// The longest sender name accepted: an instance's name or host name.
pub const MAX_NAME: usize = 64;
/// Error text in a command ack is cut to this many bytes, so an ack always fits a datagram.
pub const MAX_ERROR_TEXT: usize = 256;
/// Senders whose replay windows are kept; the least recently heard goes first.
const MAX_SENDERS: usize = 256;
/// Bits of the replay window (IPsec's default).
const WINDOW: u64 = 64;

type HmacSha256 = Hmac<Sha256>;

/// A backend change sent to every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendAction {
    Drain,
    Activate,
    Remove,
}

/// A flow's key on the wire (the map key has padding and no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFlow {
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    pub port_a: u16,
    pub port_b: u16,
    pub family: u8,
}

impl From<&FlowKey> for WireFlow {
    fn from(key: &FlowKey) -> Self {
        Self {
            addr_a: key.addr_a,
            addr_b: key.addr_b,
            port_a: key.port_a,
            port_b: key.port_b,
            family: key.family,
        }
    }
}

impl From<&WireFlow> for FlowKey {
    fn from(flow: &WireFlow) -> Self {
        Self {
            addr_a: flow.addr_a,
            addr_b: flow.addr_b,
            port_a: flow.port_a,
            port_b: flow.port_b,
            family: flow.family,
            _pad: [0; 3],
        }
    }
}

/// The balancer counters a heartbeat carries, with the sender's sync counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub tokens_learned: u64,
    pub joins_steered_by_token: u64,
    pub joins_unknown_token: u64,
    pub joins_deferred: u64,
    pub token_collisions: u64,
    pub join_address_joins: u64,
    pub sync: SyncCounters,
}

/// One thing a datagram carries. Backends go by name: slots may differ between instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Token {
        token: u32,
        backend: String,
        learned_ns: u64,
    },
    Flow {
        flow: WireFlow,
        kind: u32,
        backend: String,
    },
    Command {
        action: BackendAction,
        backend: String,
        request: u64,
    },
    /// `error` is `None` when the command was applied.
    CommandAck {
        request: u64,
        error: Option<String>,
    },
    Heartbeat(Summary),
}

impl Entry {
    /// A command ack, its error text cut to [`MAX_ERROR_TEXT`] bytes (at a character boundary).
    pub fn ack(request: u64, error: Option<String>) -> Self {
        let error = error.map(|mut text| {
            if text.len() > MAX_ERROR_TEXT {
                let mut end = MAX_ERROR_TEXT;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            text
        });
        Entry::CommandAck { request, error }
    }
}

#[derive(Debug, Serialize)]
struct BodyRef<'a> {
    sender: &'a str,
    sequence: u64,
    entries: &'a [Entry],
}

/// A verified datagram.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Datagram {
    pub sender: String,
    pub sequence: u64,
    pub entries: Vec<Entry>,
}

/// Why a datagram was refused, each counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("shorter than a header and a tag")]
    Truncated,
    #[error("longer than {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("not a sync datagram (magic)")]
    BadMagic,
    #[error("version other than {VERSION}")]
    WrongVersion,
    #[error("HMAC does not verify")]
    Unauthenticated,
    /// Authenticated but its body does not decode: a sender with the key and a bug.
    #[error("body does not decode")]
    Malformed,
    #[error("sequence seen already or older than the replay window")]
    Replayed,
}

/// The first sequence number of a sender starting now: the wall clock in ms shifted by 20 bits,
/// so a restarted sender goes on above what it sent before (unless it sent over a million
/// datagrams per millisecond).
pub fn first_sequence() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX >> 20));
    ms << 20
}

/// Seals datagrams for one sender: its name, its key and its next sequence number.
pub struct Signer {
    key: SyncKey,
    name: String,
    next: u64,
}

impl Signer {
    pub fn new(key: SyncKey, name: &str, first: u64) -> Self {
        Self { key, name: name.to_owned(), next: first }
    }

    /// Entry bytes one datagram of this sender holds at most.
    pub fn entry_budget(&self) -> usize {
        // Name: its length (a varint, 1 byte up to 127) and bytes; sequence: a varint of at
        // most 10 bytes; the entry count: a varint of at most 2 bytes (entries are >= 2 bytes).
        MAX_DATAGRAM - PREFIX - TAG - (1 + self.name.len()) - 10 - 2
    }

    /// The datagram of `entries` with the next sequence number.
    pub fn seal(&mut self, entries: &[Entry]) -> Vec<u8> {
        let body = BodyRef { sender: &self.name, sequence: self.next, entries };
        self.next += 1;
        let mut datagram = Vec::with_capacity(MAX_DATAGRAM);
        datagram.extend_from_slice(&MAGIC);
        datagram.push(VERSION);
        // Serializing strings and integers into a Vec cannot fail.
        datagram =
            postcard::to_extend(&body, datagram).unwrap_or_else(|_| unreachable!("postcard into a Vec"));
        let tag = self.key.mac(&datagram);
        datagram.extend_from_slice(&tag);
        datagram
    }
}

impl SyncKey {
    fn mac(&self, bytes: &[u8]) -> [u8; TAG] {
        let mut mac = self.hmac();
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    fn verifies(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.hmac();
        mac.update(bytes);
        mac.verify_slice(tag).is_ok()
    }

    fn hmac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        HmacSha256::new_from_slice(self.bytes()).unwrap_or_else(|_| unreachable!("HMAC key of any length"))
    }
}

/// Encoded size of one entry.
pub fn entry_size(entry: &Entry) -> usize {
    postcard::experimental::serialized_size(entry).unwrap_or(usize::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an entry of {0} bytes does not fit a datagram")]
pub struct TooLarge(pub usize);

/// Groups entries into datagrams that stay within [`MAX_DATAGRAM`].
pub struct Batcher {
    entries: Vec<Entry>,
    size: usize,
    budget: usize,
}

impl Batcher {
    pub fn new(budget: usize) -> Self {
        Self { entries: Vec::new(), size: 0, budget }
    }

    /// Adds `entry`; returns the batch it did not fit in, to be sent. An entry larger than a
    /// whole datagram is dropped (`Err`), for the caller to count.
    pub fn push(&mut self, entry: Entry) -> Result<Option<Vec<Entry>>, TooLarge> {
        let size = entry_size(&entry);
        if size > self.budget {
            return Err(TooLarge(size));
        }
        let full = (self.size + size > self.budget).then(|| self.take()).flatten();
        self.size += size;
        self.entries.push(entry);
        Ok(full)
    }

    /// What is queued, if anything.
    pub fn take(&mut self) -> Option<Vec<Entry>> {
        self.size = 0;
        (!self.entries.is_empty()).then(|| std::mem::take(&mut self.entries))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A sender's anti-replay window over its sequence numbers (RFC 4303, section 3.4.3).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit i: `highest - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Accepts `sequence` once if it is above the window's bottom.
    pub fn accept(&mut self, sequence: u64) -> bool {
        if self.seen == 0 || sequence > self.highest {
            let shift = if self.seen == 0 { WINDOW } else { sequence - self.highest };
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = sequence;
            return true;
        }
        let behind = self.highest - sequence;
        if behind >= WINDOW || self.seen & (1 << behind) != 0 {
            return false;
        }
        self.seen |= 1 << behind;
        true
    }
}

/// Checks datagrams: size, prefix, HMAC, body, then the sender's replay window.
pub struct Verifier {
    key: SyncKey,
    windows: HashMap<String, (ReplayWindow, u64)>,
    /// Datagrams accepted, to order the windows by when each sender was last heard.
    accepted: u64,
}

impl Verifier {
    pub fn new(key: SyncKey) -> Self {
        Self { key, windows: HashMap::new(), accepted: 0 }
    }

    pub fn open(&mut self, bytes: &[u8]) -> Result<Datagram, Rejection> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(Rejection::Oversized);
        }
        if bytes.len() < PREFIX + TAG {
            return Err(Rejection::Truncated);
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(Rejection::BadMagic);
        }
        if bytes[MAGIC.len()] != VERSION {
            return Err(Rejection::WrongVersion);
        }
        let (signed, tag) = bytes.split_at(bytes.len() - TAG);
        if !self.key.verifies(signed, tag) {
            return Err(Rejection::Unauthenticated);
        }
        let datagram: Datagram = match postcard::take_from_bytes(&signed[PREFIX..]) {
            Ok((datagram, [])) => datagram,
            _ => return Err(Rejection::Malformed),
        };
        if datagram.sender.is_empty() || datagram.sender.len() > MAX_NAME {
            return Err(Rejection::Malformed);
        }
        self.accepted += 1;
        let accepted = self.accepted;
        if !self.windows.contains_key(&datagram.sender) && self.windows.len() >= MAX_SENDERS {
            let oldest = self.windows.iter().min_by_key(|(_, (_, last))| *last).map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.windows.remove(&oldest);
            }
        }
        let (window, last) = self.windows.entry(datagram.sender.clone()).or_default();
        if !window.accept(datagram.sequence) {
            return Err(Rejection::Replayed);
        }
        *last = accepted;
        Ok(datagram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SyncKey {
        SyncKey::from_bytes(vec![byte; 32])
    }

    fn token(n: u32) -> Entry {
        Entry::Token { token: n, backend: format!("backend{}", n % 7), learned_ns: u64::from(n) * 1_000_003 }
    }

    fn every_kind() -> Vec<Entry> {
        vec![
            token(0xdead_beef),
            Entry::Flow {
                flow: WireFlow { addr_a: [1; 16], addr_b: [2; 16], port_a: 80, port_b: 40000, family: 6 },
                kind: 1,
                backend: "b1".into(),
            },
            Entry::Command { action: BackendAction::Drain, backend: "b2".into(), request: u64::MAX },
            Entry::ack(7, None),
            Entry::ack(8, Some("no backend named b9".into())),
            Entry::Heartbeat(Summary {
                tokens_learned: 3,
                sync: SyncCounters { datagrams_sent: 9, ..SyncCounters::default() },
                ..Summary::default()
            }),
        ]
    }

    #[test]
    fn a_datagram_reads_back_as_sealed() {
        let mut signer = Signer::new(key(1), "lb-a", first_sequence());
        let mut verifier = Verifier::new(key(1));
        let bytes = signer.seal(&every_kind());
        assert!(bytes.len() <= MAX_DATAGRAM);
        let datagram = verifier.open(&bytes).expect("verifies");
        assert_eq!(datagram.sender, "lb-a");
        assert_eq!(datagram.entries, every_kind());
        let key = FlowKey { addr_a: [3; 16], port_b: 9, family: 4, ..FlowKey::default() };
        assert_eq!(FlowKey::from(&WireFlow::from(&key)), key);
    }

    #[test]
    fn any_changed_byte_or_another_key_is_refused() {
        let mut signer = Signer::new(key(1), "lb-a", 1);
        let bytes = signer.seal(&every_kind());
        for index in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[index] ^= 0x40;
            let refused = Verifier::new(key(1)).open(&tampered);
            let expected = match index {
                0..4 => Rejection::BadMagic,
                4 => Rejection::WrongVersion,
                _ => Rejection::Unauthenticated,
            };
            assert_eq!(refused, Err(expected), "byte {index}");
        }
        assert_eq!(Verifier::new(key(2)).open(&bytes), Err(Rejection::Unauthenticated));
        assert_eq!(Verifier::new(key(1)).open(&bytes[..bytes.len() - 1]), Err(Rejection::Unauthenticated));
        assert_eq!(Verifier::new(key(1)).open(&bytes[..20]), Err(Rejection::Truncated));
        assert_eq!(Verifier::new(key(1)).open(&[0; MAX_DATAGRAM + 1]), Err(Rejection::Oversized));
    }

    #[test]
    fn a_replay_is_refused_and_reordering_within_the_window_accepted() {
        let mut signer = Signer::new(key(1), "lb-a", 1000);
        let sealed: Vec<Vec<u8>> = (0..100u32).map(|n| signer.seal(&[token(n)])).collect();
        let mut verifier = Verifier::new(key(1));
        // 63 (sequence 1063) first, then 0..63 late but within the window, then 63 again.
        assert!(verifier.open(&sealed[63]).is_ok());
        for bytes in sealed[..63].iter().rev() {
            assert!(verifier.open(bytes).is_ok());
        }
        for bytes in &sealed[..64] {
            assert_eq!(verifier.open(bytes), Err(Rejection::Replayed));
        }
        // Past the window: 99 accepted moves the bottom to 36; 35 is refused though never seen.
        let mut verifier = Verifier::new(key(1));
        assert!(verifier.open(&sealed[99]).is_ok());
        assert_eq!(verifier.open(&sealed[35]), Err(Rejection::Replayed));
        assert!(verifier.open(&sealed[36]).is_ok());
        // Another sender has a window of its own.
        let mut other = Signer::new(key(1), "lb-b", 1);
        assert!(verifier.open(&other.seal(&[token(1)])).is_ok());
    }

    #[test]
    fn a_restarted_sender_goes_on_above_its_last_sequence() {
        let mut verifier = Verifier::new(key(1));
        let mut first = Signer::new(key(1), "lb-a", first_sequence());
        for _ in 0..1000 {
            assert!(verifier.open(&first.seal(&[])).is_ok());
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut restarted = Signer::new(key(1), "lb-a", first_sequence());
        assert!(verifier.open(&restarted.seal(&[])).is_ok());
    }

    #[test]
    fn batches_never_exceed_a_datagram() {
        for name in ["a", &"n".repeat(MAX_NAME)] {
            let mut signer = Signer::new(key(1), name, u64::MAX / 2);
            let mut batcher = Batcher::new(signer.entry_budget());
            let mut batches = Vec::new();
            let mut pushed = 0usize;
            for n in 0..5000u32 {
                let entry = match n % 4 {
                    0 => token(n.wrapping_mul(2_654_435_761)),
                    1 => every_kind()[1].clone(),
                    2 => Entry::ack(u64::from(n) << 40, Some("é".repeat(400))),
                    _ => Entry::Heartbeat(Summary { tokens_learned: u64::MAX, ..Summary::default() }),
                };
                pushed += 1;
                if let Some(batch) = batcher.push(entry).expect("every entry fits a datagram") {
                    batches.push(batch);
                }
            }
            batches.extend(batcher.take());
            let mut verifier = Verifier::new(key(1));
            let mut received = 0;
            for batch in &batches {
                let bytes = signer.seal(batch);
                assert!(bytes.len() <= MAX_DATAGRAM, "{} bytes", bytes.len());
                received += verifier.open(&bytes).expect("verifies").entries.len();
            }
            assert_eq!(received, pushed);
            // Batching packs: a batch went out only when the next entry (at most an ack with
            // its longest error text, under 300 bytes) did not fit.
            let bytes: usize = batches.iter().flatten().map(entry_size).sum();
            assert!(
                bytes > (batches.len() - 1) * (signer.entry_budget() - 300),
                "{} datagrams",
                batches.len()
            );
        }
    }

    #[test]
    fn random_bytes_never_panic_and_never_verify() {
        // xorshift64*: a fixed seed, so a failure is reproducible.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut signer = Signer::new(key(1), "lb-a", 1);
        let genuine = signer.seal(&every_kind());
        let mut verifier = Verifier::new(key(1));
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                let len = (next() % 1600) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                let mut bytes = genuine.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
                bytes.truncate((next() as usize) % (genuine.len() + 1));
                bytes
            };
            if round % 3 == 0 && bytes.len() >= PREFIX {
                bytes[..4].copy_from_slice(&MAGIC);
                bytes[4] = VERSION;
            }
            if bytes == genuine {
                // The mutations undid each other: the one datagram that should verify.
                continue;
            }
            assert!(verifier.open(&bytes).is_err(), "round {round}");
        }
        // Authenticated garbage (a sender with the key and a bug) is refused by the decoder.
        for round in 0..5000 {
            let len = (next() % 200) as usize;
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend((0..len).map(|_| next() as u8));
            let tag = key(1).mac(&bytes);
            bytes.extend_from_slice(&tag);
            if let Ok(datagram) = verifier.open(&bytes) {
                assert!(!datagram.sender.is_empty(), "round {round}");
            }
        }
    }
}
