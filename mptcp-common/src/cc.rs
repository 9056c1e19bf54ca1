//! Coupled congestion control: the per-subflow state the sock_ops program keeps, the decisions
//! the agent's controller writes, and the per-ACK window arithmetic that applies them.
//!
//! The agent computes, per subflow and every few milliseconds, how much the window may grow per
//! acknowledged packet and how much it drops on a loss (LIA, OLIA or BALIA over the connection's
//! subflows). The program applies that on every ACK to its own copy of the window - the
//! *coupled window* - and enforces it with `TCP_BPF_SNDCWND_CLAMP`, which caps the kernel's
//! window and sets its slow-start threshold: the kernel's window follows the coupled one up to
//! the cap, and the kernel's own loss response (a lower ssthresh) is what tells the program a loss
//! happened.
//!
//! Cubic subflows keep cubic under the same clamp: the kernel's cubic grows up to the coupled
//! window, and the controller shapes the coupled increase along cubic's curve (RFC 9438) and
//! takes cubic's decrease.
//!
//! A tail-drop queue drops from every flow through it in one overflow, so the subflows of one
//! connection that share it see their losses within about one RTT of each other. LIA, OLIA and
//! BALIA are designed for losses that hit one subflow at a time (RFC 6356 sizes the increase so
//! that a connection whose subflows each halve on their own losses takes one flow's share); a
//! connection halving every subflow in each overflow takes less. So, as TCP makes one reduction
//! of all the losses in one window of data (RFC 6582), the program makes one of all a
//! connection's losses within one RTT of the first ([`CcCongestion`]): the subflow that lost
//! first takes its decrease, the others keep their windows. This rule is ours, not the RFC's.
//!
//! BBR subflows keep BBR, which does not answer loss with its window: the controller groups a
//! connection's BBR subflows that share a bottleneck (their RTTs move together) and caps the
//! pacing rate of all but one of each group (`SO_MAX_PACING_RATE`), so that the group takes what
//! one flow would.

/// Map names.
pub const CC_SUBFLOWS_MAP: &str = "CC_SUBFLOWS";
pub const CC_DECISIONS_MAP: &str = "CC_DECISIONS";
pub const CC_EVENTS_MAP: &str = "CC_EVENTS";
pub const CC_CONGESTION_MAP: &str = "CC_CONGESTION";
pub const MAX_CC_SUBFLOWS: usize = 16384;
/// Size of the ring buffer of [`CcEvent`]s: about 8,700 events, 1.7 million a second at the
/// controller's 5 ms drain.
pub const CC_EVENTS_BYTES: usize = 1 << 20;
/// A subflow's state is sent to the controller at most this often: what the controller needs
/// is the latest state of every active subflow within a tick, not every ACK.
pub const CC_NOTIFY_NS: u64 = 5_000_000;

/// Fixed point of the coupled window: packets << 16.
pub const CWND_SHIFT: u32 = 16;
/// Fixed point of the increase per acknowledged packet: packets << 32.
pub const INCREASE_SHIFT: u32 = 32;
/// Fixed point of the decrease on a loss: fraction of the window << 16.
pub const DECREASE_SHIFT: u32 = 16;
/// Reno's halving, used for LIA and OLIA and when decisions are stale.
pub const HALF: u32 = 1 << (DECREASE_SHIFT - 1);
/// The coupled window never goes below this many packets.
pub const MIN_CWND: u64 = 2;
/// A decision older than this is ignored: the subflow behaves like one Reno flow (safe when the
/// agent has stopped).
pub const STALE_NS: u64 = 1_000_000_000;
/// The kernel's "no slow-start threshold yet".
pub const INFINITE_SSTHRESH: u32 = 0x7fff_ffff;
/// The largest coupled window: below the kernel's infinite threshold.
const MAX_CWND_FP: u64 = ((INFINITE_SSTHRESH as u64) - 1) << CWND_SHIFT;

