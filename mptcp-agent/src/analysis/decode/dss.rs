//! What each side of a subflow says at the data level: its mappings with their 64-bit DSNs
//! (4-byte ones widened by mptcp-common's rule), its highest data ACK, and the verdict on every
//! DSS checksum (RFC 8684 3.3.1), summed over the mapped payload as it arrives. A mapping is
//! handed on once its verdict is final, so a side keeps only the mappings still in flight.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
};

use mptcp_common::{
    checksum::DssChecksum,
    mptcp::{DataAck, DssMapping, widening_base},
};

use super::report::{ChecksumCheck, MappingRecord, Verdict};

/// One side of one subflow.
#[derive(Debug, Default)]
pub(super) struct DssSide {
    /// Where this side's data sequence space starts (its IDSN + 1) and where the space it
    /// acknowledges starts, once the keys are known.
    pub(super) data_start: u64,
    pub(super) acked_start: u64,
    /// The last 64-bit DSN mapped and the highest data ACK sent (0: none yet).
    last_dsn: u64,
    pub(super) data_ack: Option<u64>,
    /// The latest mappings seen, as sent: a segment repeating one (the next segments it
    /// covers, a retransmission) adds no record.
    recent: RecentMappings,
    pending: Vec<Pending>,
    /// The data of the last mapping completed: Linux sends a mapping again, one longer, with
    /// the DATA_FIN on its last segment, and that mapping's checksum covers the same bytes.
    last_complete: Option<(u32, Vec<u8>)>,
}

/// A checksum whose mapped payload is still arriving: the bytes in place, in whatever order
/// the segments come (reordered, retransmitted, overlapping).
#[derive(Debug)]
struct Pending {
    record: MappingRecord,
    dsn: u64,
    subflow_seq: u32,
    data_len: u16,
    data: Vec<u8>,
    filled: Vec<bool>,
    missing: usize,
}

/// Mappings whose data may still be completing; beyond this the oldest is given up (unknown).
const MAX_PENDING: usize = 256;

/// Mappings remembered per side to recognise a repeat: a repeat comes while its data is in
/// flight, and this is more segments than a subflow's window holds in practice (a repeat of an
/// older one would be listed again).
const RECENT_MAPPINGS: usize = 8_192;

/// A mapping as sent: 4- or 8-byte DSN, subflow sequence, data-level length.
type MappingKey = (u64, u32, u16);

/// The last `RECENT_MAPPINGS` distinct mappings of a side, oldest first.
#[derive(Debug, Default)]
struct RecentMappings {
    order: VecDeque<MappingKey>,
    keys: HashSet<MappingKey>,
}

impl RecentMappings {
    /// Remembers `key`; false when it is already remembered (a repeat).
    fn insert(&mut self, key: MappingKey) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        if self.order.len() == RECENT_MAPPINGS
            && let Some(oldest) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        self.order.push_back(key);
        true
    }
}

/// A segment as this module needs it: relative subflow sequence, payload sent and captured.
pub(super) struct Data<'a> {
    pub(super) frame: u64,
    pub(super) subflow: usize,
    pub(super) sender: SocketAddr,
    /// The segment's sequence number relative to the sender's ISN, when that is known.
    pub(super) rel_seq: Option<u32>,
    pub(super) payload_len: usize,
    pub(super) payload: &'a [u8],
}

impl DssSide {
    /// A 4-byte data ACK widened against what this side acknowledged before, else the start of
    /// the space it acknowledges.
    pub(super) fn data_ack(&mut self, ack: DataAck) {
        let value = ack.wide_value(widening_base(self.data_ack.unwrap_or(0), self.acked_start));
        if self.data_ack.is_none_or(|highest| value > highest) {
            self.data_ack = Some(value);
        }
    }

