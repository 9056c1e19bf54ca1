//! The token-steering load balancer: its programs in [`ingress`], its maps in [`maps`].
#![no_std]
#![no_main]
// Map keys and values go by reference: by value they would be copied onto the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod ingress;
mod maps;

mptcp_ebpf::program_object!();