/// How a subflow is coupled ([`CcSubflow::model`]), from the congestion control the kernel
/// runs on it.
pub mod model {
    /// Loss-based: switched to Reno and coupled through its window.
    pub const WINDOW: u32 = 0;
    /// BBR (any version): kept, and coupled through its pacing rate.
    pub const PACED: u32 = 1;
    /// Cubic: kept, and coupled through its window with a cubic-shaped increase.
    pub const CUBIC: u32 = 2;
}

/// `SO_MAX_PACING_RATE`'s "no limit".
pub const UNLIMITED_PACING: u32 = u32::MAX;

/// Coupling algorithms ([`CcDecision::algorithm`]).
pub mod algorithm {
    /// Record only; the kernel's own congestion control decides.
    pub const NONE: u32 = 0;
    /// RFC 6356 Linked Increases.
    pub const LIA: u32 = 1;
    /// Opportunistic LIA (Khalili et al.).
    pub const OLIA: u32 = 2;
    /// Balanced LIA (Peng et al.).
    pub const BALIA: u32 = 3;
}

/// One subflow as the sock_ops program sees it, keyed like the tracking tables (`FlowKey`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcSubflow {
    /// The MPTCP connection's server token, from the tracking tables.
    pub token: u32,
    /// The algorithm of the last decision applied ([`algorithm`]).
    pub algorithm: u32,
    /// The kernel's window and slow-start threshold (packets), smoothed RTT (us) and MSS.
    pub snd_cwnd: u32,
    pub ssthresh: u32,
    pub srtt_us: u32,
    pub mss: u32,
    pub total_retrans: u32,
    /// Loss events seen (the kernel lowered the slow-start threshold).
    pub loss_events: u32,
    /// The coupled window, packets << [`CWND_SHIFT`]; 0 until the first loss ends slow start.
    pub coupled_cwnd: u64,
    /// The last window clamp set on the socket; 0: none yet.
    pub clamp: u32,
    /// [`model`].
    pub model: u32,
    /// The last pacing cap set on the socket, bytes/s; 0: none yet.
    pub pacing_cap: u32,
    /// The coupled window just before the last loss's decrease, packets (cubic's W_max).
    pub window_at_loss: u32,
    /// Losses that fell in a congestion event another subflow of the connection had begun, and
    /// so took no decrease ([`CcCongestion`]); `loss_events` does not count them.
    pub merged_losses: u32,
    pub _pad: u32,
    pub bytes_acked: u64,
    /// `bytes_acked` at the last two loss events (OLIA's inter-loss distance).
    pub acked_at_loss: [u64; 2],
    pub updated_ns: u64,
    /// When this state was last sent to the controller ([`CcEvent`]).
    pub notified_ns: u64,
}

const _: () = assert!(size_of::<CcSubflow>() == 104);

impl CcSubflow {
    /// Whether the controller should hear of this subflow at `now_ns` ([`CC_NOTIFY_NS`]).
    #[inline(always)]
    pub fn notify_due(&self, now_ns: u64) -> bool {
        now_ns.wrapping_sub(self.notified_ns) >= CC_NOTIFY_NS
    }
}

/// What a [`CcEvent`] reports.
pub mod cc_event {
    /// The subflow's state after an ACK.
    pub const UPDATE: u32 = 1;
    /// The socket closed; its entries are gone.
    pub const CLOSED: u32 = 2;
}

/// A change of one subflow, from the sock_ops program to the controller: the controller keeps
/// its own copy of every subflow instead of reading the table on a timer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcEvent {
    pub key: crate::maps::FlowKey,
    /// [`cc_event`].
    pub kind: u32,
    pub _pad: u32,
    pub subflow: CcSubflow,
}

const _: () = assert!(size_of::<CcEvent>() == 152);

