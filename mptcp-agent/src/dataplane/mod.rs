//! The tracker's tables and events as the agent reads and completes them: snapshots of the
//! maps, handshake cryptography, event processing, counters, and private test runs.

pub mod events;
pub mod handshake;
pub mod stats;
pub mod tables;
pub mod testrun;
