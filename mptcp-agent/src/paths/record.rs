//! Path events as the daemon's event log records them.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{monotonic_ns, pm::PmError};

/// A path event as the event log records it.
#[derive(Debug, Clone, Serialize)]
pub struct PathRecord {
    pub time_ns: u64,
    pub kind: &'static str,
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

pub(super) fn record(kind: &'static str, details: Value) -> PathRecord {
    let details = match details {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    PathRecord { time_ns: monotonic_ns(), kind, details }
}

/// The record of a request: `kind` with its details when it succeeded, `path_error` naming the
/// operation otherwise; timed when it was sent, with how long the kernel took to answer
/// (`took_us`: removing an endpoint waits for an RCU grace period, after its subflows closed).
pub(super) fn outcome(
    kind: &'static str,
    op: &'static str,
    details: Value,
    (sent, result): (u64, Result<(), PmError>),
) -> PathRecord {
    let took_us = monotonic_ns().saturating_sub(sent) / 1_000;
    let mut record = match result {
        Ok(()) => record(kind, details),
        Err(error) => {
            log::warn!("paths: {op} failed: {error}");
            record("path_error", json!({ "op": op, "error": error.to_string(), "request": details }))
        }
    };
    record.time_ns = sent;
    record.details.insert("took_us".into(), took_us.into());
    record
}
