//! Coupled congestion control: LIA (RFC 6356), OLIA and BALIA over the subflows of each MPTCP
//! connection, computed from what the sock_ops program records and written as per-subflow
//! decisions that the program applies on every ACK (see `mptcp_common::cc`).
//!
//! The per-ACK arithmetic stays in the kernel, so the window follows every ACK whatever the RTT;
//! the controller only refreshes the coupling factors, which change with the ratios of the
//! subflows' windows and RTTs, every few milliseconds.

mod controller;
mod cubic;
mod shared_bottleneck;

pub use controller::Controller;

use aya::maps::{HashMap, MapData, MapError};
use mptcp_common::{
    cc::{
        CC_DECISIONS_MAP, CC_SUBFLOWS_MAP, CcDecision, CcSubflow, DECREASE_SHIFT, INCREASE_SHIFT, STALE_NS,
        UNLIMITED_PACING, algorithm, model,
    },
    maps::FlowKey,
};
use serde::Serialize;

use crate::{
    bpf::{Instance, LoaderError, maps},
    dataplane::tables::{Token, ip},
};

/// A subflow that has not been acknowledged for this long is left out of its connection's sums.
const IDLE_NS: u64 = 500_000_000;
/// Entries of subflows silent for this long are removed (closed sockets normally remove their
/// own).
const FORGET_NS: u64 = 60_000_000_000;

/// The coupling algorithm (`--cc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Record the subflows' windows and RTTs; leave the kernel's congestion control alone.
    None,
    /// RFC 6356 Linked Increases.
    Lia,
    /// Opportunistic Linked Increases (Khalili et al., 2012).
    Olia,
    /// Balanced Linked Adaptation (Peng et al., 2016).
    Balia,
}

impl Algorithm {
    pub fn code(self) -> u32 {
        match self {
            Self::None => algorithm::NONE,
            Self::Lia => algorithm::LIA,
            Self::Olia => algorithm::OLIA,
            Self::Balia => algorithm::BALIA,
        }
    }

    fn name(code: u32) -> &'static str {
        match code {
            algorithm::LIA => "lia",
            algorithm::OLIA => "olia",
            algorithm::BALIA => "balia",
            _ => "none",
        }
    }
}

/// One subflow as the algorithms see it.
#[derive(Debug, Clone, Copy)]
pub struct Path {
    /// Congestion window, packets.
    pub cwnd: f64,
    /// Smoothed RTT (any unit, the same for every path).
    pub rtt: f64,
    /// Bytes acknowledged between its last two losses (OLIA).
    pub interloss: f64,
}

/// What one subflow's window does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Window change per acknowledged packet, packets.
    pub increase: f64,
    /// Fraction of the window removed on a loss.
    pub decrease: f64,
}

/// The decisions for a connection's subflows, in order.
pub fn decide(algorithm: Algorithm, paths: &[Path]) -> Vec<Decision> {
    if paths.iter().any(|p| !(p.cwnd > 0.0 && p.rtt > 0.0)) {
        // Not measurable yet: each behaves like one Reno flow.
        return paths.iter().map(|p| Decision { increase: 1.0 / p.cwnd.max(1.0), decrease: 0.5 }).collect();
    }
    match algorithm {
        Algorithm::None | Algorithm::Lia => lia(paths),
        Algorithm::Olia => olia(paths),
        Algorithm::Balia => balia(paths),
    }
}

/// RFC 6356: alpha = cwnd_total * max(cwnd_i / rtt_i^2) / (sum cwnd_i / rtt_i)^2; per acked
/// packet on i: min(alpha / cwnd_total, 1 / cwnd_i); Reno's halving on loss.
fn lia(paths: &[Path]) -> Vec<Decision> {
    let total: f64 = paths.iter().map(|p| p.cwnd).sum();
    let rate: f64 = paths.iter().map(|p| p.cwnd / p.rtt).sum();
    let best = paths.iter().map(|p| p.cwnd / (p.rtt * p.rtt)).fold(0.0, f64::max);
    let alpha = total * best / (rate * rate);
    paths.iter().map(|p| Decision { increase: (alpha / total).min(1.0 / p.cwnd), decrease: 0.5 }).collect()
}

