//! Token and flow sync between balancer instances behind the same routers: the MP_CAPABLE third
//! ACK of a connection and its MP_JOINs usually reach different instances, so each instance
//! sends what it learned (tokens, confirmed flows) to its peers, which store it by the rule the
//! program follows for its own learns. Backend changes travel the same way.
//!
//! [`wire`] is the datagram format; [`daemon`] is `lb sync`; [`command`] sends a backend change
//! to every peer; [`state`] is the daemon's state file, which `lb stats` reads.

pub mod command;
pub mod daemon;
pub mod state;
pub mod wire;

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use self::{command::*, daemon::*, state::*};
use super::{SteeringError, SyncConfig};
use crate::bpf::LoaderError;

/// The shortest key accepted: HMAC-SHA256's block of strength.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("reading the sync key {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the sync key {path} holds {len} bytes; at least {MIN_KEY_BYTES} are needed")]
    ShortKey { path: PathBuf, len: usize },
    #[error("the sync key {path} is readable by group or others (mode {mode:o}): `chmod 600` it")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("the configuration has no [sync] section")]
    NotConfigured,
    #[error("sync name {0:?}: 1 to 60 bytes of letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("UDP socket {address}")]
    Socket {
        address: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}")]
    State {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {path}")]
    ParseState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Steering(#[from] SteeringError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("the sync ring buffer")]
    Ring(#[source] io::Error),
    #[error("installing the SIGTERM and SIGINT handlers")]
    Signal(#[source] io::Error),
}

/// The group's shared key.
#[derive(Clone)]
pub struct SyncKey(Vec<u8>);

impl std::fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncKey({} bytes)", self.0.len())
    }
}

impl SyncKey {
    /// The key file's bytes as they are; refused when short or readable by group or others.
    pub fn load(path: &Path) -> Result<Self, SyncError> {
        let read_error = |source| SyncError::ReadKey { path: path.to_owned(), source };
        let mode = std::fs::metadata(path).map_err(read_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SyncError::KeyMode { path: path.to_owned(), mode: mode & 0o777 });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(SyncError::ShortKey { path: path.to_owned(), len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What `lb backend` commands add to the instance's name: a sender of their own (see [`command`]).
const COMMAND_SUFFIX: &str = ".cmd";

/// This instance's name among its peers: `[sync] name`, else the host name.
pub fn sync_name(config: &SyncConfig) -> Result<String, SyncError> {
    let name = match &config.name {
        Some(name) => name.clone(),
        None => host_name(),
    };
    let valid = !name.is_empty()
        && name.len() <= wire::MAX_NAME - COMMAND_SUFFIX.len()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(SyncError::BadName(name));
    }
    Ok(name)
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// The sync daemon's own counters: in its state file and in its heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCounters {
    pub datagrams_sent: u64,
    pub entries_sent: u64,
    /// Datagrams that verified.
    pub datagrams_received: u64,
    pub entries_received: u64,
    /// Tokens and flows stored, commands applied.
    pub entries_applied: u64,
    pub tokens_stored: u64,
    pub tokens_refreshed: u64,
    pub tokens_replaced: u64,
    /// Synced tokens refused because a live entry gives them to another backend.
    pub collisions: u64,
    /// Synced tokens a join had named before they arrived: the join beat the sync.
    pub late: u64,
    pub flows_stored: u64,
    /// Synced flows this instance held already.
    pub flows_known: u64,
    pub commands_applied: u64,
    pub commands_failed: u64,
    /// Entries naming a backend this instance does not have.
    pub unknown_backends: u64,
    /// Entries with values no instance sends (a flow of family 5).
    pub invalid_entries: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub truncated: u64,
    pub oversized: u64,
    pub wrong_version: u64,
    /// Not a sync datagram, or an authenticated body that does not decode.
    pub malformed: u64,
    /// Ring events the queue to the sender had no room for.
    pub queue_drops: u64,
    pub send_errors: u64,
    pub receive_errors: u64,
    /// Map reads and writes that failed.
    pub map_errors: u64,
}

impl SyncCounters {
    fn rejected(&mut self, rejection: wire::Rejection) {
        use wire::Rejection::*;
        let counter = match rejection {
            Truncated => &mut self.truncated,
            Oversized => &mut self.oversized,
            BadMagic | Malformed => &mut self.malformed,
            WrongVersion => &mut self.wrong_version,
            Unauthenticated => &mut self.auth_failures,
            Replayed => &mut self.replays,
        };
        *counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_refused_when_short_or_readable_by_others() {
        let dir = std::env::temp_dir().join(format!("mptcp-sync-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sync.key");
        let write = |bytes: &[u8], mode: u32| {
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            SyncKey::load(&path).map(|key| key.bytes().len()).map_err(|error| error.to_string())
        };
        let good = write(&[7; 32], 0o600);
        let short = write(&[7; 31], 0o600);
        let group = write(&[7; 64], 0o640);
        let other = write(&[7; 64], 0o604);
        let missing = SyncKey::load(&dir.join("absent")).map(|_| ()).map_err(|error| error.to_string());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(good, Ok(32));
        let shown = path.display().to_string();
        for refused in [short, group, other] {
            assert!(refused.as_ref().is_err_and(|error| error.contains(&shown)), "{refused:?}");
        }
        assert!(missing.is_err_and(|error| error.contains("absent")));
    }

    #[test]
    fn sync_names_are_checked() {
        let config = |name: &str| SyncConfig {
            name: Some(name.to_owned()),
            listen: "198.51.100.1:7946".parse().unwrap(),
            peers: vec!["198.51.100.2:7946".parse().unwrap()],
            key_file: PathBuf::from("/nonexistent"),
        };
        assert_eq!(sync_name(&config("lb-a.dc1")).ok().as_deref(), Some("lb-a.dc1"));
        for bad in ["", "a b", "a/b", &"n".repeat(61)] {
            assert!(sync_name(&config(bad)).is_err(), "{bad:?}");
        }
    }
}
