//! The fallback rule (RFC 8684 3.3.1, 3.7), one for the tracker program and `decode`: each keeps a
//! [`MappingState`] per subflow and direction and feeds it every segment that side sent.
//!
//! Fallback: a SYN-ACK without MP_CAPABLE answering an MP_CAPABLE SYN; an infinite mapping;
//! MP_FAIL; data not covered by a mapping (the first data segment without DSS mapping or
//! MP_CAPABLE with data, or a later one beyond the last mapping). Not fallback: a segment
//! without DSS inside the last mapping, a pure ACK, a data ACK alone.

use crate::maps::fallback_reason;

/// What one side of a subflow has shown of its mappings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MappingState {
    /// The side's initial sequence number (from its SYN or SYN-ACK), valid with `isn_known`.
    pub isn: u32,
    pub isn_known: bool,
    /// The last mapping: subflow sequence (relative to `isn`) and length; `map_len` 0 means no
    /// mapping yet.
    pub map_ssn: u32,
    pub map_len: u16,
}

/// What the rule needs to know of one segment, from the side that sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentFacts {
    pub syn: bool,
    pub ack: bool,
    /// TCP sequence number and payload length.
    pub seq: u32,
    pub payload_len: u32,
    /// The subflow's SYN carried MP_CAPABLE (an initial subflow).
    pub initial: bool,
    /// The subflow negotiated MPTCP and its handshake is over: data checks apply.
    pub established: bool,
    pub mp_capable: bool,
    /// A DSS mapping (length 0: infinite) or MP_CAPABLE data length, relative subflow sequence.
    pub mapping: Option<(u32, u16)>,
    pub mp_fail: bool,
}

impl MappingState {
    /// Learns what the segment shows; the fallback reason when it shows one.
    #[inline(always)]
    pub fn on_segment(&mut self, seg: &SegmentFacts) -> Option<u8> {
        if seg.syn {
            self.isn = seg.seq;
            self.isn_known = true;
            if seg.ack && seg.initial && !seg.mp_capable {
                return Some(fallback_reason::NO_MP_CAPABLE_REPLY);
            }
            return None;
        }
        if seg.mp_fail {
            return Some(fallback_reason::MP_FAIL);
        }
        if let Some((ssn, len)) = seg.mapping {
            if len == 0 {
                return Some(fallback_reason::INFINITE_MAPPING);
            }
            self.map_ssn = ssn;
            self.map_len = len;
            return None;
        }
        if seg.payload_len == 0 || !seg.established {
            return None;
        }
        if self.map_len == 0 {
            // First data segment without a mapping (3.7).
            return Some(fallback_reason::OPTIONS_VANISHED);
        }
        if !self.isn_known || self.covers(seg.seq.wrapping_sub(self.isn), seg.payload_len) {
            return None;
        }
        Some(fallback_reason::OPTIONS_VANISHED)
    }

    /// Whether [`MappingState::on_segment`] would leave a side whose last mapping is
    /// (`map_ssn`, `map_len`) as it is and find no fallback, known without the rest of its
    /// state: a segment without SYN or MP_FAIL (`syn_or_fail`) that carries no data and no
    /// mapping (a pure ACK, a data ACK alone), or repeats the side's last mapping (every segment
    /// of one TSO burst does). The programs skip the rule on those.
    #[inline(always)]
    pub fn unchanged_by(
        map_ssn: u32,
        map_len: u16,
        syn_or_fail: bool,
        payload_len: u32,
        mapping: Option<(u32, u16)>,
    ) -> bool {
        if syn_or_fail {
            return false;
        }
        match mapping {
            None => payload_len == 0,
            Some((ssn, len)) => len != 0 && (ssn, len) == (map_ssn, map_len),
        }
    }

    /// Whether `[ssn, ssn+len)` lies in the last mapping, or wholly before it (data mapped
    /// earlier, sent again); serial arithmetic (RFC 1982).
    #[inline(always)]
    fn covers(&self, ssn: u32, len: u32) -> bool {
        let offset = ssn.wrapping_sub(self.map_ssn);
        if (offset as i32) < 0 {
            return (ssn.wrapping_add(len).wrapping_sub(self.map_ssn) as i32) <= 0;
        }
        u64::from(offset).saturating_add(u64::from(len)) <= u64::from(self.map_len)
    }
}

