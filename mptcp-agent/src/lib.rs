//! The MPTCP dataplane agent: loads, attaches and pins the eBPF programs, and reads and drives
//! the maps they share with it.

pub mod cli;
pub mod handshake;
pub mod loader;
pub mod stats;
