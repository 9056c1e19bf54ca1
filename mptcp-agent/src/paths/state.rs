//! The daemon's path state file, `paths.json`: the manager rewrites it on every change, and
//! `mptcp-agent paths` reads it back.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{PathError, policy::ConnectionInfo};
use crate::{
    bpf::Instance,
    config::{PathMode, PathsConfig, PmKind, PortRange, Role},
};

/// Where the daemon of `instance` keeps its path state.
pub fn state_path(instance: &Instance) -> PathBuf {
    instance.run_dir().join("paths.json")
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathState {
    pub updated_ns: u64,
    pub policy: Policy,
    /// The interface carrying the traffic in backup and single-path modes.
    pub primary: Option<String>,
    pub connections: Vec<ConnectionState>,
}

/// The configuration as the state file, the event log and `paths` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub pm: PmKind,
    pub mode: PathMode,
    pub server: bool,
    pub fullmesh: bool,
    pub ndiffports: u8,
    pub max_subflows: u8,
    pub add_addr_accepted: u8,
    pub make_before_break: bool,
    /// `deny-join-initial`: `None` leaves the kernel's switch as it is.
    #[serde(default)]
    pub deny_join_initial: Option<bool>,
    /// `send-buffer-max` in bytes: `None` leaves `net.ipv4.tcp_wmem` as it is.
    #[serde(default)]
    pub send_buffer_max: Option<u32>,
    pub interfaces: Vec<InterfacePolicy>,
    /// `[[paths.rule]]` in file order; `paths` and the connections number them from 1.
    #[serde(default)]
    pub rules: Vec<RulePolicy>,
}

/// A `[[paths.rule]]`: what it matches, and the mode and interfaces it gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulePolicy {
    pub dport: Option<PortRange>,
    pub sport: Option<PortRange>,
    pub cgroup: Option<String>,
    pub process: Option<String>,
    pub mode: PathMode,
    pub interfaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfacePolicy {
    pub name: String,
    pub role: Role,
}

/// A connection the userspace path manager follows, named by its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    pub token: String,
    #[serde(flatten)]
    pub connection: ConnectionInfo,
}

impl Policy {
    pub fn new(config: &PathsConfig) -> Self {
        Self {
            pm: config.pm,
            mode: config.mode,
            server: config.server,
            fullmesh: config.fullmesh(),
            ndiffports: config.ndiffports(),
            max_subflows: config.max_subflows(),
            add_addr_accepted: config.add_addr_accepted(),
            make_before_break: config.make_before_break,
            deny_join_initial: config.deny_join_initial,
            send_buffer_max: config.send_buffer_max(),
            interfaces: config
                .interfaces
                .iter()
                .map(|i| InterfacePolicy { name: i.name().to_owned(), role: i.role })
                .collect(),
            rules: config
                .rules
                .iter()
                .map(|rule| {
                    let rule = rule.get_ref();
                    RulePolicy {
                        dport: rule.dport,
                        sport: rule.sport,
                        cgroup: rule.cgroup.clone(),
                        process: rule.process.as_ref().map(|p| p.get_ref().clone()),
                        mode: rule.mode,
                        interfaces: rule.interfaces.get_ref().iter().map(|n| n.get_ref().clone()).collect(),
                    }
                })
                .collect(),
        }
    }
}

impl PathState {
    /// Replaces the file at once (write, then rename), so a reader never sees half of it.
    pub fn write(&self, path: &Path) -> Result<(), PathError> {
        let error = |source| PathError::State { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(error)?;
        }
        let partial = path.with_extension("json.partial");
        fs::write(&partial, serde_json::to_vec_pretty(self).map_err(io::Error::from).map_err(error)?)
            .map_err(error)?;
        fs::rename(&partial, path).map_err(error)
    }

    /// The file; `None` when there is none: no daemon with `[paths]` runs.
    pub fn read(path: &Path) -> Result<Option<Self>, PathError> {
        let error = |source| PathError::StateRead { path: path.to_owned(), source };
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(error(source)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| error(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::AgentConfig,
        paths::policy::{Attempt, SubflowInfo},
    };

    fn state() -> PathState {
        let config = AgentConfig::parse(
            "[paths]\npm = \"userspace\"\nmode = \"single-path\"\n[[paths.interface]]\nname = \"eth0\"\n\
             [[paths.interface]]\nname = \"wwan0\"\nrole = \"backup\"\n\
             [[paths.rule]]\ndport = \"5200-5299\"\nmode = \"full\"\ninterfaces = [\"wwan0\", \"eth0\"]\n",
        )
        .unwrap();
        let connection = ConnectionInfo {
            local: Some("192.0.2.1:40000".parse().unwrap()),
            remote: Some("203.0.113.2:443".parse().unwrap()),
            server_side: false,
            subflows: vec![SubflowInfo {
                local: "192.0.2.1:40000".parse().unwrap(),
                remote: "203.0.113.2:443".parse().unwrap(),
                local_id: 0,
                backup: false,
            }],
            pending: vec![Attempt { addr: "198.51.100.1".parse().unwrap(), backup: true, at_ns: 7 }],
            failed: Vec::new(),
            announced: Vec::new(),
            rule: Some(1),
        };
        PathState {
            updated_ns: 42,
            policy: Policy::new(config.paths().unwrap()),
            primary: Some("eth0".into()),
            connections: vec![ConnectionState { token: "0x0000abcd".into(), connection }],
        }
    }

    #[test]
    fn the_file_reads_back_as_written() {
        let dir = std::env::temp_dir().join(format!("mptcp-agent-state-{}", std::process::id()));
        let path = dir.join("paths.json");
        assert_eq!(PathState::read(&path).unwrap(), None);
        state().write(&path).unwrap();
        let read = PathState::read(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read, Some(state()));
    }

    #[test]
    fn a_file_that_does_not_parse_is_an_error() {
        let dir = std::env::temp_dir().join(format!("mptcp-agent-bad-state-{}", std::process::id()));
        let path = dir.join("paths.json");
        fs::create_dir_all(&dir).unwrap();
        fs::write(&path, "{\"policy\": 1}").unwrap();
        let read = PathState::read(&path);
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(read, Err(PathError::StateRead { .. })), "{read:?}");
    }

    #[test]
    fn the_file_keeps_its_keys() {
        let json = serde_json::to_value(state()).unwrap();
        assert_eq!(json["policy"]["mode"], "single-path");
        assert_eq!(json["policy"]["pm"], "userspace");
        assert_eq!(
            json["policy"]["rules"][0],
            serde_json::json!({"dport": "5200-5299", "sport": null, "cgroup": null, "process": null,
                               "mode": "full", "interfaces": ["wwan0", "eth0"]})
        );
        assert_eq!(json["connections"][0]["rule"], 1);
        assert_eq!(json["policy"]["interfaces"][1], serde_json::json!({"name": "wwan0", "role": "backup"}));
        assert_eq!(json["primary"], "eth0");
        let connection = &json["connections"][0];
        assert_eq!(connection["token"], "0x0000abcd");
        assert_eq!(connection["remote"], "203.0.113.2:443");
        assert_eq!(connection["subflows"][0]["local_id"], 0);
        assert_eq!(connection["pending"][0]["backup"], true);
    }
}