/// The controller's decision for one subflow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcDecision {
    /// [`algorithm`].
    pub algorithm: u32,
    /// Fraction of the window removed on a loss, << [`DECREASE_SHIFT`].
    pub decrease: u32,
    /// Window change per acknowledged packet, packets << [`INCREASE_SHIFT`] (OLIA's can be
    /// negative).
    pub increase: i64,
    pub updated_ns: u64,
    /// A paced subflow's cap, bytes/s ([`UNLIMITED_PACING`]: none).
    pub pacing_cap: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<CcDecision>() == 32);

/// A connection's latest congestion event, keyed by its token ([`CC_CONGESTION_MAP`]): the
/// losses of its window-coupled subflows within one RTT of the first are one event.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcCongestion {
    /// When the event began, at the first subflow's loss; 0: none yet.
    pub started_ns: u64,
    /// That subflow's smoothed RTT, ns.
    pub rtt_ns: u64,
}

const _: () = assert!(size_of::<CcCongestion>() == 16);

impl CcCongestion {
    /// Whether a loss at `now_ns`, on a subflow whose smoothed RTT is `srtt_us`, falls in the
    /// current event; if it does not, it begins the next one. The event lasts the longer of the
    /// two RTTs: each subflow hears of a drop about one of its own RTTs after it.
    #[inline(always)]
    pub fn absorbs(&mut self, now_ns: u64, srtt_us: u32) -> bool {
        let rtt_ns = u64::from(srtt_us) * 1000;
        if self.started_ns != 0 && now_ns.wrapping_sub(self.started_ns) < self.rtt_ns.max(rtt_ns) {
            return true;
        }
        *self = CcCongestion { started_ns: now_ns, rtt_ns };
        false
    }
}

/// What the program sets on the socket after an ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcAction {
    /// `TCP_BPF_SNDCWND_CLAMP`, packets.
    Clamp(u32),
    /// `SO_MAX_PACING_RATE`, bytes/s.
    PacingCap(u32),
}

/// What the kernel reports with one ACK.
#[derive(Debug, Clone, Copy, Default)]
pub struct AckSample {
    pub snd_cwnd: u32,
    pub ssthresh: u32,
    pub srtt_us: u32,
    pub mss: u32,
    pub bytes_acked: u64,
    pub total_retrans: u32,
    pub now_ns: u64,
}

