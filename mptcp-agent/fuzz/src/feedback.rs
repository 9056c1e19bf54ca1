//! What the programs did, as coverage libFuzzer can see: its instrumentation stops at the
//! bpf(2) call, so the targets report the dataplane's own counters (which option subtypes were
//! parsed, subflows and connections created, joins admitted or dropped, ...) and each verdict
//! through libFuzzer's extra counters. libFuzzer clears them before every input and keeps an
//! input that moves one into a bucket (1, 2, 3, 4-7, 8-15, ...) no earlier input reached.

use std::sync::atomic::{AtomicU8, Ordering};

/// Slots: more than the counters and verdicts reported (see `programs`).
const SLOTS: usize = 256;

/// libFuzzer finds this section through the linker's `__start_`/`__stop_` symbols.
#[used]
#[unsafe(link_section = "__libfuzzer_extra_counters")]
static EXTRA_COUNTERS: [AtomicU8; SLOTS] = [const { AtomicU8::new(0) }; SLOTS];

/// Reports `amount` (saturated at 255) in slot `slot`.
pub fn report(slot: usize, amount: u64) {
    if let Some(counter) = EXTRA_COUNTERS.get(slot) {
        let amount = u8::try_from(amount).unwrap_or(u8::MAX);
        counter.fetch_max(amount, Ordering::Relaxed);
    }
}

/// Slots handed out in order, so that each source of feedback gets its own range.
pub struct Slots(usize);

impl Slots {
    pub const fn new() -> Self {
        Self(0)
    }

    /// The next `count` slots, from the first.
    pub fn take(&mut self, count: usize) -> usize {
        let first = self.0;
        self.0 += count;
        assert!(self.0 <= SLOTS, "{} feedback slots exceed the {SLOTS} there are", self.0);
        first
    }
}
