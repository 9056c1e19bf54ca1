//! What the kernel must grant before anything is loaded: capabilities and the BPF filesystem,
//! checked up front so a missing one is named.

use std::{ffi::CString, fs};

use super::*;

/// Where the BPF filesystem must be mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Linux capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What an operation needs from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Reading pinned maps: CAP_BPF.
    ReadMaps,
    /// Loading and attaching programs: CAP_BPF, CAP_PERFMON (the verifier's variable-offset
    /// stack reads in the option walk) and CAP_NET_ADMIN.
    Attach,
    /// Changing MPTCP endpoints, limits, subflows and sysctls: CAP_NET_ADMIN.
    ManagePaths,
}

/// Checks the effective capabilities up front, so a missing one is named instead of surfacing as
/// an EPERM from deep inside a load.
pub fn check_privileges(needed: Privilege) -> Result<(), LoaderError> {
    let status = fs::read_to_string("/proc/self/status").map_err(|source| LoaderError::Io {
        what: "reading",
        path: "/proc/self/status".into(),
        source,
    })?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if needed != Privilege::ManagePaths && !(has(CAP_BPF) || sys_admin) {
        missing.push("CAP_BPF");
    }
    if needed == Privilege::Attach && !(has(CAP_PERFMON) || sys_admin) {
        missing.push("CAP_PERFMON");
    }
    if needed != Privilege::ReadMaps && !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoaderError::MissingPrivileges { missing: missing.join(", ") })
    }
}

/// Fails unless a BPF filesystem is mounted at [`BPFFS`].
pub fn check_bpffs() -> Result<(), LoaderError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = CString::new(BPFFS).map_err(|_| LoaderError::NoBpffs)?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and stat is a properly sized out-parameter.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC { Ok(()) } else { Err(LoaderError::NoBpffs) }
}
