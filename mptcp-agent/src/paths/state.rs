//! The daemon's path state file, `paths.json`: the manager rewrites it on every change, and
//! `mptcp-agent paths` reads it back.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::{bpf::loader::Instance, config::PathsConfig};

/// Where the daemon of `instance` keeps its path state.
pub fn state_path(instance: &Instance) -> PathBuf {
    instance.run_dir().join("paths.json")
}

/// The configuration as the state file and `paths` show it.
pub(super) fn policy_json(config: &PathsConfig) -> Value {
    json!({
        "pm": config.pm,
        "mode": config.mode,
        "server": config.server,
        "fullmesh": config.fullmesh(),
        "ndiffports": config.ndiffports(),
        "max_subflows": config.max_subflows(),
        "add_addr_accepted": config.add_addr_accepted(),
        "make_before_break": config.make_before_break,
        "interfaces": config.interfaces.iter().map(|i| json!({"name": i.name(), "role": i.role})).collect::<Vec<_>>(),
    })
}
