//! Empty library target: mptcp-agent build-depends on it so cargo rebuilds the agent (and with it
//! the embedded programs) whenever this crate or mptcp-common changes. The programs are the
//! `mptcp-ebpf` binary target.
#![no_std]
