//! The kernel's MPTCP switches, `net.mptcp.*`, in the caller's network namespace.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{PROC_MPTCP, PathError};
use crate::config::{PathsConfig, PmKind, Role};

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

/// Where the sysctl `name` (dotted, as `sysctl` spells it) is in /proc.
fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// Sets the sysctl `name` (dotted, as `sysctl` spells it) in the caller's network namespace;
/// returns whether it changed.
pub fn set_sysctl(name: &str, value: &str) -> Result<bool, PathError> {
    let path = sysctl_path(name);
    let old = fs::read_to_string(&path).map_err(|source| PathError::Sysctl { path: path.clone(), source })?;
    if old.trim() == value {
        return Ok(false);
    }
    fs::write(&path, value).map_err(|source| PathError::Sysctl { path, source })?;
    Ok(true)
}

/// `net.mptcp.allow_join_initial_addr_port` (Linux 5.14): 0 sets the C flag in this host's
/// MP_CAPABLE SYN-ACKs.
const ALLOW_JOIN_INITIAL: &str = "allow_join_initial_addr_port";

/// A switch the policy set, for the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchChange {
    /// Dotted, as `sysctl` spells it.
    pub name: &'static str,
    pub value: String,
    pub previous: String,
}

fn no_allow_join_initial() -> PathError {
    PathError::NoSwitch { name: ALLOW_JOIN_INITIAL, key: "paths.deny-join-initial", since: "5.14" }
}

/// Sets `net.mptcp.allow_join_initial_addr_port` to 0 when `deny`, else to 1; returns what
/// changed, if anything.
pub(super) fn set_deny_join_initial(deny: bool) -> Result<Option<SwitchChange>, PathError> {
    let previous = read(ALLOW_JOIN_INITIAL)?.ok_or_else(no_allow_join_initial)?;
    let value = if deny { "0" } else { "1" };
    if previous == value {
        return Ok(None);
    }
    let name = "net.mptcp.allow_join_initial_addr_port";
    set_sysctl(name, value)?;
    Ok(Some(SwitchChange { name, value: value.to_owned(), previous }))
}

/// `net.ipv4.tcp_wmem`: the minimum, initial and largest send buffer of a TCP socket.
const TCP_WMEM: &str = "net.ipv4.tcp_wmem";

/// Makes `max` the largest send buffer TCP sockets (and so MPTCP subflows, whose buffers the
/// MPTCP socket's follows) grow to, the initial one at most that; returns what changed.
pub(super) fn set_send_buffer_max(max: u32) -> Result<Option<SwitchChange>, PathError> {
    let [min, initial, previous_max] = tcp_wmem()?;
    let previous = format!("{min} {initial} {previous_max}");
    let value = format!("{} {} {max}", min.min(max), initial.min(max));
    if value == previous {
        return Ok(None);
    }
    set_sysctl(TCP_WMEM, &value)?;
    Ok(Some(SwitchChange { name: TCP_WMEM, value, previous }))
}

/// `net.ipv4.tcp_wmem` in the caller's network namespace: minimum, initial and largest.
pub fn tcp_wmem() -> Result<[u32; 3], PathError> {
    let path = sysctl_path(TCP_WMEM);
    let text =
        fs::read_to_string(&path).map_err(|source| PathError::Sysctl { path: path.clone(), source })?;
    let values: Option<Vec<u32>> = text.split_whitespace().map(|v| v.parse().ok()).collect();
    values.and_then(|values| values.try_into().ok()).ok_or_else(|| PathError::Sysctl {
        path,
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{:?} is not MIN DEFAULT MAX", text.trim()),
        ),
    })
}

/// The first Linux release with laminar endpoints (MPTCP_PM_ADDR_FLAG_LAMINAR).
const LAMINAR_SINCE: (u32, u32) = (6, 18);

/// Whether a kernel of `release` (as `uname -r` prints it) has laminar endpoints. The kernel
/// cannot be asked: one without the flag may keep the unknown bit and show it back, unused.
fn has_laminar(release: &str) -> bool {
    let mut numbers = release.split(['.', '-', '+']).map(|part| part.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= LAMINAR_SINCE,
        _ => false,
    }
}

/// Fails when the policy asks for something this kernel lacks: laminar endpoints, or the
/// switch behind `deny-join-initial`. Run before anything is attached.
pub fn check_features(config: &PathsConfig) -> Result<(), PathError> {
    if config.interfaces.iter().any(|i| i.role == Role::Laminar) {
        let path = Path::new("/proc/sys/kernel/osrelease");
        let release = fs::read_to_string(path)
            .map_err(|source| PathError::Sysctl { path: path.to_owned(), source })?
            .trim()
            .to_owned();
        if !has_laminar(&release) {
            return Err(PathError::NoLaminar { release });
        }
    }
    if config.deny_join_initial.is_some() && read(ALLOW_JOIN_INITIAL)?.is_none() {
        return Err(no_allow_join_initial());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laminar_endpoints_came_with_linux_6_18() {
        for release in ["6.18.44-fc-v1045", "6.18.0", "6.19-rc1", "7.0.1+"] {
            assert!(has_laminar(release), "{release}");
        }
        for release in ["6.17.9-300.fc43.x86_64", "5.15.0-91-generic", "4.19", "", "six.eighteen"] {
            assert!(!has_laminar(release), "{release}");
        }
    }
}
