//! The benchmarks' result rows: printed one JSON object per line by the benchmark programs
//! (`mptcp-agent`'s `dataplane` bench) and collected by `cargo xtask bench`.

use serde::{Deserialize, Serialize};

/// One measured value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub suite: String,
    pub case: String,
    pub value: f64,
    pub unit: String,
    /// What exactly was measured, and how.
    pub note: String,
}
