//! The kernel's MPTCP switches, `net.mptcp.*`, in the caller's network namespace.

use std::{fs, io, path::Path};

use super::{PROC_MPTCP, PathError};
use crate::config::PmKind;

/// Fails unless MPTCP exists and is enabled in the caller's network namespace.
pub fn check_mptcp() -> Result<(), PathError> {
    let enabled =
        fs::read_to_string(Path::new(PROC_MPTCP).join("enabled")).map_err(|_| PathError::NoMptcp)?;
    if enabled.trim() == "0" { Err(PathError::MptcpDisabled) } else { Ok(()) }
}

/// `net.mptcp.pm_type` of the caller's network namespace: 0 in-kernel, 1 userspace.
pub fn pm_type() -> Option<u8> {
    fs::read_to_string(Path::new(PROC_MPTCP).join("pm_type")).ok()?.trim().parse().ok()
}

/// Selects the kernel's path manager; returns whether it changed.
pub(super) fn set_pm_type(pm: PmKind) -> Result<bool, PathError> {
    let value = match pm {
        PmKind::Kernel => 0,
        PmKind::Userspace => 1,
    };
    if pm_type() == Some(value) {
        return Ok(false);
    }
    let path = Path::new(PROC_MPTCP).join("pm_type");
    fs::write(&path, value.to_string()).map_err(|source| {
        let source = if source.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(source.kind(), "permission denied: it needs CAP_NET_ADMIN")
        } else {
            source
        };
        PathError::PmType { value, pm, source }
    })?;
    Ok(true)
}
