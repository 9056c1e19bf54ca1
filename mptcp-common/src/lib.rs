//! Everything the MPTCP eBPF programs and the user-space agent must agree on.
//!
//! * [`options`]: the bounded TCP option walk.
//! * [`mptcp`]: the MPTCP option codec (RFC 8684, RFC 6824 where v0 differs), parser and encoder.
//! * [`fallback`]: when a subflow falls back to TCP (RFC 8684 3.3.1, 3.7), for programs and decode.
//! * [`cc`]: coupled congestion control: subflow state, decisions, per-ACK window arithmetic.
//! * [`keys`]: token and IDSN of a key (SHA-256), for the programs.
//! * [`lb`]: the token-steering load balancer's map layouts and hashes.
//! * [`maps`]: `#[repr(C)]` layouts of every map shared between kernel and user space.
//! * [`tcp`]: TCP flags, and which segment opens a flow and which confirms it.
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

/// Declares a `#[repr(C)]` struct of `u64` counters together with its field names, a value array
/// in field order and a field-wise sum, so the three can never disagree.
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident, $names:ident { $($(#[$fmeta:meta])* $field:ident,)+ }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: u64,)+
        }

        /// Field names in declaration order, as `bpftool` prints them.
        pub const $names: [&str; [$(stringify!($field)),+].len()] = [$(stringify!($field)),+];

        const _: () = assert!(size_of::<$name>() == $names.len() * 8);

        impl $name {
            /// Values in the order of the field names.
            pub fn values(&self) -> [u64; $names.len()] {
                [$(self.$field),+]
            }

            /// Adds `other` field by field: sums the per-CPU copies of a counter set.
            pub fn accumulate(&mut self, other: &Self) {
                $(self.$field = self.$field.wrapping_add(other.$field);)+
            }
        }
    };
}

pub mod cc;
pub mod checksum;
pub mod fallback;
pub mod keys;
pub mod lb;
pub mod maps;
pub mod mptcp;
pub mod options;
pub mod tcp;
mod wire;

pub use wire::EncodeError;
