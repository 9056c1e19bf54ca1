//! The controller: keeps its own copy of every subflow from the sock_ops program's change
//! notifications (CC_EVENTS) and recomputes the decisions of the connections that changed. It
//! reads CC_SUBFLOWS once, at start; after that the table is never scanned, so its cost follows
//! the ACK rate of active subflows (each notifies at most every `CC_NOTIFY_NS`), not how many
//! connections are open.

use std::collections::{BTreeSet, HashMap as StdHashMap};

use aya::maps::{MapData, RingBuf};
use mptcp_common::{
    cc::{CC_DECISIONS_MAP, CC_EVENTS_MAP, CC_SUBFLOWS_MAP, CcDecision, CcEvent, CcSubflow, cc_event, model},
    maps::FlowKey,
};

use super::{
    Algorithm, CongestionError, DecisionTable, FORGET_NS, IDLE_NS, SubflowTable,
    cubic::{self, Epoch},
    decide, encode, encode_pacing, forget, map_error, open_tables, path_of,
    shared_bottleneck::{RttHistory, Sharing, correlation, pacing_caps},
};
use crate::bpf::{Instance, maps};

/// Token under which subflows of no tracked connection are kept: each is decided alone.
const UNTRACKED: u32 = 0;

/// Every subflow the controller knows, by key and by connection.
#[derive(Debug, Default)]
struct Subflows {
    by_key: StdHashMap<FlowKey, CcSubflow>,
    by_token: StdHashMap<u32, BTreeSet<FlowKey>>,
    /// Paced subflows' recent RTTs, and which pairs of them (lower key first) share a bottleneck.
    history: StdHashMap<FlowKey, RttHistory>,
    sharing: StdHashMap<(FlowKey, FlowKey), Sharing>,
    /// Cubic subflows' epochs since their last loss.
    epochs: StdHashMap<FlowKey, Epoch>,
}

impl Subflows {
    /// Records `subflow`'s latest state; returns its connection's token.
    fn update(&mut self, key: FlowKey, subflow: CcSubflow) -> u32 {
        if let Some(old) = self.by_key.insert(key, subflow)
            && old.token != subflow.token
        {
            self.unindex(old.token, &key);
        }
        self.by_token.entry(subflow.token).or_default().insert(key);
        match subflow.model {
            model::PACED => {
                self.history.entry(key).or_default().record(
                    subflow.updated_ns,
                    subflow.srtt_us,
                    subflow.bytes_acked,
                );
            }
            model::CUBIC => match Epoch::follow(self.epochs.get(&key).copied(), &subflow) {
                Some(epoch) => {
                    self.epochs.insert(key, epoch);
                }
                None => {
                    self.epochs.remove(&key);
                }
            },
            _ => {}
        }
        subflow.token
    }

    fn remove(&mut self, key: &FlowKey) -> Option<u32> {
        let old = self.by_key.remove(key)?;
        self.unindex(old.token, key);
        self.history.remove(key);
        self.epochs.remove(key);
        self.sharing.retain(|(a, b), _| a != key && b != key);
        Some(old.token)
    }