    /// A mapping (DSS, or MP_CAPABLE's implicit one) sent on this segment, and then its data;
    /// mappings whose verdict is final (none without a checksum) are appended to `finished`.
    pub(super) fn segment(
        &mut self,
        mapping: Option<(DssMapping, bool)>,
        data: &Data<'_>,
        finished: &mut Vec<MappingRecord>,
    ) {
        if let Some((mapping, data_fin)) = mapping
            && !mapping.is_infinite()
            && self.recent.insert((mapping.dsn, mapping.subflow_seq, mapping.data_len))
        {
            let dsn = mapping.wide_dsn(widening_base(self.last_dsn, self.data_start));
            self.last_dsn = dsn.wrapping_add(u64::from(mapping.data_len));
            let record = MappingRecord {
                frame: data.frame,
                subflow: data.subflow,
                sender: data.sender,
                dsn,
                dsn_wide: mapping.dsn_wide,
                subflow_seq: mapping.subflow_seq,
                data_len: mapping.data_len,
                data_fin,
                checksum: mapping.checksum.map(|received| ChecksumCheck {
                    received,
                    expected: None,
                    verdict: Verdict::Unknown,
                    reason: None,
                }),
            };
            if mapping.checksum.is_some() {
                if self.pending.len() == MAX_PENDING {
                    let oldest = self.pending.remove(0);
                    finished.push(unknown(oldest.record, "too many mappings incomplete at once"));
                }
                // The DATA_FIN takes the mapping's last data sequence number, not a byte.
                let bytes = usize::from(mapping.data_len).saturating_sub(usize::from(data_fin));
                let mut pending = Pending {
                    record,
                    dsn,
                    subflow_seq: mapping.subflow_seq,
                    data_len: mapping.data_len,
                    data: vec![0; bytes],
                    filled: vec![false; bytes],
                    missing: bytes,
                };
                // The bytes already seen of the same mapping without the DATA_FIN, complete or
                // still arriving.
                if let Some((start, known)) = &self.last_complete
                    && *start == mapping.subflow_seq
                {
                    pending.fill(0, &known[..known.len().min(bytes)]);
                }
                for shorter in self.pending.iter().filter(|p| p.subflow_seq == mapping.subflow_seq) {
                    for (i, _) in shorter.filled.iter().enumerate().take(bytes).filter(|(_, f)| **f) {
                        pending.fill(i, &shorter.data[i..=i]);
                    }
                }
                self.pending.push(pending);
            } else {
                finished.push(record);
            }
        }
        self.data(data, finished);
    }

    /// Puts a segment's payload in place in every pending mapping it overlaps; a mapping with
    /// all its bytes gets its verdict.
    fn data(&mut self, data: &Data<'_>, finished: &mut Vec<MappingRecord>) {
        let mut index = 0;
        while let Some(pending) = self.pending.get_mut(index) {
            match pending.add(data) {
                Ok(()) if pending.missing > 0 => {
                    index += 1;
                    continue;
                }
                Ok(()) => {
                    let mut sum = DssChecksum::new(pending.dsn, pending.subflow_seq, pending.data_len);
                    sum.add(&pending.data);
                    if !pending.data.is_empty() {
                        self.last_complete = Some((pending.subflow_seq, std::mem::take(&mut pending.data)));
                    }
                    let expected = sum.finish();
                    let mut record = self.pending.remove(index).record;
                    if let Some(check) = record.checksum.as_mut() {
                        check.expected = Some(expected);
                        check.verdict =
                            if expected == check.received { Verdict::Verified } else { Verdict::Failed };
                    }
                    finished.push(record);
                }
                Err(reason) => finished.push(unknown(self.pending.remove(index).record, reason)),
            }
        }
    }

    /// At the end of the capture: a checksum still waiting for data stays unknown.
    pub(super) fn finish(&mut self, finished: &mut Vec<MappingRecord>) {
        for pending in self.pending.drain(..) {
            finished.push(unknown(pending.record, "the capture lacks part of the mapped data"));
        }
    }
}

impl Pending {
    /// Copies the part of the segment's payload that falls in the mapping.
    fn add(&mut self, data: &Data<'_>) -> Result<(), &'static str> {
        if data.payload_len == 0 || self.data.is_empty() {
            return Ok(());
        }
        let Some(rel) = data.rel_seq else {
            return Err("the subflow's SYN is not in the capture");
        };
        // Where the segment starts relative to the mapping (serial arithmetic), and the overlap.
        let offset = i64::from(rel.wrapping_sub(self.subflow_seq) as i32);
        let start = offset.max(0);
        let end = (offset + data.payload_len as i64).min(self.data.len() as i64);
        if start >= end {
            return Ok(());
        }
        let (from, to) = ((start - offset) as usize, (end - offset) as usize);
        let Some(bytes) = data.payload.get(from..to) else {
            return Err("the snap length cut the mapped data");
        };
        self.fill(start as usize, bytes);
        Ok(())
    }

    /// Puts `bytes` at `offset` of the mapped data (within it).
    fn fill(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        self.data[offset..end].copy_from_slice(bytes);
        for filled in &mut self.filled[offset..end] {
            if !*filled {
                *filled = true;
                self.missing -= 1;
            }
        }
    }
}

/// A mapping whose checksum verdict stays unknown, and why.
fn unknown(mut record: MappingRecord, reason: &str) -> MappingRecord {
    if let Some(check) = record.checksum.as_mut() {
        check.reason = Some(reason.to_owned());
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repeats are recognised within the window; beyond it the oldest is forgotten, so a side's
    /// memory does not grow with its mappings.
    #[test]
    fn recent_mappings_forget_the_oldest() {
        let mut recent = RecentMappings::default();
        let key = |n: usize| (n as u64, n as u32, 1);
        assert!(recent.insert(key(0)));
        assert!(!recent.insert(key(0)));
        for n in 1..=RECENT_MAPPINGS {
            assert!(recent.insert(key(n)));
        }
        assert_eq!(recent.keys.len(), RECENT_MAPPINGS);
        assert!(!recent.insert(key(RECENT_MAPPINGS)));
        assert!(recent.insert(key(0)), "the oldest is forgotten");
    }
}
