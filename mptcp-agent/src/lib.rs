//! The MPTCP dataplane agent: loads, attaches and pins the eBPF programs, reads and drives the
//! maps they share with it, and completes what needs cryptography.

pub mod bench;
pub mod capture_file;
pub mod cli;
pub mod config;
pub mod congestion;
pub mod daemon;
pub mod decode;
pub mod events;
pub mod handshake;
pub mod loader;
pub mod maglev;
pub mod paths;
pub mod replay;
pub mod stats;
pub mod steering;
pub mod tables;
pub mod testrun;