/// OLIA: per acked packet on r: (w_r / rtt_r^2) / (sum w_p / rtt_p)^2 + eps_r / w_r, where eps
/// moves window from the largest-window paths (M) to the best paths that are not among them
/// (B \ M; best: largest inter-loss distance / rtt^2); Reno's halving on loss.
fn olia(paths: &[Path]) -> Vec<Decision> {
    let n = paths.len() as f64;
    let rate: f64 = paths.iter().map(|p| p.cwnd / p.rtt).sum();
    let max_cwnd = paths.iter().map(|p| p.cwnd).fold(0.0, f64::max);
    let quality = |p: &Path| p.interloss / (p.rtt * p.rtt);
    let best = paths.iter().map(quality).fold(0.0, f64::max);
    let in_m = |p: &Path| p.cwnd >= max_cwnd;
    // Equal within a relative 1e-9: the kernel compares integers, floats need a tolerance.
    let is_best = |p: &Path| quality(p) >= best * (1.0 - 1e-9);
    let m = paths.iter().filter(|p| in_m(p)).count() as f64;
    let best_not_m = paths.iter().filter(|p| is_best(p) && !in_m(p)).count() as f64;
    paths
        .iter()
        .map(|p| {
            let epsilon = if best_not_m == 0.0 {
                0.0
            } else if is_best(p) && !in_m(p) {
                1.0 / (n * best_not_m)
            } else if in_m(p) {
                -1.0 / (n * m)
            } else {
                0.0
            };
            Decision { increase: p.cwnd / (p.rtt * p.rtt) / (rate * rate) + epsilon / p.cwnd, decrease: 0.5 }
        })
        .collect()
}