impl CcSubflow {
    /// Records one ACK and applies `decision`: to the coupled window of a window-coupled
    /// subflow, as the pacing cap of a paced one; returns what to set on the socket when it
    /// changes. `congestion` is the connection's latest congestion event (none: each loss is
    /// its own).
    #[inline(always)]
    pub fn on_ack(
        &mut self,
        sample: &AckSample,
        decision: Option<&CcDecision>,
        congestion: Option<&mut CcCongestion>,
    ) -> Option<CcAction> {
        let acked = sample.bytes_acked.saturating_sub(self.bytes_acked);
        let cwnd_before = self.snd_cwnd;
        self.snd_cwnd = sample.snd_cwnd;
        self.ssthresh = sample.ssthresh;
        self.srtt_us = sample.srtt_us;
        self.mss = sample.mss;
        self.bytes_acked = sample.bytes_acked;
        self.total_retrans = sample.total_retrans;
        self.updated_ns = sample.now_ns;
        let decision = decision.filter(|d| d.algorithm != algorithm::NONE)?;
        self.algorithm = decision.algorithm;
        let fresh = sample.now_ns.saturating_sub(decision.updated_ns) < STALE_NS;
        if self.model == model::PACED {
            // Stale: the cap goes, BBR alone decides.
            let cap = if fresh { decision.pacing_cap } else { UNLIMITED_PACING };
            let applied = if self.pacing_cap == 0 { UNLIMITED_PACING } else { self.pacing_cap };
            if cap == applied {
                return None;
            }
            self.pacing_cap = cap;
            return Some(CcAction::PacingCap(cap));
        }

        let lowered = self.reports_loss(sample);
        // A subflow's first loss always takes its decrease: it ends its own slow start.
        let merged = lowered
            && fresh
            && self.coupled_cwnd != 0
            && congestion.is_some_and(|event| event.absorbs(sample.now_ns, sample.srtt_us));
        if merged {
            // Another subflow's loss began this congestion event and took its decrease: this
            // window stays (the clamp set below restores the kernel's threshold to it).
            self.merged_losses = self.merged_losses.wrapping_add(1);
        } else if lowered {
            // The kernel lowered its threshold: a loss (or ECN) event. The coupled decrease
            // replaces the kernel's own. (Cubic's HyStart ending the initial slow start, which
            // sets the threshold to the window, counts as the first one.)
            let before = if self.coupled_cwnd != 0 {
                self.coupled_cwnd
            } else {
                u64::from(cwnd_before.max(sample.snd_cwnd)) << CWND_SHIFT
            };
            let fraction = if fresh { decision.decrease } else { HALF };
            // Bounded operands (below 2^47 and 2^16): the product fits, and needs no 128-bit
            // multiply, which BPF lacks.
            let before = before.min(MAX_CWND_FP);
            self.window_at_loss = (before >> CWND_SHIFT) as u32;
            let cut = before.wrapping_mul(u64::from(fraction.min(1 << DECREASE_SHIFT))) >> DECREASE_SHIFT;
            self.coupled_cwnd = before.saturating_sub(cut).max(MIN_CWND << CWND_SHIFT);
            self.loss_events = self.loss_events.wrapping_add(1);
            let [_, last] = self.acked_at_loss;
            self.acked_at_loss = [last, sample.bytes_acked];
        } else if self.coupled_cwnd != 0 {
            let packets = self.coupled_cwnd >> CWND_SHIFT;
            let increase = if fresh {
                decision.increase
            } else {
                // One Reno flow: 1/w per acknowledged packet (rounded up).
                (1u64 << INCREASE_SHIFT).checked_div(packets).map_or(0, |q| {
                    q.saturating_add(u64::from((1u64 << INCREASE_SHIFT).checked_rem(packets) != Some(0)))
                        as i64
                })
            };
            // Acknowledged packets (fractional) times the increase, in window fixed point.
            // Operands below 2^36 and 2^24, as above.
            let change = increase
                .unsigned_abs()
                .min(1 << 36)
                .wrapping_mul(acked.min(1 << 24))
                .checked_div(u64::from(sample.mss))
                .unwrap_or(0)
                >> (INCREASE_SHIFT - CWND_SHIFT);
            if increase < 0 {
                self.coupled_cwnd = self.coupled_cwnd.saturating_sub(change).max(MIN_CWND << CWND_SHIFT);
            } else if sample.snd_cwnd >= self.clamp {
                // Grow only while the sender fills the window it has.
                self.coupled_cwnd = self.coupled_cwnd.saturating_add(change).min(MAX_CWND_FP);
            }
        } else {
            // Initial slow start stays the kernel's.
            return None;
        }
        let clamp = (self.coupled_cwnd >> CWND_SHIFT) as u32;
        // After a loss the clamp is set even when unchanged: setting it is what raises the
        // kernel's lowered threshold back to it.
        if clamp == self.clamp && !lowered {
            return None;
        }
        self.clamp = clamp;
        Some(CcAction::Clamp(clamp))
    }

    /// Whether `sample` shows the kernel's loss (or ECN) response: a slow-start threshold below
    /// the clamp set last (below infinite before the first). Only then does [`Self::on_ack`]
    /// need the connection's congestion event, so the program looks it up only then.
    #[inline(always)]
    pub fn reports_loss(&self, sample: &AckSample) -> bool {
        if self.clamp == 0 { sample.ssthresh < INFINITE_SSTHRESH } else { sample.ssthresh < self.clamp }
    }

