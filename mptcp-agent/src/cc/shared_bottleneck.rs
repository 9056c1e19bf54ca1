//! Coupling of paced (BBR) subflows: shared-bottleneck detection and pacing caps.
//!
//! BBR does not answer loss with its window, so a coupled window cannot couple it. Instead, two
//! subflows of one connection whose smoothed RTTs rise and fall together are taken to queue at
//! one bottleneck (the idea of RFC 8382's shared-bottleneck detection, on RTTs, which is what the
//! sock_ops program sees, instead of one-way delays), and each such group is made to take what
//! one flow would (the goal of RFC 6356, section 2): the group's fastest subflow runs uncapped
//! and every other one is capped at a trickle that keeps its RTT samples coming. Subflows alone on their bottleneck run
//! uncapped. A false grouping undoes itself: a capped subflow alone on its path empties its own
//! queue, its RTT goes flat, and a flat RTT correlates with nothing.

use std::collections::VecDeque;

use mptcp_common::cc::UNLIMITED_PACING;

/// RTT samples kept per subflow, and the span they are compared over.
pub const WINDOW_NS: u64 = 3_000_000_000;
/// Samples are compared bin by bin (each bin's last sample): the two subflows' ACKs do not
/// arrive at the same instants.
const BIN_NS: u64 = 50_000_000;
/// Bins both subflows must have a sample in for a verdict.
const MIN_BINS: usize = 30;
/// Correlation above which two subflows are taken to share a bottleneck once it has held for
/// [`JOIN_AFTER_NS`], and below which they no longer are: apart, so that a pair near one value
/// does not flap, and held, because unrelated RTTs correlate now and then by chance.
const JOIN: f64 = 0.7;
const JOIN_AFTER_NS: u64 = 1_000_000_000;
const LEAVE: f64 = 0.3;
/// An RTT whose standard deviation is below this (us) shows no queue that moves.
const MIN_SPREAD_US: f64 = 200.0;
/// A capped subflow's share of its group's fastest subflow's rate, and its floor (bytes/s).
const TRICKLE: f64 = 0.2;
const MIN_CAP: f64 = 12_500.0;

/// One subflow's recent RTT and acknowledged bytes, as the program reported them.
#[derive(Debug, Default, Clone)]
pub struct RttHistory {
    /// (time ns, smoothed RTT us, bytes acknowledged), oldest first.
    samples: VecDeque<(u64, u32, u64)>,
}

impl RttHistory {
    pub fn record(&mut self, now_ns: u64, srtt_us: u32, bytes_acked: u64) {
        if self.samples.back().is_some_and(|&(at, ..)| at >= now_ns) {
            return;
        }
        self.samples.push_back((now_ns, srtt_us, bytes_acked));
        while self.samples.front().is_some_and(|&(at, ..)| now_ns.saturating_sub(at) > WINDOW_NS) {
            self.samples.pop_front();
        }
    }

    /// Bytes acknowledged per second over the samples kept.
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(first, _, from)), Some(&(last, _, to))) if last > first => {
                to.saturating_sub(from) as f64 * 1e9 / (last - first) as f64
            }
            _ => 0.0,
        }
    }

    /// The last RTT of each bin of the window ending at `now_ns`: what [`correlation`] compares,
    /// computed once per subflow for all its pairs.
    pub fn bins(&self, now_ns: u64) -> Vec<Option<f64>> {
        let count = (WINDOW_NS / BIN_NS) as usize;
        let start = now_ns.saturating_sub(WINDOW_NS);
        let mut bins = vec![None; count];
        for &(at, srtt, _) in &self.samples {
            if let Some(bin) = bins.get_mut((at.saturating_sub(start) / BIN_NS) as usize) {
                *bin = Some(f64::from(srtt));
            }
        }
        bins
    }
}

/// Pearson correlation of two subflows' binned RTTs ([`RttHistory::bins`] of one window);
/// `None` when too few bins hold a sample of both, 0 when either RTT is flat.
pub fn correlation(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    let pairs: Vec<(f64, f64)> = a.iter().zip(b).filter_map(|(x, y)| Some(((*x)?, (*y)?))).collect();
    if pairs.len() < MIN_BINS {
        return None;
    }
    let n = pairs.len() as f64;
    let (mean_x, mean_y) =
        (pairs.iter().map(|p| p.0).sum::<f64>() / n, pairs.iter().map(|p| p.1).sum::<f64>() / n);
    let (mut cov, mut var_x, mut var_y) = (0.0, 0.0, 0.0);
    for (x, y) in &pairs {
        cov += (x - mean_x) * (y - mean_y);
        var_x += (x - mean_x) * (x - mean_x);
        var_y += (y - mean_y) * (y - mean_y);
    }
    let floor = MIN_SPREAD_US * MIN_SPREAD_US * n;
    if var_x < floor || var_y < floor {
        return Some(0.0);
    }
    Some(cov / (var_x * var_y).sqrt())
}

/// Whether a pair of subflows shares a bottleneck, from the correlations of its RTTs so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    pub shared: bool,
    /// While not shared: since when the correlation has stayed above [`JOIN`].
    above_since_ns: Option<u64>,
}

impl Sharing {
    /// Takes in the correlation at `now_ns` (`None`: no verdict, nothing changes).
    pub fn update(&mut self, correlation: Option<f64>, now_ns: u64) {
        let Some(correlation) = correlation else { return };
        if self.shared {
            if correlation <= LEAVE {
                *self = Self::default();
            }
        } else if correlation > JOIN {
            let since = *self.above_since_ns.get_or_insert(now_ns);
            if now_ns.saturating_sub(since) >= JOIN_AFTER_NS {
                *self = Self { shared: true, above_since_ns: None };
            }
        } else {
            self.above_since_ns = None;
        }
    }
}