/// BALIA: x_r = w_r / rtt_r, a_r = max x / x_r; per acked packet on r:
/// (x_r / rtt_r) / (sum x)^2 * (1 + a_r) / 2 * (4 + a_r) / 5; on loss w_r / 2 * min(a_r, 1.5).
fn balia(paths: &[Path]) -> Vec<Decision> {
    let rates: Vec<f64> = paths.iter().map(|p| p.cwnd / p.rtt).collect();
    let total: f64 = rates.iter().sum();
    let best = rates.iter().copied().fold(0.0, f64::max);
    paths
        .iter()
        .zip(&rates)
        .map(|(p, x)| {
            let a = best / x;
            Decision {
                increase: x / p.rtt / (total * total) * (1.0 + a) / 2.0 * (4.0 + a) / 5.0,
                decrease: a.min(1.5) / 2.0,
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CongestionError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> CongestionError {
    move |source| CongestionError::Map { name, source }
}

/// A delete of an entry that may be gone already (evicted, or never decided for).
fn forget(removed: Result<(), MapError>) -> Result<(), MapError> {
    match removed {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

type SubflowTable = HashMap<MapData, FlowKey, CcSubflow>;
type DecisionTable = HashMap<MapData, FlowKey, CcDecision>;

/// The instance's CC_SUBFLOWS and CC_DECISIONS.
fn open_tables(instance: &Instance) -> Result<(SubflowTable, DecisionTable), CongestionError> {
    Ok((
        HashMap::try_from(instance.open_map(CC_SUBFLOWS_MAP)?).map_err(map_error(CC_SUBFLOWS_MAP))?,
        HashMap::try_from(instance.open_map(CC_DECISIONS_MAP)?).map_err(map_error(CC_DECISIONS_MAP))?,
    ))
}

fn path_of(subflow: &CcSubflow) -> Path {
    // The coupled window once there is one; before, the kernel's.
    let cwnd = if subflow.clamp != 0 { subflow.clamp } else { subflow.snd_cwnd };
    Path {
        cwnd: f64::from(cwnd),
        rtt: f64::from(subflow.srtt_us),
        interloss: subflow.interloss_bytes() as f64,
    }
}

fn encode(algorithm: Algorithm, decision: Decision, now_ns: u64) -> CcDecision {
    CcDecision {
        algorithm: algorithm.code(),
        decrease: (decision.decrease.clamp(0.0, 1.0) * f64::from(1u32 << DECREASE_SHIFT)) as u32,
        increase: (decision.increase.clamp(-16.0, 16.0) * (1u64 << INCREASE_SHIFT) as f64) as i64,
        updated_ns: now_ns,
        pacing_cap: UNLIMITED_PACING,
        _pad: 0,
    }
}

/// A paced subflow's decision: its cap only.
fn encode_pacing(algorithm: Algorithm, cap: u32, now_ns: u64) -> CcDecision {
    CcDecision { algorithm: algorithm.code(), pacing_cap: cap, updated_ns: now_ns, ..CcDecision::default() }
}

/// One subflow's congestion state and decision, for `conns`.
#[derive(Debug, Clone, Serialize)]
pub struct SubflowCc {
    pub token: Token,
    /// The subflow's two ends (in the tracking tables' order).
    pub ends: [std::net::SocketAddr; 2],
    pub cwnd: u32,
    pub ssthresh: u32,
    pub srtt_us: u32,
    pub coupled_cwnd: Option<u32>,
    /// `window` (switched to Reno, coupled through its window), `cubic` (cubic kept, coupled
    /// through its window along cubic's curve) or `paced` (BBR, coupled through its pacing
    /// rate).
    pub coupling: &'static str,
    /// A paced subflow's pacing cap in force, bytes/s (none: uncapped).
    pub pacing_cap: Option<u32>,
    pub loss_events: u32,
    /// Losses merged into a congestion event another subflow of the connection began: they
    /// took no decrease (see `mptcp_common::cc`).
    pub merged_losses: u32,
    pub total_retrans: u32,
    pub bytes_acked: u64,
    /// The decision in force: its algorithm, increase per acked packet and decrease on loss.
    pub algorithm: &'static str,
    pub increase: Option<f64>,
    pub decrease: Option<f64>,
    pub decision_age_ms: Option<f64>,
    /// Whether the decision is fresh enough for the program to apply ([`STALE_NS`]); a stale
    /// one leaves the subflow as one uncoupled flow.
    pub current: bool,
}

/// Every subflow the sock_ops program follows, with the decision in force.
pub fn snapshot(instance: &Instance) -> Result<Vec<SubflowCc>, CongestionError> {
    let (subflows, decisions) = open_tables(instance)?;
    let now = monotonic_ns();
    let mut views: Vec<SubflowCc> = maps::entries(&subflows)
        .map_err(map_error(CC_SUBFLOWS_MAP))?
        .into_iter()
        .map(|(key, s)| {
            let decision = maps::lookup(&decisions, &key)
                .map_err(map_error(CC_DECISIONS_MAP))?
                .filter(|d| d.algorithm != algorithm::NONE);
            let fresh = decision.filter(|d| now.saturating_sub(d.updated_ns) < STALE_NS);
            // A paced subflow's decision is its cap alone.
            let window = fresh.filter(|_| s.model != model::PACED);
            Ok(SubflowCc {
                token: Token(s.token),
                ends: [
                    std::net::SocketAddr::new(ip(key.family, key.addr_a), key.port_a),
                    std::net::SocketAddr::new(ip(key.family, key.addr_b), key.port_b),
                ],
                cwnd: s.snd_cwnd,
                ssthresh: s.ssthresh,
                srtt_us: s.srtt_us,
                coupled_cwnd: (s.clamp != 0).then_some(s.clamp),
                coupling: match s.model {
                    model::PACED => "paced",
                    model::CUBIC => "cubic",
                    _ => "window",
                },
                pacing_cap: (s.pacing_cap != 0 && s.pacing_cap != UNLIMITED_PACING).then_some(s.pacing_cap),
                loss_events: s.loss_events,
                merged_losses: s.merged_losses,
                total_retrans: s.total_retrans,
                bytes_acked: s.bytes_acked,
                algorithm: Algorithm::name(decision.map_or(algorithm::NONE, |d| d.algorithm)),
                increase: window.map(|d| d.increase as f64 / (1u64 << INCREASE_SHIFT) as f64),
                decrease: window.map(|d| f64::from(d.decrease) / f64::from(1u32 << DECREASE_SHIFT)),
                decision_age_ms: decision.map(|d| now.saturating_sub(d.updated_ns) as f64 / 1e6),
                current: fresh.is_some(),
            })
        })
        .collect::<Result<_, CongestionError>>()?;
    views.sort_by_key(|view| view.token);
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn paths(cwnd: [f64; 2], rtt: [f64; 2], interloss: [f64; 2]) -> Vec<Path> {
        (0..2).map(|i| Path { cwnd: cwnd[i], rtt: rtt[i], interloss: interloss[i] }).collect()
    }

    #[test]
    fn lia_hand_computed() {
        // w = 10, 20 packets; rtt = 10, 20 ms: w/rtt = 1000, 1000; w/rtt^2 = 1e5, 5e4;
        // alpha = 30 * 1e5 / 2000^2 = 0.75; increase min(0.75 / 30, 1 / w_i) = 0.025 on both.
        let d = decide(Algorithm::Lia, &paths([10.0, 20.0], [0.01, 0.02], [0.0; 2]));
        assert!(close(d[0].increase, 0.025) && close(d[1].increase, 0.025), "{d:?}");
        assert!(d.iter().all(|d| d.decrease == 0.5));
    }

    #[test]
    fn lia_is_capped_at_what_reno_would_do_on_the_path() {
        // w = 10, 1; rtt = 1 s, 1 ms: w/rtt = 10, 1000; max w/rtt^2 = 1e6;
        // alpha = 11 * 1e6 / 1010^2 = 10.78; alpha / 11 = 0.98: capped at 1/10 on the first path.
        let d = decide(Algorithm::Lia, &paths([10.0, 1.0], [1.0, 0.001], [0.0; 2]));
        let alpha = 11.0 * 1e6 / (1010.0 * 1010.0);
        assert!(close(d[0].increase, 0.1), "{d:?}");
        assert!(close(d[1].increase, alpha / 11.0), "{d:?}");
    }

    #[test]
    fn every_algorithm_is_reno_on_a_single_path() {
        for algorithm in [Algorithm::Lia, Algorithm::Olia, Algorithm::Balia] {
            let d = decide(algorithm, &[Path { cwnd: 20.0, rtt: 0.05, interloss: 1e6 }]);
            assert!(close(d[0].increase, 1.0 / 20.0) && close(d[0].decrease, 0.5), "{algorithm:?}: {d:?}");
        }
    }

    #[test]
    fn olia_hand_computed() {
        // Equal RTTs, w = 10, 20; path 0 has the longer inter-loss distance: best = {0},
        // M = {1}, B \ M = {0}; eps = +1/2 on 0, -1/2 on 1.
        // increase_0 = 10/30^2 + 0.5/10 = 0.0611..; increase_1 = 20/30^2 - 0.5/20 = -0.00277..
        let d = decide(Algorithm::Olia, &paths([10.0, 20.0], [0.01, 0.01], [1e6, 1e5]));
        assert!(close(d[0].increase, 10.0 / 900.0 + 0.05), "{d:?}");
        assert!(close(d[1].increase, 20.0 / 900.0 - 0.025), "{d:?}");
        // When the best path also has the largest window, OLIA is plain coupled increase.
        let d = decide(Algorithm::Olia, &paths([10.0, 20.0], [0.01, 0.01], [1e5, 1e6]));
        assert!(close(d[0].increase, 10.0 / 900.0) && close(d[1].increase, 20.0 / 900.0), "{d:?}");
    }

    #[test]
    fn balia_hand_computed() {
        // w = 10, 10; rtt = 10, 20 ms: x = 1000, 500; a = 1, 2; (sum x)^2 = 2.25e6.
        // increase_0 = (1000/0.01)/2.25e6 * 1 * 1 = 0.0444..; increase_1 = (500/0.02)/2.25e6 *
        // 1.5 * 1.2 = 0.02; decrease 0.5 and min(2, 1.5)/2 = 0.75.
        let d = decide(Algorithm::Balia, &paths([10.0, 10.0], [0.01, 0.02], [0.0; 2]));
        assert!(close(d[0].increase, 1e5 / 2.25e6), "{d:?}");
        assert!(close(d[1].increase, 0.02), "{d:?}");
        assert!(close(d[0].decrease, 0.5) && close(d[1].decrease, 0.75), "{d:?}");
    }

    #[test]
    fn two_equal_paths_together_grow_like_one_flow_at_most() {
        // The design goal: a connection's total increase per RTT is no more than one Reno
        // flow's (1 packet) on its best path. Per RTT path i acks w_i packets.
        for algorithm in [Algorithm::Lia, Algorithm::Olia, Algorithm::Balia] {
            let p = paths([20.0, 20.0], [0.01, 0.01], [1e6, 1e6]);
            let total: f64 = decide(algorithm, &p).iter().zip(&p).map(|(d, p)| d.increase * p.cwnd).sum();
            assert!(total <= 1.0 + 1e-9, "{algorithm:?}: {total} packets per RTT");
        }
    }

    #[test]
    fn decisions_encode_in_the_shared_fixed_point() {
        let d = encode(Algorithm::Olia, Decision { increase: -0.25, decrease: 0.75 }, 7);
        assert_eq!(d.increase, -(1i64 << (INCREASE_SHIFT - 2)));
        assert_eq!(d.decrease, 3 << (DECREASE_SHIFT - 2));
        assert_eq!((d.algorithm, d.updated_ns), (algorithm::OLIA, 7));
    }
}
