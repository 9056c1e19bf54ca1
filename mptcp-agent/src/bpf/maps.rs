//! Reading maps the programs update while we read them.

use std::{
    borrow::Borrow,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData, MapError},
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

/// The part of `union bpf_attr` the BPF_MAP_*_BATCH commands read (`linux/bpf.h`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `enum bpf_cmd` (`linux/bpf.h`).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `values[i]` under `keys[i]` for every i with one BPF_MAP_UPDATE_BATCH: one syscall for
/// a burst of writes (aya 0.14 has no batch update).
pub fn insert_batch<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    if keys.len() != values.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "as many keys as values"));
    }
    if keys.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` names `count` keys and values laid out as the map's (a HashMap checks its
    // key and value sizes when made), which the kernel only reads; it writes `count` back.
    let result = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &raw mut attr, size_of::<BatchAttr>() as u32)
    };
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
