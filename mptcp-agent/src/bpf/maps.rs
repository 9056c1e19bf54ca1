//! Reading maps the programs update while we read them.

use std::borrow::Borrow;

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError},
};

/// A ring buffer record as the `T` a program wrote; None for a shorter one. Ring memory need not
/// be aligned for `T`.
pub fn ring_record<T: Pod>(item: &[u8]) -> Option<T> {
    if item.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `item` holds at least a T's bytes, read unaligned, and a Pod is valid for any bits.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) })
}

/// Every entry of `map`. An entry deleted between finding its key and reading it (an LRU
/// eviction, a program's delete) is not an error; any other failure is.
pub fn entries<T: Borrow<MapData>, K: Pod, V: Pod>(map: &HashMap<T, K, V>) -> Result<Vec<(K, V)>, MapError> {
    map.iter().filter(|entry| !matches!(entry, Err(MapError::KeyNotFound))).collect()
}

/// The value under `key`; `None` when there is none, an error when the read failed.
pub fn lookup<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    key: &K,
) -> Result<Option<V>, MapError> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(error) => Err(error),
    }
}
