//! Path management (RFC 8041 sections 2.2, 3.3, 3.4): which subflows exist, driven by the policy
//! in the configuration's `[paths]` table and by the interfaces as rtnetlink reports them.
//!
//! With the in-kernel path manager the agent keeps its endpoints, flags and limits as the policy
//! says; with the userspace one it opens, closes and prioritises each connection's subflows and
//! announces addresses itself. Either way it acts on a link or address change the moment
//! rtnetlink reports it, instead of waiting, as the kernel alone does, for retransmission
//! timeouts to declare a subflow dead. Every change and every path manager event goes to the
//! daemon's event log; the state it keeps goes to `paths.json` for `mptcp-agent paths`.

mod manager;
mod owner;
pub mod pm;
pub mod policy;
mod record;
mod report;
pub mod rtnl;
mod rules;
mod state;
mod sysctl;

use std::{io, path::PathBuf};

pub use self::{
    manager::{PathInput, PathManager},
    record::{PathEvent, PathRecord, Request},
    report::{EndpointView, InterfaceView, PathSubflow, Report, report},
    state::{ConnectionState, InterfacePolicy, PathState, Policy, state_path},
    sysctl::{
        SwitchChange, check_features, check_mptcp, pm_type, read as mptcp_switch, set_sysctl, tcp_wmem,
    },
};
use self::{pm::PmError, rtnl::RtnlError};
use crate::config::PmKind;

const PROC_MPTCP: &str = "/proc/sys/net/mptcp";

/// CLOCK_MONOTONIC in nanoseconds: the clock of the programs' event timestamps, so path events
/// and dataplane events order in one log.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec. It cannot fail for CLOCK_MONOTONIC, whose
    // fields are never negative: hence no checks.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// A connection's token as the event log, the state file and `paths` show it.
fn hex_token(token: u32) -> String {
    format!("0x{token:08x}")
}

/// Messages leave the cause to the source chain, which the command line prints.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("the kernel has no MPTCP ({PROC_MPTCP} is missing): it needs CONFIG_MPTCP")]
    NoMptcp,
    #[error(
        "MPTCP is disabled in this network namespace (net.mptcp.enabled = 0): enable it with \
         `sysctl -w net.mptcp.enabled=1`"
    )]
    MptcpDisabled,
    #[error(transparent)]
    Pm(#[from] PmError),
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    #[error("reading or writing {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting net.mptcp.pm_type to {value} (pm = {pm:?})")]
    PmType {
        value: u8,
        pm: PmKind,
        #[source]
        source: io::Error,
    },
    #[error("writing the path state {path}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the path state {path}")]
    StateRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "role = \"laminar\" needs laminar endpoints, which came with Linux 6.18; this kernel is {release}"
    )]
    NoLaminar { release: String },
    #[error("{key} needs net.mptcp.{name}, which this kernel lacks (it came with Linux {since})")]
    NoSwitch { name: &'static str, key: &'static str, since: &'static str },
    #[error("the {0} socket closed")]
    SocketClosed(&'static str),
    #[error(transparent)]
    Table(#[from] crate::dataplane::tables::TableError),
}