    fn unindex(&mut self, token: u32, key: &FlowKey) {
        if let Some(keys) = self.by_token.get_mut(&token) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_token.remove(&token);
            }
        }
    }

    /// The decisions of connection `token`'s subflows acknowledged within `IDLE_NS` of `now_ns`:
    /// window-coupled ones by `algorithm` (cubic ones along cubic's curve), paced ones by the
    /// bottlenecks they share.
    fn decisions(&mut self, token: u32, algorithm: Algorithm, now_ns: u64) -> Vec<(FlowKey, CcDecision)> {
        let Some(keys) = self.by_token.get(&token) else { return Vec::new() };
        let active: Vec<(FlowKey, &CcSubflow)> = keys
            .iter()
            .filter_map(|key| self.by_key.get(key).map(|s| (*key, s)))
            .filter(|(_, s)| now_ns.saturating_sub(s.updated_ns) < IDLE_NS && s.srtt_us > 0)
            .collect();
        let (paced, windowed): (Vec<_>, Vec<_>) =
            active.into_iter().partition(|(_, s)| s.model == model::PACED);
        let groups: Vec<&[(FlowKey, &CcSubflow)]> =
            if token == UNTRACKED { windowed.chunks(1).collect() } else { vec![&windowed[..]] };
        let mut decided: Vec<(FlowKey, CcDecision)> = groups
            .into_iter()
            .flat_map(|group| {
                let paths: Vec<_> = group.iter().map(|(_, s)| path_of(s)).collect();
                let decided = decide(algorithm, &paths);
                group
                    .iter()
                    .zip(paths.iter().zip(decided))
                    .map(|((key, s), (path, d))| {
                        let d = if s.model == model::CUBIC {
                            cubic::shape(d, path.cwnd, s.srtt_us, self.epochs.get(key), now_ns)
                        } else {
                            d
                        };
                        (*key, encode(algorithm, d, now_ns))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let paced: Vec<FlowKey> = paced.into_iter().map(|(key, _)| key).collect();
        decided.extend(self.pacing_decisions(token, &paced, algorithm, now_ns));
        decided
    }

    /// Pacing caps for connection `token`'s active paced subflows `keys` (in key order), after
    /// updating which of them share a bottleneck.
    fn pacing_decisions(
        &mut self,
        token: u32,
        keys: &[FlowKey],
        algorithm: Algorithm,
        now_ns: u64,
    ) -> Vec<(FlowKey, CcDecision)> {
        let empty = RttHistory::default();
        let history = |key: &FlowKey| self.history.get(key).unwrap_or(&empty);
        let mut correlations = Vec::new();
        if token != UNTRACKED {
            let bins: Vec<_> = keys.iter().map(|key| history(key).bins(now_ns)).collect();
            for (i, a) in keys.iter().enumerate() {
                for (j, b) in keys.iter().enumerate().skip(i + 1) {
                    correlations.push(((*a, *b), correlation(&bins[i], &bins[j])));
                }
            }
        }
        let rates: Vec<f64> = keys.iter().map(|key| history(key).rate()).collect();
        for (pair, correlation) in correlations {
            self.sharing.entry(pair).or_default().update(correlation, now_ns);
        }
        let caps =
            pacing_caps(&rates, |i, j| self.sharing.get(&(keys[i], keys[j])).is_some_and(|s| s.shared));
        keys.iter().zip(caps).map(|(key, cap)| (*key, encode_pacing(algorithm, cap, now_ns))).collect()
    }

    /// Keys of subflows silent for longer than `FORGET_NS` at `now_ns`.
    fn silent(&self, now_ns: u64) -> Vec<FlowKey> {
        self.by_key
            .iter()
            .filter(|(_, s)| now_ns.saturating_sub(s.updated_ns) > FORGET_NS)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// The instance's congestion-control maps and the controller's copy of the subflows.
pub struct Controller {
    events: RingBuf<MapData>,
    subflows: SubflowTable,
    decisions: DecisionTable,
    known: Subflows,
    /// Connections heard from since the last decisions.
    changed: BTreeSet<u32>,
    algorithm: Algorithm,
}

impl Controller {
    /// Opens the maps and reads the subflows already followed (the only full read).
    pub fn open(instance: &Instance, algorithm: Algorithm) -> Result<Self, CongestionError> {
        let (subflows, decisions) = open_tables(instance)?;
        let events =
            RingBuf::try_from(instance.open_map(CC_EVENTS_MAP)?).map_err(map_error(CC_EVENTS_MAP))?;
        let mut known = Subflows::default();
        let mut changed = BTreeSet::new();
        for (key, subflow) in maps::entries(&subflows).map_err(map_error(CC_SUBFLOWS_MAP))? {
            changed.insert(known.update(key, subflow));
        }
        Ok(Self { events, subflows, decisions, known, changed, algorithm })
    }

    /// How many subflows the controller knows.
    pub fn known(&self) -> usize {
        self.known.by_key.len()
    }

    /// Takes in the notifications waiting in the ring; returns how many.
    pub fn drain(&mut self) -> usize {
        let mut taken = 0;
        while let Some(item) = self.events.next() {
            taken += 1;
            let Some(event) = crate::bpf::maps::ring_record::<CcEvent>(&item) else {
                continue;
            };
            match event.kind {
                cc_event::UPDATE => {
                    self.changed.insert(self.known.update(event.key, event.subflow));
                }
                cc_event::CLOSED => {
                    if let Some(token) = self.known.remove(&event.key) {
                        self.changed.insert(token);
                    }
                }
                _ => {}
            }
        }
        taken
    }

    /// Writes the decisions of every connection heard from since the last call; returns how
    /// many subflows were decided for.
    pub fn decide(&mut self, now_ns: u64) -> Result<usize, CongestionError> {
        let changed = std::mem::take(&mut self.changed);
        if self.algorithm == Algorithm::None {
            return Ok(0);
        }
        let mut decided = 0;
        for token in changed {
            for (key, decision) in self.known.decisions(token, self.algorithm, now_ns) {
                self.decisions.insert(key, decision, 0).map_err(map_error(CC_DECISIONS_MAP))?;
                decided += 1;
            }
        }
        Ok(decided)
    }

    /// Removes the entries of subflows silent for `FORGET_NS` (a closed socket removes its own;
    /// this catches the closes whose notification was lost); returns how many.
    pub fn forget_silent(&mut self, now_ns: u64) -> Result<usize, CongestionError> {
        let silent = self.known.silent(now_ns);
        for key in &silent {
            self.known.remove(key);
            forget(self.subflows.remove(key)).map_err(map_error(CC_SUBFLOWS_MAP))?;
            forget(self.decisions.remove(key)).map_err(map_error(CC_DECISIONS_MAP))?;
        }
        Ok(silent.len())
    }
}

#[cfg(test)]
mod tests {
    use mptcp_common::cc::{DECREASE_SHIFT, UNLIMITED_PACING, algorithm};

    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey { port_a: port, family: 4, ..FlowKey::default() }
    }

    fn subflow(token: u32, cwnd: u32, updated_ns: u64) -> CcSubflow {
        CcSubflow { token, snd_cwnd: cwnd, srtt_us: 10_000, updated_ns, ..CcSubflow::default() }
    }

    const NOW: u64 = 100_000_000_000;

    #[test]
    fn a_connection_is_decided_over_all_its_active_subflows() {
        let mut known = Subflows::default();
        known.update(key(1), subflow(7, 10, NOW));
        known.update(key(2), subflow(7, 10, NOW));
        // Another connection, and a subflow of this one idle for longer than IDLE_NS.
        known.update(key(3), subflow(8, 10, NOW));
        known.update(key(4), subflow(7, 10, NOW - IDLE_NS - 1));
        let decided = known.decisions(7, Algorithm::Lia, NOW);
        let keys: Vec<FlowKey> = decided.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [key(1), key(2)]);
        let paths = [path_of(&subflow(7, 10, NOW)), path_of(&subflow(7, 10, NOW))];
        let expected = decide(Algorithm::Lia, &paths);
        for ((_, got), want) in decided.iter().zip(expected) {
            assert_eq!(*got, encode(Algorithm::Lia, want, NOW));
            assert_eq!(got.algorithm, algorithm::LIA);
            assert_eq!(got.decrease, 1 << (DECREASE_SHIFT - 1));
        }
    }

    #[test]
    fn paced_subflows_whose_rtts_move_together_are_capped_but_the_fastest() {
        let mut known = Subflows::default();
        let paced = |cwnd, srtt_us, bytes_acked, updated_ns| CcSubflow {
            model: model::PACED,
            srtt_us,
            bytes_acked,
            ..subflow(7, cwnd, updated_ns)
        };
        // Two paced subflows queueing at one bottleneck (the same RTT swing), one faster, and a
        // window-coupled one, every 10 ms for 5 s, decided on every 10th.
        let start = NOW - 5_000_000_000;
        let mut decided = StdHashMap::new();
        for step in 0..500u64 {
            let at = start + step * 10_000_000;
            let queue = 1_000 + (step % 40) as u32 * 400;
            known.update(key(1), paced(10, 2_000 + queue, step * 1_000, at));
            known.update(key(2), paced(10, 2_500 + queue, step * 3_000, at));
            known.update(key(3), subflow(7, 10, at));
            if step % 10 == 9 {
                decided = known.decisions(7, Algorithm::Lia, at).into_iter().collect();
            }
        }
        assert_eq!(decided.len(), 3);
        // 3 bytes per ms = 300 kB/s on the faster: the other gets a fifth of it.
        assert_eq!(decided[&key(2)].pacing_cap, UNLIMITED_PACING);
        assert!((59_000..61_000).contains(&decided[&key(1)].pacing_cap), "{:?}", decided[&key(1)]);
        assert_eq!(decided[&key(3)].pacing_cap, UNLIMITED_PACING);
        assert!(decided[&key(3)].increase > 0);
        // Closing one forgets its pair.
        known.remove(&key(2));
        assert!(known.sharing.is_empty());
    }

    #[test]
    fn cubic_subflows_take_their_coupled_share_of_cubics_growth_and_its_decrease() {
        let mut known = Subflows::default();
        let cubic = |loss_events, window_at_loss, updated_ns| CcSubflow {
            model: model::CUBIC,
            clamp: 20,
            loss_events,
            window_at_loss,
            ..subflow(7, 20, updated_ns)
        };
        known.update(key(1), cubic(0, 0, NOW - 2_000_000));
        known.update(key(2), subflow(7, 20, NOW - 2_000_000));
        // Lost from 28 to 20, 1 ms ago.
        known.update(key(1), cubic(1, 28, NOW - 1_000_000));
        assert_eq!(known.epochs.get(&key(1)), Epoch::follow(None, &cubic(1, 28, NOW - 1_000_000)).as_ref());
        let decided: StdHashMap<_, _> = known.decisions(7, Algorithm::Lia, NOW).into_iter().collect();
        let paths = [path_of(&cubic(1, 28, NOW)), path_of(&subflow(7, 20, NOW))];
        let lia = decide(Algorithm::Lia, &paths);
        let shaped = cubic::shape(lia[0], 20.0, 10_000, known.epochs.get(&key(1)), NOW);
        assert_eq!(decided[&key(1)], encode(Algorithm::Lia, shaped, NOW));
        assert_eq!(decided[&key(1)].decrease, (0.3 * f64::from(1u32 << DECREASE_SHIFT)) as u32);
        // The Reno subflow beside it keeps LIA's own decision.
        assert_eq!(decided[&key(2)], encode(Algorithm::Lia, lia[1], NOW));
        known.remove(&key(1));
        assert!(known.epochs.is_empty());
    }

    #[test]
    fn untracked_subflows_are_each_their_own_connection() {
        let mut known = Subflows::default();
        known.update(key(1), subflow(UNTRACKED, 10, NOW));
        known.update(key(2), subflow(UNTRACKED, 20, NOW));
        let decided = known.decisions(UNTRACKED, Algorithm::Lia, NOW);
        assert_eq!(decided.len(), 2);
        for (key, decision) in decided {
            let cwnd = if key == self::key(1) { 10 } else { 20 };
            let alone = decide(Algorithm::Lia, &[path_of(&subflow(UNTRACKED, cwnd, NOW))]);
            assert_eq!(decision, encode(Algorithm::Lia, alone[0], NOW));
        }
    }

    #[test]
    fn a_subflow_that_changes_connection_or_closes_leaves_the_index() {
        let mut known = Subflows::default();
        known.update(key(1), subflow(UNTRACKED, 10, NOW));
        assert_eq!(known.update(key(1), subflow(9, 10, NOW)), 9);
        assert!(!known.by_token.contains_key(&UNTRACKED));
        assert_eq!(known.remove(&key(1)), Some(9));
        assert!(known.by_token.is_empty() && known.by_key.is_empty());
        assert_eq!(known.remove(&key(1)), None);
    }

    #[test]
    fn only_subflows_silent_past_forget_ns_are_forgotten() {
        let mut known = Subflows::default();
        known.update(key(1), subflow(7, 10, NOW - FORGET_NS - 1));
        known.update(key(2), subflow(7, 10, NOW - FORGET_NS + 1));
        assert_eq!(known.silent(NOW), [key(1)]);
    }
}
