//! Cubic subflows keep cubic (RFC 9438) and are coupled through the window like Reno ones; the
//! coupling algorithm's increase and decrease, taken relative to Reno's, scale cubic's own.
//!
//! Per acknowledged packet, one cubic flow grows its window by (W_cubic(t + RTT) - cwnd) / cwnd,
//! the target bounded to [cwnd, 1.5 cwnd] (RFC 9438 section 4.2), or by the Reno-friendly
//! alpha_cubic / cwnd when that is more (section 4.3); on a loss it removes 1 - beta_cubic = 30%.
//! A coupled cubic subflow grows by that times `increase * cwnd`, the coupling's share of what
//! one Reno flow on the path would get (LIA: min(alpha cwnd_i / cwnd_total, 1)), and removes 30%
//! times the coupling's decrease over Reno's 50%. No RFC couples cubic; this rule is the
//! project's own. In cubic's Reno-friendly region, where a 20 Mbit/s path with a short RTT
//! stays, it is LIA with cubic's increase and decrease in place of Reno's, so the connection
//! takes what one cubic flow would; in the cubic region each subflow follows its own curve,
//! scaled by its share.

use mptcp_common::cc::CcSubflow;

use super::Decision;

/// RFC 9438's C (packets / s^3) and beta_cubic.
const C: f64 = 0.4;
const BETA: f64 = 0.7;
/// RFC 9438's alpha_cubic, the Reno-friendly increase per RTT: 3 (1 - beta) / (1 + beta).
const ALPHA: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);
/// Reno's decrease, which the coupling algorithms' decreases are relative to.
const RENO_DECREASE: f64 = 0.5;

/// The congestion-avoidance epoch since a cubic subflow's last loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epoch {
    /// The subflow's loss count when the epoch started.
    loss_events: u32,
    started_ns: u64,
    /// W_max, packets.
    w_max: f64,
}

impl Epoch {
    /// The epoch `subflow`'s latest state is in, given the one before: a new one when its loss
    /// count moved (dated by the ACK that reported it, at most `CC_NOTIFY_NS` late); none before
    /// the first loss, while the kernel's slow start runs.
    pub fn follow(previous: Option<Epoch>, subflow: &CcSubflow) -> Option<Epoch> {
        if subflow.loss_events == 0 {
            return None;
        }
        if let Some(previous) = previous.filter(|e| e.loss_events == subflow.loss_events) {
            return Some(previous);
        }
        let window = f64::from(subflow.window_at_loss);
        // Fast convergence (section 4.7): a window that lost below the last W_max releases
        // some of its share.
        let w_max = match previous {
            Some(previous) if window < previous.w_max => window * (1.0 + BETA) / 2.0,
            _ => window,
        };
        Some(Epoch { loss_events: subflow.loss_events, started_ns: subflow.updated_ns, w_max })
    }
}

/// The decision of a cubic subflow with window `cwnd` (packets) and smoothed RTT `srtt_us`,
/// from the coupling algorithm's decision `coupled` for it.
pub fn shape(coupled: Decision, cwnd: f64, srtt_us: u32, epoch: Option<&Epoch>, now_ns: u64) -> Decision {
    let cwnd = cwnd.max(1.0);
    let curve = epoch.map_or(0.0, |epoch| {
        let t = now_ns.saturating_sub(epoch.started_ns) as f64 / 1e9 + f64::from(srtt_us) / 1e6;
        let k = (epoch.w_max * (1.0 - BETA) / C).cbrt();
        let target = (C * (t - k).powi(3) + epoch.w_max).clamp(cwnd, 1.5 * cwnd);
        (target - cwnd) / cwnd
    });
    let reno_share = coupled.increase * cwnd;
    Decision {
        increase: reno_share * curve.max(ALPHA / cwnd),
        decrease: coupled.decrease * (1.0 - BETA) / RENO_DECREASE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn lost(loss_events: u32, window_at_loss: u32, updated_ns: u64) -> CcSubflow {
        CcSubflow { loss_events, window_at_loss, updated_ns, ..CcSubflow::default() }
    }

    #[test]
    fn an_epoch_starts_at_each_new_loss_and_converges_fast_below_the_last_maximum() {
        assert_eq!(Epoch::follow(None, &CcSubflow::default()), None);
        let first = Epoch::follow(None, &lost(1, 100, 5)).unwrap();
        assert_eq!(first, Epoch { loss_events: 1, started_ns: 5, w_max: 100.0 });
        // The same loss count later: the same epoch.
        assert_eq!(Epoch::follow(Some(first), &lost(1, 100, 9)), Some(first));
        // Lost again below 100: W_max = 80 * 1.7 / 2.
        let second = Epoch::follow(Some(first), &lost(2, 80, 20)).unwrap();
        assert!(close(second.w_max, 68.0) && second.started_ns == 20, "{second:?}");
        // Above it: the window itself.
        assert!(close(Epoch::follow(Some(second), &lost(3, 90, 30)).unwrap().w_max, 90.0));
    }

    #[test]
    fn alone_on_its_path_it_grows_as_one_cubic_flow() {
        // One path: LIA's increase is Reno's, 1 / cwnd; its decrease Reno's.
        let reno = Decision { increase: 1.0 / 21.0, decrease: 0.5 };
        // Just after a loss from W_max = 30 to 21: K = (30 * 0.3 / 0.4)^(1/3) = 2.82 s, and in
        // one 10 ms RTT the curve grows 0.1 packet, less than Reno-friendly alpha_cubic.
        let small = Epoch { loss_events: 1, started_ns: 0, w_max: 30.0 };
        let d = shape(reno, 21.0, 10_000, Some(&small), 0);
        assert!(close(d.increase, ALPHA / 21.0) && close(d.decrease, 0.3), "{d:?}");
        let epoch = Epoch { w_max: 1000.0, ..small };
        // 20 s on, past K: W_cubic(20.01) = 0.4 * 10.92^3 + 1000 = 1521, bounded to 1.5 cwnd.
        let reno = Decision { increase: 1.0 / 700.0, decrease: 0.5 };
        let d = shape(reno, 700.0, 10_000, Some(&epoch), 20_000_000_000);
        assert!(close(d.increase, 0.5), "{d:?}");
        // At K the curve is flat at W_max: a window of 990 grows by 10 / 990 per packet (more
        // than alpha_cubic / 990), up to the RTT's bit of the curve.
        let at_k = ((1000.0f64 * 0.3 / 0.4).cbrt() * 1e9) as u64;
        let d = shape(Decision { increase: 1.0 / 990.0, decrease: 0.5 }, 990.0, 0, Some(&epoch), at_k);
        assert!((d.increase - 10.0 / 990.0).abs() < 1e-6, "{d:?}");
    }

    #[test]
    fn a_coupled_subflow_takes_its_share_of_the_cubic_increase() {
        // LIA gave a quarter of Reno's increase on a 40-packet window; BALIA-like 0.75 decrease.
        let coupled = Decision { increase: 0.25 / 40.0, decrease: 0.75 };
        let d = shape(coupled, 40.0, 10_000, None, 0);
        assert!(close(d.increase, 0.25 * ALPHA / 40.0), "{d:?}");
        assert!(close(d.decrease, 0.45), "{d:?}");
    }
}
