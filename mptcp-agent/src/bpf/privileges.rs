//! What the kernel must grant before anything is loaded: capabilities and the BPF filesystem,
//! checked up front so a missing one is named.

use std::{ffi::CString, fs};

use caps::{CapSet, Capability, CapsHashSet};

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

/// Drops every capability the running daemon no longer uses, once its programs are loaded and
/// attached: it keeps CAP_BPF (its maps and ring buffer) and, when it manages paths,
/// CAP_NET_ADMIN (netlink requests), and when path rules match on process names,
/// CAP_SYS_PTRACE (reading other processes' /proc/PID/fd, which a process with fewer
/// capabilities than its owner may not). Dropped from the bounding set as well when CAP_SETPCAP
/// allows, and no_new_privs set, so nothing it could exec regains them. Returns what is kept.
///
/// Capabilities are per thread: this must run before the process starts a second one.
pub fn drop_to_runtime_privileges(
    manage_paths: bool,
    find_processes: bool,
) -> Result<CapsHashSet, LoaderError> {
    let threads = fs::read_dir("/proc/self/task")
        .map_err(|source| LoaderError::Io { what: "reading", path: "/proc/self/task".into(), source })?
        .count();
    if threads != 1 {
        return Err(LoaderError::ThreadsBeforeDrop { threads });
    }
    let effective = caps::read(None, CapSet::Effective).map_err(LoaderError::DropPrivileges)?;
    let mut kept = CapsHashSet::new();
    // Kernels before 5.8 have no CAP_BPF; CAP_SYS_ADMIN stands in for it there.
    let bpf = if effective.contains(&Capability::CAP_BPF) {
        Capability::CAP_BPF
    } else {
        Capability::CAP_SYS_ADMIN
    };
    kept.insert(bpf);
    if manage_paths {
        kept.insert(Capability::CAP_NET_ADMIN);
    }
    if find_processes {
        kept.insert(Capability::CAP_SYS_PTRACE);
    }
    kept.retain(|cap| effective.contains(cap));
    if effective.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::read(None, CapSet::Bounding).map_err(LoaderError::DropPrivileges)? {
            if !kept.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(LoaderError::DropPrivileges)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(LoaderError::DropPrivileges)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(LoaderError::DropPrivileges)?;
    caps::set(None, CapSet::Effective, &kept).map_err(LoaderError::DropPrivileges)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(LoaderError::DropPrivileges)?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(LoaderError::DropPrivileges(caps::errors::CapsError::from(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        ))));
    }
    Ok(kept)
}
