//! The MPTCP dataplane's tracker: XDP (or tcx) ingress and tcx egress programs on each
//! interface and a cgroup sock_ops program for coupled congestion control, sharing the maps in
//! [`maps`]. One module per attach point; what they do with a packet is in [`observe`] and
//! [`track`], the packet's working memory in [`state`].
#![no_std]
#![no_main]
// atomic_xadd: see track::atomic_add. The crate is built by the nightly toolchain anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values go by reference: by value they would be copied onto the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod maps;
mod observe;
mod sock_ops;
mod state;
mod tc_egress;
mod tc_ingress;
mod track;
mod xdp_ingress;

mptcp_ebpf::program_object!();
