//! What each side of a subflow says at the data level: its mappings with their 64-bit DSNs
//! (4-byte ones widened by mptcp-common's rule), its highest data ACK, and the verdict on every
//! DSS checksum (RFC 8684 3.3.1), summed over the mapped payload as it arrives.

use std::net::SocketAddr;

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
    /// The last mapping, as sent: a segment repeating it adds no record.
    last_mapping: Option<(u64, u32, u16)>,
    pending: Option<Pending>,
}

/// A checksum whose mapped payload is still arriving.
#[derive(Debug)]
struct Pending {
    record: usize,
    sum: DssChecksum,
    received: u16,
    /// The next relative subflow sequence number expected, and the bytes still to come.
    next: u32,
    remaining: u32,
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
    /// new mappings are appended to `records`.
    pub(super) fn segment(
        &mut self,
        mapping: Option<(DssMapping, bool)>,
        data: &Data<'_>,
        records: &mut Vec<MappingRecord>,
    ) {
        if let Some((mapping, data_fin)) = mapping
            && !mapping.is_infinite()
            && self.last_mapping != Some((mapping.dsn, mapping.subflow_seq, mapping.data_len))
        {
            self.last_mapping = Some((mapping.dsn, mapping.subflow_seq, mapping.data_len));
            if let Some(pending) = self.pending.take() {
                unknown(records, pending.record, "the capture lacks part of the mapped data");
            }
            let dsn = mapping.wide_dsn(widening_base(self.last_dsn, self.data_start));
            self.last_dsn = dsn.wrapping_add(u64::from(mapping.data_len));
            let record = records.len();
            records.push(MappingRecord {
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
            });
            if let Some(received) = mapping.checksum {
                // The DATA_FIN takes the mapping's last data sequence number, not a byte.
                let remaining = u32::from(mapping.data_len).saturating_sub(u32::from(data_fin));
                self.pending = Some(Pending {
                    record,
                    sum: DssChecksum::new(dsn, mapping.subflow_seq, mapping.data_len),
                    received,
                    next: mapping.subflow_seq,
                    remaining,
                });
            }
        }
        self.data(data, records);
    }

    /// Adds a segment's payload to the pending checksum; a gap or a cut payload makes it unknown.
    fn data(&mut self, data: &Data<'_>, records: &mut [MappingRecord]) {
        let Some(pending) = self.pending.as_mut() else { return };
        if pending.remaining > 0 && data.payload_len > 0 {
            let Some(rel) = data.rel_seq else {
                let record = pending.record;
                self.pending = None;
                return unknown(records, record, "the subflow's SYN is not in the capture");
            };
            let offset = rel.wrapping_sub(pending.next);
            let len = u32::try_from(data.payload_len).unwrap_or(u32::MAX);
            if (offset as i32) < 0 && (rel.wrapping_add(len).wrapping_sub(pending.next) as i32) <= 0 {
                // Sent again from before the mapping's unsummed part: nothing new.
                return;
            }
            if offset != 0 {
                let record = pending.record;
                self.pending = None;
                return unknown(records, record, "the mapped data arrived out of order");
            }
            if data.payload.len() < data.payload_len {
                let record = pending.record;
                self.pending = None;
                return unknown(records, record, "the snap length cut the mapped data");
            }
            let take = data.payload.len().min(pending.remaining as usize);
            pending.sum.add(&data.payload[..take]);
            pending.next = pending.next.wrapping_add(take as u32);
            pending.remaining -= take as u32;
        }
        if pending.remaining == 0 {
            let Pending { record, sum, received, .. } = *pending;
            self.pending = None;
            let expected = sum.finish();
            if let Some(check) = records.get_mut(record).and_then(|r| r.checksum.as_mut()) {
                check.expected = Some(expected);
                check.verdict = if expected == received { Verdict::Verified } else { Verdict::Failed };
            }
        }
    }

    /// At the end of the capture: a checksum still waiting for data stays unknown.
    pub(super) fn finish(&mut self, records: &mut [MappingRecord]) {
        if let Some(pending) = self.pending.take() {
            unknown(records, pending.record, "the capture ends before the mapped data");
        }
    }
}

fn unknown(records: &mut [MappingRecord], record: usize, reason: &str) {
    if let Some(check) = records.get_mut(record).and_then(|r| r.checksum.as_mut()) {
        check.reason = Some(reason.to_owned());
    }
}
