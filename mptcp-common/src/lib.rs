//! Everything the MPTCP eBPF programs and the user-space agent must agree on.
//!
//! * [`options`]: the bounded TCP option walk.
//! * [`mptcp`]: the MPTCP option codec (RFC 8684, RFC 6824 where v0 differs), parser and encoder.
//! * [`dataspace`]: new versus reinjected data of a connection.
//! * [`keys`]: token and IDSN of a key (SHA-256), for the programs.
//! * [`maps`]: `#[repr(C)]` layouts of every map shared between kernel and user space.
//!
//! The crate is `no_std`, allocates nothing and never panics on any input, so the eBPF programs
//! call the very same parser as the agent.
#![no_std]
#![deny(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

#[cfg(test)]
extern crate std;

pub mod dataspace;
pub mod keys;
pub mod maps;
pub mod mptcp;
pub mod options;
mod wire;

pub use wire::EncodeError;
