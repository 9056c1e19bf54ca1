//! What the products' tables share. A handshake's state lives in a half-open table until the
//! handshake is confirmed, then moves to the established table: an LRU evicts by recency within
//! its own table only, so a flood of handshakes that are never confirmed pushes out other
//! half-open entries and never an established one (the tracker's subflows, the balancer's
//! flows).

use aya_ebpf::btf_maps::LruHashMap;
use mptcp_common::maps::{AddrKey, RateBucket};

/// Moves `key`'s entry from `half_open` to `established`, as `value` (which may point into
/// `half_open`: the kernel copies it before the half-open entry goes).
#[inline(always)]
pub fn promote<K, V, const HALF_OPEN: usize, const ESTABLISHED: usize>(
    half_open: &LruHashMap<K, V, HALF_OPEN>,
    established: &LruHashMap<K, V, ESTABLISHED>,
    key: &K,
    value: &V,
) -> Result<(), i32> {
    established.insert(key, value, 0)?;
    // The entry was there a moment ago; if the LRU pushed it out since, it is gone either way.
    let _ = half_open.remove(key);
    Ok(())
}

/// Takes one from `source`'s token bucket in `buckets` (`rate_per_sec`, `burst`); a source seen
/// for the first time starts with a full bucket. Err when its bucket could not be stored.
#[inline(always)]
pub fn admit_source<const N: usize>(
    buckets: &LruHashMap<AddrKey, RateBucket, N>,
    source: &AddrKey,
    now_ns: u64,
    rate_per_sec: u32,
    burst: u32,
) -> Result<bool, i32> {
    let Some(bucket) = buckets.get_ptr_mut(source) else {
        buckets.insert(source, RateBucket::first_join(now_ns, burst), 0)?;
        return Ok(true);
    };
    // SAFETY: map value pointer from a successful lookup.
    Ok(unsafe { &mut *bucket }.admit(now_ns, rate_per_sec, burst))
}