    /// How many bytes a window-coupled subflow may hold unsent (`TCP_NOTSENT_LOWAT`, set with
    /// each clamp): one coupled window. The kernel's MPTCP scheduler hands a subflow up to 64 KB
    /// at once (`MPTCP_SEND_BURST_SIZE`) and stops only when the subflow's unsent bytes reach this
    /// mark. On a subflow that coupling has moved down to a few packets, 64 KB take a second or
    /// more to leave, the data after them cannot be delivered in order until they arrive, and
    /// the other subflows go idle once the connection's window is used up; one window leaves in
    /// one RTT.
    #[inline(always)]
    pub fn unsent_limit(&self) -> u32 {
        self.clamp.saturating_mul(self.mss.max(1))
    }

    /// Bytes acknowledged between the last two losses, or since the last one if that is more
    /// (OLIA's inter-loss distance).
    pub fn interloss_bytes(&self) -> u64 {
        let [older, last] = self.acked_at_loss;
        last.saturating_sub(older).max(self.bytes_acked.saturating_sub(last))
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers without implicit padding.
    unsafe impl aya::Pod for super::CcSubflow {}
    unsafe impl aya::Pod for super::CcEvent {}
    unsafe impl aya::Pod for super::CcDecision {}
    unsafe impl aya::Pod for super::CcCongestion {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    fn sample(cwnd: u32, ssthresh: u32, acked: u64) -> AckSample {
        AckSample {
            snd_cwnd: cwnd,
            ssthresh,
            srtt_us: 1000,
            mss: MSS,
            bytes_acked: acked,
            total_retrans: 0,
            now_ns: 10,
        }
    }

    fn decision(increase_packets: f64, decrease: u32) -> CcDecision {
        CcDecision {
            algorithm: algorithm::LIA,
            decrease,
            increase: (increase_packets * (1u64 << INCREASE_SHIFT) as f64) as i64,
            updated_ns: 10,
            pacing_cap: UNLIMITED_PACING,
            _pad: 0,
        }
    }

    #[test]
    fn slow_start_is_the_kernels_until_the_first_loss() {
        let mut s = CcSubflow::default();
        assert_eq!(s.on_ack(&sample(10, INFINITE_SSTHRESH, 10_000), Some(&decision(0.1, HALF)), None), None);
        assert_eq!(s.coupled_cwnd, 0);
        // Loss: the kernel lowers ssthresh; the coupled window is the window before, halved.
        assert_eq!(
            s.on_ack(&sample(40, 20, 50_000), Some(&decision(0.1, HALF)), None),
            Some(CcAction::Clamp(20))
        );
        assert_eq!(s.loss_events, 1);
        assert_eq!(s.acked_at_loss, [0, 50_000]);
        assert_eq!(s.window_at_loss, 40);
    }

    #[test]
    fn the_window_grows_by_the_decided_increase_per_acked_packet() {
        let mut s =
            CcSubflow { coupled_cwnd: 20 << CWND_SHIFT, clamp: 20, bytes_acked: 0, ..Default::default() };
        // 0.25 packet per acked packet; 4 packets acked: +1.
        assert_eq!(
            s.on_ack(&sample(20, 20, 4_000), Some(&decision(0.25, HALF)), None),
            Some(CcAction::Clamp(21))
        );
        // 2 more packets: +0.5, same clamp.
        assert_eq!(s.on_ack(&sample(21, 21, 6_000), Some(&decision(0.25, HALF)), None), None);
        assert_eq!(s.coupled_cwnd, (21 << CWND_SHIFT) + (1 << (CWND_SHIFT - 1)));
    }

    #[test]
    fn an_application_limited_sender_does_not_grow_the_window() {
        let mut s = CcSubflow { coupled_cwnd: 20 << CWND_SHIFT, clamp: 20, ..Default::default() };
        assert_eq!(s.on_ack(&sample(12, 20, 40_000), Some(&decision(0.5, HALF)), None), None);
        assert_eq!(s.coupled_cwnd, 20 << CWND_SHIFT);
    }

    #[test]
    fn a_negative_increase_shrinks_the_window_down_to_the_minimum() {
        let mut s = CcSubflow { coupled_cwnd: 3 << CWND_SHIFT, clamp: 3, ..Default::default() };
        assert_eq!(
            s.on_ack(&sample(3, 3, 1_000_000), Some(&decision(-0.5, HALF)), None),
            Some(CcAction::Clamp(2))
        );
        assert_eq!(s.coupled_cwnd, MIN_CWND << CWND_SHIFT);
    }

    #[test]
    fn a_loss_applies_the_decided_decrease() {
        let mut s = CcSubflow { coupled_cwnd: 40 << CWND_SHIFT, clamp: 40, ..Default::default() };
        // BALIA-like: 3/4 of the window removed.
        let balia = decision(0.1, 3 << (DECREASE_SHIFT - 2));
        assert_eq!(s.on_ack(&sample(40, 28, 1_000), Some(&balia), None), Some(CcAction::Clamp(10)));
        assert_eq!(s.window_at_loss, 40);
    }

    #[test]
    fn a_connections_losses_within_one_rtt_take_one_decrease() {
        let mut event = CcCongestion::default();
        let subflow = || CcSubflow { coupled_cwnd: 40 << CWND_SHIFT, clamp: 40, ..Default::default() };
        let (mut first, mut second) = (subflow(), subflow());
        let at = |ns: u64, srtt_us: u32| AckSample { now_ns: ns, srtt_us, ..sample(40, 28, 1_000) };
        let lia = |ns| CcDecision { updated_ns: ns, ..decision(0.1, HALF) };
        // The first loss begins the event (RTT 10 ms) and halves its subflow.
        let loss = at(1_000_000, 10_000);
        assert_eq!(first.on_ack(&loss, Some(&lia(loss.now_ns)), Some(&mut event)), Some(CcAction::Clamp(20)));
        assert_eq!(event, CcCongestion { started_ns: 1_000_000, rtt_ns: 10_000_000 });
        // 9 ms later the other subflow loses: the same event. Its window stays, and the clamp is
        // set again so that the kernel's threshold goes back up to it.
        let loss = at(10_000_000, 5_000);
        assert_eq!(
            second.on_ack(&loss, Some(&lia(loss.now_ns)), Some(&mut event)),
            Some(CcAction::Clamp(40))
        );
        assert_eq!((second.coupled_cwnd, second.loss_events, second.merged_losses), (40 << CWND_SHIFT, 0, 1));
        // 11 ms after the first: the next event, whatever the subflow's own RTT.
        let mut third = subflow();
        let loss = at(12_000_000, 1_000);
        assert_eq!(third.on_ack(&loss, Some(&lia(loss.now_ns)), Some(&mut event)), Some(CcAction::Clamp(20)));
        assert_eq!((third.loss_events, third.merged_losses), (1, 0));
        assert_eq!(event.started_ns, 12_000_000);
        // That event lasts the longer RTT: a subflow with 4 ms hears of the drop 3 ms later.
        let loss = at(15_000_000, 4_000);
        assert_eq!(
            second.on_ack(&loss, Some(&lia(loss.now_ns)), Some(&mut event)),
            Some(CcAction::Clamp(40))
        );
        assert_eq!(second.merged_losses, 2);
    }

    #[test]
    fn a_first_loss_or_a_stale_decision_is_never_merged() {
        let mut event = CcCongestion { started_ns: 1_000, rtt_ns: 1_000_000_000 };
        // Slow start ends with the subflow's own decrease.
        let mut starting = CcSubflow::default();
        let loss = sample(40, 20, 1_000);
        assert_eq!(
            starting.on_ack(&loss, Some(&decision(0.1, HALF)), Some(&mut event)),
            Some(CcAction::Clamp(20))
        );
        assert_eq!(starting.merged_losses, 0);
        // Without a fresh decision the subflow is one uncoupled flow: every loss halves it.
        let mut alone = CcSubflow { coupled_cwnd: 40 << CWND_SHIFT, clamp: 40, ..Default::default() };
        let mut old = decision(0.1, HALF);
        old.updated_ns = 0;
        let late = AckSample { now_ns: STALE_NS + 1, ..sample(40, 28, 1_000) };
        assert_eq!(alone.on_ack(&late, Some(&old), Some(&mut event)), Some(CcAction::Clamp(20)));
        assert_eq!(alone.merged_losses, 0);
    }

    #[test]
    fn a_subflow_may_hold_one_coupled_window_unsent() {
        let mut s = CcSubflow { coupled_cwnd: 20 << CWND_SHIFT, clamp: 20, ..Default::default() };
        assert_eq!(
            s.on_ack(&sample(20, 14, 1_000), Some(&decision(0.1, HALF)), None),
            Some(CcAction::Clamp(10))
        );
        assert_eq!(s.unsent_limit(), 10 * MSS);
    }

    #[test]
    fn a_loss_at_the_minimum_window_restores_the_kernels_threshold() {
        let mut s = CcSubflow { coupled_cwnd: MIN_CWND << CWND_SHIFT, clamp: 2, ..Default::default() };
        assert_eq!(
            s.on_ack(&sample(2, 1, 1_000), Some(&decision(0.1, HALF)), None),
            Some(CcAction::Clamp(2))
        );
    }

    #[test]
    fn stale_decisions_fall_back_to_one_reno_flow() {
        let mut s = CcSubflow { coupled_cwnd: 10 << CWND_SHIFT, clamp: 10, ..Default::default() };
        let mut old = decision(0.9, HALF);
        old.updated_ns = 0;
        let mut now = sample(10, 10, 10_000);
        now.now_ns = STALE_NS + 1;
        // Reno: 1/10 per acked packet, 10 packets acked: +1.
        assert_eq!(s.on_ack(&now, Some(&old), None), Some(CcAction::Clamp(11)));
    }

    #[test]
    fn a_paced_subflow_gets_the_decided_cap_once_and_loses_it_when_stale() {
        let mut s = CcSubflow { model: model::PACED, ..Default::default() };
        let mut capped = decision(0.0, 0);
        capped.pacing_cap = 125_000;
        // Losses do not touch a paced subflow's window.
        assert_eq!(s.on_ack(&sample(40, 20, 1_000), Some(&capped), None), Some(CcAction::PacingCap(125_000)));
        assert_eq!(s.on_ack(&sample(40, 10, 2_000), Some(&capped), None), None);
        assert_eq!((s.coupled_cwnd, s.clamp, s.loss_events), (0, 0, 0));
        let mut later = sample(40, 10, 3_000);
        later.now_ns = STALE_NS + 11;
        assert_eq!(s.on_ack(&later, Some(&capped), None), Some(CcAction::PacingCap(UNLIMITED_PACING)));
        // No cap set yet and none decided: nothing to do.
        let mut fresh = CcSubflow { model: model::PACED, ..Default::default() };
        assert_eq!(fresh.on_ack(&sample(40, 20, 1_000), Some(&decision(0.0, 0)), None), None);
    }

    #[test]
    fn no_decision_records_only() {
        let mut s = CcSubflow::default();
        assert_eq!(s.on_ack(&sample(10, 5, 10_000), None, None), None);
        assert_eq!((s.snd_cwnd, s.ssthresh, s.bytes_acked, s.clamp), (10, 5, 10_000, 0));
    }

    #[test]
    fn interloss_distance_is_the_longer_of_the_last_two() {
        let s = CcSubflow { acked_at_loss: [1_000, 5_000], bytes_acked: 7_000, ..Default::default() };
        assert_eq!(s.interloss_bytes(), 4_000);
        let s = CcSubflow { acked_at_loss: [1_000, 5_000], bytes_acked: 15_000, ..Default::default() };
        assert_eq!(s.interloss_bytes(), 10_000);
    }
}
