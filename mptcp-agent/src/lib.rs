//! The MPTCP dataplane agent: loads, attaches and pins the eBPF programs, and reads and drives
//! the maps they share with it.

pub mod capture_file;
pub mod cli;
pub mod decode;
pub mod handshake;
pub mod loader;
pub mod stats;
