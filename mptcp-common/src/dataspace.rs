//! Which parts of a connection's data sequence space one direction has mapped, to tell new data
//! from data mapped again (reinjection) when subflows deliver their mappings out of order.
//!
//! A high-water mark alone would call every mapping that overtook another on a faster subflow a
//! reinjection. [`DataSpace`] keeps the mark plus the few ranges below it not mapped yet; a
//! mapping landing in such a hole is new data. Bounded for the eBPF programs: with more holes
//! than [`HOLES`], the lowest is forgotten (treated as mapped), so data arriving there later
//! counts as reinjected.

/// Holes remembered per direction.
pub const HOLES: usize = 4;

/// A range of data sequence numbers, `start..end`; empty when `start == end`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DsnRange {
    pub start: u64,
    pub end: u64,
}

impl DsnRange {
    fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// The mapped part of one direction's data sequence space.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataSpace {
    /// Everything below was mapped, but for the holes; nothing at or above was.
    pub end: u64,
    pub holes: [DsnRange; HOLES],
}

const _: () = assert!(size_of::<DataSpace>() == 8 + 16 * HOLES);

/// What a mapping added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mapped {
    /// Bytes mapped for the first time.
    pub fresh: u64,
    /// Bytes mapped before.
    pub again: u64,
}

impl DataSpace {
    /// Records the mapping of `start..end`.
    #[inline(always)]
    pub fn map(&mut self, start: u64, end: u64) -> Mapped {
        let mut mapped = Mapped::default();
        if end <= start {
            return mapped;
        }
        // Below the mark: new where it fills holes, mapped again elsewhere.
        let below = end.min(self.end);
        if start < below {
            let mut filled = 0u64;
            for i in 0..HOLES {
                let Some(&hole) = self.holes.get(i) else { break };
                let overlap = DsnRange { start: start.max(hole.start), end: below.min(hole.end) };
                if overlap.len() == 0 {
                    continue;
                }
                filled = filled.saturating_add(overlap.len());
                let right = DsnRange { start: overlap.end, end: hole.end };
                if let Some(slot) = self.holes.get_mut(i) {
                    *slot = DsnRange { start: hole.start, end: overlap.start };
                }
                self.add_hole(right);
            }
            mapped.fresh = filled;
            mapped.again = below.saturating_sub(start).saturating_sub(filled);
        }
        // Above the mark: new, leaving a hole if it skipped ahead.
        if end > self.end {
            let from = start.max(self.end);
            self.add_hole(DsnRange { start: self.end, end: from });
            mapped.fresh = mapped.fresh.saturating_add(end.saturating_sub(from));
            self.end = end;
        }
        mapped
    }

    /// Remembers a hole in a free slot, or in place of the lowest one.
    #[inline(always)]
    fn add_hole(&mut self, hole: DsnRange) {
        if hole.len() == 0 {
            return;
        }
        let mut slot = 0;
        let mut lowest = u64::MAX;
        for (i, existing) in self.holes.iter().enumerate() {
            if existing.len() == 0 {
                slot = i;
                break;
            }
            if existing.start < lowest {
                lowest = existing.start;
                slot = i;
            }
        }
        if let Some(free) = self.holes.get_mut(slot) {
            *free = hole;
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::{collections::BTreeSet, vec::Vec};

    #[test]
    fn in_order_mappings_are_fresh() {
        let mut space = DataSpace { end: 100, ..Default::default() };
        assert_eq!(space.map(100, 200), Mapped { fresh: 100, again: 0 });
        assert_eq!(space.map(200, 250), Mapped { fresh: 50, again: 0 });
        assert_eq!(space.map(150, 220), Mapped { fresh: 0, again: 70 });
    }

    #[test]
    fn a_mapping_that_overtook_another_fills_its_hole() {
        let mut space = DataSpace { end: 0, ..Default::default() };
        assert_eq!(space.map(1000, 2000), Mapped { fresh: 1000, again: 0 });
        assert_eq!(space.map(0, 1000), Mapped { fresh: 1000, again: 0 });
        assert_eq!(space.map(500, 1500), Mapped { fresh: 0, again: 1000 });
    }

    /// Exact answer for ranges starting after `base`, which the model treats as mapped below.
    fn model(base: u64, ranges: &[(u64, u64)]) -> Vec<Mapped> {
        let mut mapped: BTreeSet<u64> = BTreeSet::new();
        ranges
            .iter()
            .map(|&(s, e)| {
                let fresh = (s..e).filter(|dsn| *dsn >= base && mapped.insert(*dsn)).count() as u64;
                Mapped { fresh, again: (e - s) - fresh }
            })
            .collect()
    }

    proptest! {
        /// With at most HOLES gaps open at once it is exact; here few mappings keep it so.
        #[test]
        fn matches_the_exact_model_while_holes_fit(ranges in proptest::collection::vec((0u64..200, 1u64..40), 1..4)) {
            let ranges: Vec<(u64, u64)> = ranges.iter().map(|&(s, l)| (s, s + l)).collect();
            let mut space = DataSpace::default();
            let got: Vec<Mapped> = ranges.iter().map(|&(s, e)| space.map(s, e)).collect();
            prop_assert_eq!(got, model(0, &ranges));
        }

        #[test]
        fn never_loses_or_invents_bytes(ranges in proptest::collection::vec((0u64..1000, 1u64..100), 1..40)) {
            let mut space = DataSpace::default();
            for (s, l) in ranges {
                let mapped = space.map(s, s + l);
                prop_assert_eq!(mapped.fresh + mapped.again, l);
            }
        }
    }
}
