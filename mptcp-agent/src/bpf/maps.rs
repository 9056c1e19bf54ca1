//! Reading maps the programs update while we read them.

use std::borrow::Borrow;

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError},
};

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
