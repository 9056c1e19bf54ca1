//! The kernel side as user space sees it: the embedded objects, instances and their pins,
//! links, privileges, and reading maps the programs update.

pub mod instance;
pub mod links;
pub mod maps;
pub mod privileges;
pub mod tracker;

pub use instance::*;
pub use links::*;
pub use privileges::*;
pub use tracker::*;

use std::{io, path::PathBuf};

use aya::{Ebpf, EbpfError, maps::MapError, pin::PinError, programs::ProgramError};

// The eBPF objects, built by build.rs for bpfel-unknown-none with BTF, one per product: loading
// one creates only its own maps.
/// The tracker: ingress, egress and sock_ops programs and the tracking tables.
pub(crate) static TRACKER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracker"));

/// The load balancer (see `steering`).
pub(crate) static BALANCER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// The benchmarks' reference programs (see `bench`).
pub(crate) static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reference"));

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("no BPF filesystem mounted at {BPFFS}: mount one with `mount -t bpf bpf {BPFFS}`")]
    NoBpffs,
    #[error(
        "missing privileges: this needs {missing}; run as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
    )]
    MissingPrivileges { missing: String },
    #[error("invalid interface name {0:?}")]
    InvalidInterfaceName(String),
    #[error("invalid instance name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidInstanceName(String),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error(
        "the dataplane is already attached to {iface} (pinned under {dir}); detach it first with `mptcp-agent detach --iface {iface}`"
    )]
    AlreadyAttached { iface: String, dir: PathBuf },
    #[error("the dataplane is not attached to {iface}: nothing is pinned under {dir}")]
    NotAttached { iface: String, dir: PathBuf },
    #[error("instance {instance} is not running: nothing is pinned under {dir}")]
    NoInstance { instance: String, dir: PathBuf },
    #[error(
        "no cgroup v2 hierarchy is mounted (coupled congestion control attaches to one): mount it with \
         `mount -t cgroup2 none /sys/fs/cgroup` or name a cgroup v2 directory with --cgroup"
    )]
    NoCgroup2,
    #[error("loading the eBPF object failed")]
    Load(#[source] EbpfError),
    #[error("{what} failed")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    #[error("dropping capabilities after loading failed")]
    DropPrivileges(#[source] caps::errors::CapsError),
    #[error("capabilities are per thread, and {threads} threads already run: drop them before starting any")]
    ThreadsBeforeDrop { threads: usize },
    #[error("pinning {path} failed")]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("map {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, LoaderError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| LoaderError::Program {
        what: format!("finding program {name} in the embedded object"),
        source: ProgramError::UnexpectedProgramType,
    })?;
    program.try_into().map_err(|source| LoaderError::Program {
        what: format!("program {name} has an unexpected type"),
        source,
    })
}
