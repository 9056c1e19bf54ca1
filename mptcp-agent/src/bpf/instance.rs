//! Instances: one dataplane on a host, whose interfaces share its tables (an MPTCP connection
//! spans interfaces). It lives under `/sys/fs/bpf/mptcp/INSTANCE/`: `maps/NAME` for the shared
//! maps, per interface `ifaces/IFACE/` with its counters and links, and `sock_ops`, the cgroup
//! link of coupled congestion control. The daemon's files are under `/run/mptcp-agent/INSTANCE/`.

use std::{
    fs::{self, DirBuilder},
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData};
use mptcp_common::maps::COUNTERS_MAP;

use super::*;
use crate::report::Chain;

/// Directory of this project's pins on the BPF filesystem.
pub const PIN_ROOT: &str = "/sys/fs/bpf/mptcp";
/// Directory of the daemons' files, one folder per instance.
pub const RUN_ROOT: &str = "/run/mptcp-agent";
/// The instance commands use unless told otherwise.
pub const DEFAULT_INSTANCE: &str = "default";

/// The pins of one dataplane instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub dir: PathBuf,
}

/// Interface names become path components: accept only what the kernel accepts (IFNAMSIZ).
fn check_iface(iface: &str) -> Result<(), LoaderError> {
    if iface.is_empty()
        || iface.len() > 15
        || iface == "."
        || iface == ".."
        || iface.contains(['/', '\0'])
        || iface.chars().any(char::is_whitespace)
    {
        return Err(LoaderError::InvalidInterfaceName(iface.to_owned()));
    }
    Ok(())
}

impl Instance {
    pub fn new(name: &str) -> Result<Self, LoaderError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(LoaderError::InvalidInstanceName(name.to_owned()));
        }
        Ok(Self { name: name.to_owned(), dir: Path::new(PIN_ROOT).join(name) })
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    /// Pin path of the shared map `name`.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub(crate) fn ifaces_dir(&self) -> PathBuf {
        self.dir.join("ifaces")
    }

    /// Directory of one interface's counters and links.
    pub fn iface_dir(&self, iface: &str) -> Result<PathBuf, LoaderError> {
        check_iface(iface)?;
        Ok(self.ifaces_dir().join(iface))
    }

    /// Interfaces the instance is attached to (none when it has no interface directory).
    pub fn interfaces(&self) -> Result<Vec<String>, LoaderError> {
        let dir = self.ifaces_dir();
        let io_error = |source| LoaderError::Io { what: "listing", path: dir.clone(), source };
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(error)),
        };
        let mut ifaces = Vec::new();
        for entry in entries {
            ifaces.push(entry.map_err(io_error)?.file_name().to_string_lossy().into_owned());
        }
        ifaces.sort();
        Ok(ifaces)
    }

    pub fn exists(&self) -> bool {
        self.maps_dir().exists()
    }

    /// Where the daemon of the instance keeps its files (event log, path state).
    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_ROOT).join(&self.name)
    }

    /// The pinned link of the instance's sock_ops program (coupled congestion control).
    pub fn sock_ops_link(&self) -> PathBuf {
        self.dir.join("sock_ops")
    }

    fn open(path: PathBuf) -> Result<Map, LoaderError> {
        MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .map_err(|source| LoaderError::Map { path, source })
    }

    /// Opens the shared map `name`; `NoInstance` when nothing is pinned.
    pub fn open_map(&self, name: &str) -> Result<Map, LoaderError> {
        if !self.exists() {
            return Err(LoaderError::NoInstance { instance: self.name.clone(), dir: self.dir.clone() });
        }
        Self::open(self.map_path(name))
    }

    /// Opens the counters of `iface`; `NotAttached` when it has no pins.
    pub fn open_counters(&self, iface: &str) -> Result<Map, LoaderError> {
        let dir = self.iface_dir(iface)?;
        if !dir.exists() {
            return Err(LoaderError::NotAttached { iface: iface.to_owned(), dir });
        }
        Self::open(dir.join(COUNTERS_MAP))
    }
}

/// Mode of every directory of pins: the programs trust what the maps hold (CONFIG,
/// HMAC_VERDICTS), so only the owner may reach them, whatever kernel.unprivileged_bpf_disabled says.
const PIN_DIR_MODE: u32 = 0o700;

/// Creates `path` and its missing parents, private to the owner (see [`PIN_DIR_MODE`]); an
/// existing `path` (an older agent's) is made private too.
pub(crate) fn create_dir(path: &Path) -> Result<(), LoaderError> {
    DirBuilder::new()
        .recursive(true)
        .mode(PIN_DIR_MODE)
        .create(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(PIN_DIR_MODE)))
        .map_err(|source| LoaderError::Io { what: "creating", path: path.to_owned(), source })
}

/// Creates `path`, private to the owner; fails if it exists (an atomic claim).
pub(super) fn create_new_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(PIN_DIR_MODE).create(path)
}

/// An instance being created: removed with everything in it unless `keep` is called.
pub(crate) struct Claim {
    instance: Instance,
    kept: bool,
}

impl Claim {
    /// Creates the instance's directories; fails if the instance exists.
    pub(crate) fn new(instance: &Instance) -> Result<Self, LoaderError> {
        create_dir(&instance.dir)?;
        create_new_dir(&instance.maps_dir()).map_err(|source| LoaderError::Io {
            what: "creating",
            path: instance.maps_dir(),
            source,
        })?;
        create_dir(&instance.ifaces_dir())?;
        Ok(Self { instance: instance.clone(), kept: false })
    }

    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.kept {
            // A rollback: report what could not be undone, undo the rest.
            let undo = || -> Result<(), LoaderError> {
                for iface in self.instance.interfaces()? {
                    if let Err(error) = detach_dir(&self.instance.iface_dir(&iface)?) {
                        log::warn!("rolling back {iface}: {}", Chain(&error));
                    }
                }
                remove_instance(&self.instance)
            };
            if let Err(error) = undo() {
                log::warn!("rolling back instance {}: {}", self.instance.name, Chain(&error));
            }
        }
    }
}

/// Removes an instance's pins (its links must be detached already).
pub(crate) fn remove_instance(instance: &Instance) -> Result<(), LoaderError> {
    if instance.dir.exists() {
        fs::remove_dir_all(&instance.dir).map_err(|source| LoaderError::Io {
            what: "removing",
            path: instance.dir.clone(),
            source,
        })?;
    }
    remove_root_if_empty();
    Ok(())
}

/// The project's pin directory goes with its last instance; while another instance lives in it
/// the removal fails (ENOTEMPTY), which is the point.
pub(super) fn remove_root_if_empty() {
    let _ = fs::remove_dir(PIN_ROOT);
}
