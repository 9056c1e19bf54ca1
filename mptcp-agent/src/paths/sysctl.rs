//! The kernel's MPTCP switches, `net.mptcp.*`, in the caller's network namespace.

use std::{fs, io, path::Path};

use super::{PROC_MPTCP, PathError};
use crate::config::PmKind;

/// A switch's value; `None` when the kernel does not have it.
pub fn read(name: &str) -> Result<Option<String>, PathError> {
    let path = Path::new(PROC_MPTCP).join(name);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PathError::Sysctl { path, source }),
    }
}

/// Fails unless MPTCP exists and is enabled in the caller's network namespace.
pub fn check_mptcp() -> Result<(), PathError> {
    match read("enabled")?.as_deref() {
        None => Err(PathError::NoMptcp),
        Some("0") => Err(PathError::MptcpDisabled),
        Some(_) => Ok(()),
    }
}

/// `net.mptcp.pm_type`: 0 in-kernel, 1 userspace; `None` before Linux 5.19, which has only the
/// in-kernel path manager and no such switch.
pub fn pm_type() -> Result<Option<u8>, PathError> {
    let Some(text) = read("pm_type")? else { return Ok(None) };
    text.parse().map(Some).map_err(|error| PathError::Sysctl {
        path: Path::new(PROC_MPTCP).join("pm_type"),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {error}")),
    })
}

/// Selects the kernel's path manager; returns whether it changed.
pub(super) fn set_pm_type(pm: PmKind) -> Result<bool, PathError> {
    let value = match pm {
        PmKind::Kernel => 0,
        PmKind::Userspace => 1,
    };
    if pm_type()? == Some(value) {
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

/// Sets the sysctl `name` (dotted, as `sysctl` spells it) in the caller's network namespace;
/// returns whether it changed.
pub fn set_sysctl(name: &str, value: &str) -> Result<bool, PathError> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    let old = fs::read_to_string(&path).map_err(|source| PathError::Sysctl { path: path.clone(), source })?;
    if old.trim() == value {
        return Ok(false);
    }
    fs::write(&path, value).map_err(|source| PathError::Sysctl { path, source })?;
    Ok(true)
}