/// The pacing cap (bytes/s, [`UNLIMITED_PACING`] for none) of each of a connection's paced
/// subflows, given their rates and which pairs share a bottleneck: in each group of subflows
/// linked by sharing, the fastest (the first of equals) runs uncapped and the others at
/// [`TRICKLE`] of its rate.
pub fn pacing_caps(rates: &[f64], shared: impl Fn(usize, usize) -> bool) -> Vec<u32> {
    // Groups as the smallest index reachable (few subflows: a plain fixpoint is enough).
    let mut group: Vec<usize> = (0..rates.len()).collect();
    let mut changed = true;
    while changed {
        changed = false;
        for i in 0..rates.len() {
            for j in i + 1..rates.len() {
                let least = group[i].min(group[j]);
                if shared(i, j) && (group[i] != least || group[j] != least) {
                    (group[i], group[j]) = (least, least);
                    changed = true;
                }
            }
        }
    }
    (0..rates.len())
        .map(|i| {
            let fastest = (0..rates.len()).filter(|&j| group[j] == group[i]).fold(i, |best, j| {
                if rates[j] > rates[best] || (rates[j] == rates[best] && j < best) { j } else { best }
            });
            if fastest == i {
                UNLIMITED_PACING
            } else {
                (rates[fastest] * TRICKLE).max(MIN_CAP).min(f64::from(UNLIMITED_PACING - 1)) as u32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 10 * WINDOW_NS;

    /// A history sampled every 10 ms over the window, RTT `rtt(t)` at t ms.
    fn history(rtt: impl Fn(u64) -> u32, bytes_per_ms: u64) -> RttHistory {
        let mut h = RttHistory::default();
        for ms in (0..WINDOW_NS / 1_000_000).step_by(10) {
            h.record(NOW - WINDOW_NS + ms * 1_000_000, rtt(ms), ms * bytes_per_ms);
        }
        h
    }

    /// A queue that fills and drains with a 400 ms period, 1-9 ms deep.
    fn queue(ms: u64) -> u32 {
        1_000 + ((ms % 400) * 40) as u32
    }

    #[test]
    fn rtts_that_move_together_correlate_and_flat_or_unrelated_ones_do_not() {
        let a = history(|ms| 2_000 + queue(ms), 10);
        let b = history(|ms| 3_000 + queue(ms), 1);
        assert!(correlation(&a.bins(NOW), &b.bins(NOW)).unwrap() > 0.99);
        // Half a period apart: the other's queue drains while this one's fills.
        let c = history(|ms| 2_000 + queue(ms + 200), 1);
        assert!(correlation(&a.bins(NOW), &c.bins(NOW)).unwrap() < 0.0);
        let flat = history(|_| 2_000, 1);
        assert_eq!(correlation(&a.bins(NOW), &flat.bins(NOW)), Some(0.0));
        // Too few samples in common: no verdict.
        let short = {
            let mut h = RttHistory::default();
            h.record(NOW - 100_000_000, 2_000, 0);
            h.record(NOW, 3_000, 10);
            h
        };
        assert_eq!(correlation(&a.bins(NOW), &short.bins(NOW)), None);
    }

    #[test]
    fn history_keeps_the_window_and_measures_its_rate() {
        let h = history(|_| 1_000, 10);
        let first = h.samples.front().unwrap().0;
        assert!(NOW - first <= WINDOW_NS);
        // 10 bytes per ms.
        assert!((h.rate() - 10_000.0).abs() < 1e-6);
    }

    #[test]
    fn sharing_starts_after_a_held_high_correlation_and_ends_at_a_low_one() {
        let second = 1_000_000_000;
        let mut pair = Sharing::default();
        pair.update(Some(0.9), 0);
        pair.update(Some(0.9), second / 2);
        assert!(!pair.shared);
        // A dip restarts the wait.
        pair.update(Some(0.5), second * 3 / 4);
        pair.update(Some(0.9), second);
        pair.update(Some(0.9), 2 * second - 1);
        assert!(!pair.shared);
        pair.update(Some(0.8), 2 * second);
        assert!(pair.shared);
        // Shared: only a low correlation ends it; no verdict changes nothing.
        pair.update(Some(0.5), 3 * second);
        pair.update(None, 4 * second);
        assert!(pair.shared);
        pair.update(Some(0.2), 5 * second);
        assert_eq!(pair, Sharing::default());
    }

    #[test]
    fn a_group_runs_its_fastest_subflow_uncapped_and_trickles_the_rest() {
        // 0 and 2 share; 1 is alone.
        let caps = pacing_caps(&[1e6, 5e5, 2e6], |i, j| (i, j) == (0, 2));
        assert_eq!(caps, [400_000, UNLIMITED_PACING, UNLIMITED_PACING]);
        // Nobody shares: nobody is capped. Equal rates: the first is the fastest; the floor.
        assert_eq!(pacing_caps(&[1e6, 1e6], |_, _| false), [UNLIMITED_PACING; 2]);
        assert_eq!(pacing_caps(&[1e4, 1e4], |_, _| true), [UNLIMITED_PACING, 12_500]);
        // Linked through a third: one group.
        let caps = pacing_caps(&[1e6, 3e6, 2e6], |i, j| (i, j) == (0, 2) || (i, j) == (1, 2));
        assert_eq!(caps, [600_000, UNLIMITED_PACING, 600_000]);
    }
}
