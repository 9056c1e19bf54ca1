//! `sync.json`: what the sync daemon writes every second and `lb stats` reads.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{SyncCounters, SyncError, wire::Summary};
use crate::bpf::{Instance, RUN_ROOT};

/// The state directory of the sync daemon of balancer `instance`, unless `--state-dir` says.
pub fn default_state_dir(instance: &Instance) -> PathBuf {
    Path::new(RUN_ROOT).join(format!("lb-{}", instance.name))
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("sync.json")
}

/// The sync daemon's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub pid: u32,
    /// False in the last state a daemon writes as it stops.
    pub running: bool,
    pub updated_unix_ms: u64,
    pub name: String,
    pub listen: SocketAddr,
    pub counters: SyncCounters,
    pub peers: Vec<PeerState>,
}

/// A peer: configured (by address), heard from (by name), or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    /// From its heartbeats; `None` until one arrived.
    pub name: Option<String>,
    pub address: SocketAddr,
    /// Heard within the last 3 s.
    pub up: bool,
    pub ms_since_heard: Option<u64>,
    /// Its last heartbeat's summary.
    pub counters: Option<Summary>,
}

impl SyncState {
    /// Writes it whole: a temporary file renamed over the last one, so readers never see half.
    /// The directory is created owner-only.
    pub fn write(&self, dir: &Path) -> Result<(), SyncError> {
        fn error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + use<> {
            let path = path.to_owned();
            move |source| SyncError::State { what, path, source }
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(error("creating", dir))?;
        let path = state_path(dir);
        let temporary = path.with_extension("json.tmp");
        let text = serde_json::to_string(self)
            .map_err(|source| SyncError::ParseState { path: path.clone(), source })?;
        fs::write(&temporary, text + "\n").map_err(error("writing", &temporary))?;
        fs::rename(&temporary, &path).map_err(error("renaming into", &path))
    }

    /// The state in `dir`; `None` when no daemon wrote one.
    pub fn read(dir: &Path) -> Result<Option<Self>, SyncError> {
        let path = state_path(dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SyncError::State { what: "reading", path, source }),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| SyncError::ParseState { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_as_written() {
        let state = SyncState {
            pid: 1,
            running: true,
            updated_unix_ms: 2,
            name: "lb-a".into(),
            listen: "198.51.100.1:7946".parse().unwrap(),
            counters: SyncCounters { late: 4, ..SyncCounters::default() },
            peers: vec![PeerState {
                name: Some("lb-b".into()),
                address: "198.51.100.2:7946".parse().unwrap(),
                up: true,
                ms_since_heard: Some(300),
                counters: Some(Summary { tokens_learned: 5, ..Summary::default() }),
            }],
        };
        let dir = std::env::temp_dir().join(format!("mptcp-sync-state-{}", std::process::id()));
        assert_eq!(SyncState::read(&dir).unwrap(), None);
        state.write(&dir).unwrap();
        let read = SyncState::read(&dir);
        let mode = fs::metadata(&dir).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.unwrap(), Some(state));
        assert_eq!(mode.unwrap() & 0o777, 0o700);
    }
}