/// Whether a subflow's fallback takes its connection along: MP_FAIL on a connection with other
/// subflows closes only that subflow (3.7); the rest fall the connection back.
#[inline(always)]
pub fn falls_back_connection(reason: u8, other_subflows: bool) -> bool {
    !(reason == fallback_reason::MP_FAIL && other_subflows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISN: u32 = 1000;

    fn syn(isn: u32) -> SegmentFacts {
        SegmentFacts { syn: true, seq: isn, initial: true, mp_capable: true, ..SegmentFacts::default() }
    }

    fn data(rel: u32, len: u32, mapping: Option<(u32, u16)>) -> SegmentFacts {
        SegmentFacts {
            ack: true,
            seq: ISN.wrapping_add(rel),
            payload_len: len,
            initial: true,
            established: true,
            mapping,
            ..SegmentFacts::default()
        }
    }

    fn started(isn: u32) -> MappingState {
        let mut state = MappingState::default();
        assert_eq!(state.on_segment(&syn(isn)), None);
        state
    }

    #[test]
    fn one_mapping_covers_three_segments() {
        let mut s = started(ISN);
        assert_eq!(s.on_segment(&data(1, 1000, Some((1, 3000)))), None);
        assert_eq!(s.on_segment(&data(1001, 1000, None)), None);
        assert_eq!(s.on_segment(&data(2001, 1000, None)), None);
    }

    #[test]
    fn first_data_without_mapping_falls_back() {
        let mut s = started(ISN);
        // A pure ACK and a data ACK alone are not data.
        assert_eq!(s.on_segment(&data(1, 0, None)), None);
        assert_eq!(s.on_segment(&data(1, 100, None)), Some(fallback_reason::OPTIONS_VANISHED));
    }

    #[test]
    fn data_beyond_the_mapping_falls_back() {
        let mut s = started(ISN);
        assert_eq!(s.on_segment(&data(1, 1000, Some((1, 2000)))), None);
        assert_eq!(s.on_segment(&data(1001, 1000, None)), None);
        assert_eq!(s.on_segment(&data(2001, 1000, None)), Some(fallback_reason::OPTIONS_VANISHED));
        // Straddling the end is not covered either.
        let mut s = started(ISN);
        assert_eq!(s.on_segment(&data(1, 1000, Some((1, 1500)))), None);
        assert_eq!(s.on_segment(&data(1001, 1000, None)), Some(fallback_reason::OPTIONS_VANISHED));
    }

    #[test]
    fn retransmission_before_the_mapping_is_covered() {
        let mut s = started(ISN);
        assert_eq!(s.on_segment(&data(1, 1000, Some((1, 1000)))), None);
        assert_eq!(s.on_segment(&data(1001, 1000, Some((1001, 1000)))), None);
        assert_eq!(s.on_segment(&data(1, 1000, None)), None);
    }

    #[test]
    fn infinite_mapping_and_mp_fail() {
        let mut s = started(ISN);
        assert_eq!(s.on_segment(&data(1, 100, Some((1, 0)))), Some(fallback_reason::INFINITE_MAPPING));
        let fail = SegmentFacts { mp_fail: true, ..data(1, 0, None) };
        assert_eq!(started(ISN).on_segment(&fail), Some(fallback_reason::MP_FAIL));
        assert!(falls_back_connection(fallback_reason::MP_FAIL, false));
        assert!(!falls_back_connection(fallback_reason::MP_FAIL, true));
        assert!(falls_back_connection(fallback_reason::INFINITE_MAPPING, true));
    }

    #[test]
    fn syn_ack_without_mp_capable() {
        let mut s = MappingState::default();
        let syn_ack = SegmentFacts { ack: true, mp_capable: false, ..syn(7) };
        assert_eq!(s.on_segment(&syn_ack), Some(fallback_reason::NO_MP_CAPABLE_REPLY));
        let join_syn_ack = SegmentFacts { initial: false, ..syn_ack };
        assert_eq!(MappingState::default().on_segment(&join_syn_ack), None);
    }

    #[test]
    fn subflow_sequence_wraps() {
        let isn = u32::MAX - 500;
        let mut s = started(isn);
        let at =
            |rel: u32, len, mapping| SegmentFacts { seq: isn.wrapping_add(rel), ..data(0, len, mapping) };
        assert_eq!(s.on_segment(&at(1, 1000, Some((1, 3000)))), None);
        assert_eq!(s.on_segment(&at(1001, 1000, None)), None);
        assert_eq!(s.on_segment(&at(2001, 1000, None)), None);
        assert_eq!(s.on_segment(&at(3001, 1, None)), Some(fallback_reason::OPTIONS_VANISHED));
        // A mapping whose relative range itself wraps.
        let mut s = started(ISN);
        let start = u32::MAX - 999;
        assert_eq!(s.on_segment(&data(start, 1000, Some((start, 3000)))), None);
        assert_eq!(s.on_segment(&data(start.wrapping_add(1000), 1000, None)), None);
        assert_eq!(
            s.on_segment(&data(start.wrapping_add(3000), 1, None)),
            Some(fallback_reason::OPTIONS_VANISHED)
        );
    }

    #[test]
    fn segments_the_rule_leaves_alone_change_nothing() {
        let mapped = |s: MappingState| {
            let mut s = s;
            assert_eq!(s.on_segment(&data(1, 1000, Some((1, 3000)))), None);
            s
        };
        let states =
            [MappingState::default(), started(ISN), mapped(started(ISN)), mapped(MappingState::default())];
        let shapes =
            [(1, 0, None), (5000, 0, None), (1, 1000, Some((1, 3000))), (1001, 1000, Some((1, 3000)))];
        let mut skipped = 0;
        for state in states {
            for (established, initial) in [(false, false), (false, true), (true, false), (true, true)] {
                for (rel, len, mapping) in shapes {
                    let seg = SegmentFacts { established, initial, ..data(rel, len, mapping) };
                    if !MappingState::unchanged_by(state.map_ssn, state.map_len, false, len, mapping) {
                        continue;
                    }
                    skipped += 1;
                    let mut after = state;
                    assert_eq!(after.on_segment(&seg), None, "{state:?} {seg:?}");
                    assert_eq!(after, state, "{seg:?}");
                }
            }
        }
        assert!(skipped >= 16, "{skipped} segments skipped");
        // What the rule must see: a SYN, MP_FAIL, data without mapping, a new or infinite mapping.
        let s = mapped(started(ISN));
        assert!(!MappingState::unchanged_by(s.map_ssn, s.map_len, true, 0, None));
        assert!(!MappingState::unchanged_by(s.map_ssn, s.map_len, false, 100, None));
        assert!(!MappingState::unchanged_by(s.map_ssn, s.map_len, false, 100, Some((3001, 1000))));
        assert!(!MappingState::unchanged_by(0, 0, false, 100, Some((1, 0))));
    }

    #[test]
    fn no_data_checks_before_the_handshake_ends() {
        let mut s = started(ISN);
        let early = SegmentFacts { established: false, ..data(1, 100, None) };
        assert_eq!(s.on_segment(&early), None);
    }
}
