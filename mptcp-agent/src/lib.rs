//! The MPTCP dataplane agent: loads, attaches and pins the eBPF programs, reads and drives the
//! maps they share with it, and completes what needs cryptography.
//!
//! One folder per domain (see the README's architecture section); `daemon` composes them and
//! `cli` is the operator's surface.

pub mod analysis;
pub mod bpf;
pub mod cc;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod explain;
pub mod lb;
pub mod metrics;
pub mod paths;
pub mod report;
pub mod service;
pub mod stop;
pub mod top;
