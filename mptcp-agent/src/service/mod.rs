//! Running the agent as a service: the systemd units, the example configurations and the Grafana
//! dashboard, embedded in the binary so that `mptcp-agent install` puts in place exactly what
//! this build was tested with.
//!
//! Layout on the host:
//! - `PREFIX/bin/mptcp-agent`
//! - `/etc/systemd/system/mptcp-agent-{daemon,lb,lb-sync}@.service` and the sandbox they share,
//!   `mptcp-agent-.service.d/10-sandbox.conf`
//! - `/etc/mptcp-agent/INSTANCE.toml` (daemon), `lb-INSTANCE.toml` (balancer), the sync key;
//!   `examples/` beside them, rewritten by every install, never the operator's own files
//! - `PREFIX/share/mptcp-agent/grafana/mptcp-dataplane.json`, the dashboard over the metrics
//! - `PREFIX/share/mptcp-agent/grafana/mptcp-dataplane.json`

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Where the binary's path goes in a unit.
const BIN_PLACEHOLDER: &str = "@BIN@";

/// A file `install` writes: where under the root, its mode, and its contents (units with
/// `@BIN@` still in them).
struct Asset {
    path: &'static str,
    mode: u32,
    contents: &'static str,
}

const UNIT_DIR: &str = "etc/systemd/system";
const CONFIG_DIR: &str = "etc/mptcp-agent";

const UNITS: &[Asset] = &[
    Asset {
        path: "mptcp-agent-daemon@.service",
        mode: 0o644,
        contents: include_str!("../../../deploy/systemd/mptcp-agent-daemon@.service"),
    },
    Asset {
        path: "mptcp-agent-lb@.service",
        mode: 0o644,
        contents: include_str!("../../../deploy/systemd/mptcp-agent-lb@.service"),
    },
    Asset {
        path: "mptcp-agent-lb-sync@.service",
        mode: 0o644,
        contents: include_str!("../../../deploy/systemd/mptcp-agent-lb-sync@.service"),
    },
    Asset {
        path: "mptcp-agent-lb-metrics@.service",
        mode: 0o644,
        contents: include_str!("../../../deploy/systemd/mptcp-agent-lb-metrics@.service"),
    },
    Asset {
        path: "mptcp-agent-.service.d/10-sandbox.conf",
        mode: 0o644,
        contents: include_str!("../../../deploy/systemd/mptcp-agent-.service.d/10-sandbox.conf"),
    },
];

const DASHBOARD_PATH: &str = "share/mptcp-agent/grafana/mptcp-dataplane.json";
const DASHBOARD: &str = include_str!("../../../deploy/grafana/mptcp-dataplane.json");

/// The example of each configuration file, by the name the units read.
pub const EXAMPLE_DAEMON_CONFIG: &str = include_str!("../../../deploy/etc/daemon.toml");
pub const EXAMPLE_LB_CONFIG: &str = include_str!("../../../deploy/etc/lb.toml");

const EXAMPLES: &[Asset] = &[
    Asset { path: "examples/daemon.toml", mode: 0o644, contents: EXAMPLE_DAEMON_CONFIG },
    Asset { path: "examples/lb.toml", mode: 0o644, contents: EXAMPLE_LB_CONFIG },
];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("finding this executable")]
    CurrentExe(#[source] io::Error),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the prefix {} is not absolute", .0.display())]
    RelativePrefix(PathBuf),
}

/// What `install` did, file by file.
#[derive(Debug, serde::Serialize)]
pub struct Installed {
    pub files: Vec<PathBuf>,
    /// The units' names, for `systemctl enable`.
    pub units: Vec<&'static str>,
}

/// A unit with the binary's installed path in it.
pub fn render_unit(contents: &str, binary: &Path) -> String {
    contents.replace(BIN_PLACEHOLDER, &binary.display().to_string())
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    let io = |what| move |source| InstallError::Io { what, path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("creating the directory of"))?;
    }
    // Through a temporary file and a rename: a running service's binary is never half-written.
    let temporary = path.with_extension("install-tmp");
    fs::write(&temporary, contents).map_err(io("writing"))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode)).map_err(io("setting the mode of"))?;
    fs::rename(&temporary, path).map_err(io("replacing"))
}

/// Installs this executable, the units, the examples and the dashboard under `root` (`/`, or a
/// staging directory for a package), the binary and the dashboard under `prefix`.
pub fn install(root: &Path, prefix: &Path) -> Result<Installed, InstallError> {
    let relative_prefix =
        prefix.strip_prefix("/").map_err(|_| InstallError::RelativePrefix(prefix.to_owned()))?;
    let binary = prefix.join("bin/mptcp-agent");
    let exe = std::env::current_exe().map_err(InstallError::CurrentExe)?;
    let mut files = Vec::new();
    let target = root.join(relative_prefix).join("bin/mptcp-agent");
    let bytes =
        fs::read(&exe).map_err(|source| InstallError::Io { what: "reading", path: exe.clone(), source })?;
    write(&target, &bytes, 0o755)?;
    files.push(target);
    for unit in UNITS {
        let path = root.join(UNIT_DIR).join(unit.path);
        write(&path, render_unit(unit.contents, &binary).as_bytes(), unit.mode)?;
        files.push(path);
    }
    let dashboard = root.join(relative_prefix).join(DASHBOARD_PATH);
    write(&dashboard, DASHBOARD.as_bytes(), 0o644)?;
    files.push(dashboard);
    let config_dir = root.join(CONFIG_DIR);
    for example in EXAMPLES {
        let path = config_dir.join(example.path);
        write(&path, example.contents.as_bytes(), example.mode)?;
        files.push(path);
    }
    Ok(Installed {
        files,
        units: UNITS.iter().map(|unit| unit.path).filter(|path| path.ends_with(".service")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::AgentConfig, lb::LbConfig};

    #[test]
    fn the_examples_parse() {
        let daemon = AgentConfig::parse(EXAMPLE_DAEMON_CONFIG).unwrap();
        assert_eq!(daemon.interfaces, ["eth0"]);
        let lb = LbConfig::parse(EXAMPLE_LB_CONFIG, "lb.toml").unwrap();
        assert_eq!(lb.backends.len(), 2);
    }

    #[test]
    fn every_unit_runs_the_installed_binary() {
        for unit in UNITS.iter().filter(|unit| unit.path.ends_with(".service")) {
            let rendered = render_unit(unit.contents, Path::new("/opt/bin/mptcp-agent"));
            assert!(!rendered.contains(BIN_PLACEHOLDER), "{}", unit.path);
            assert!(rendered.contains("ExecStart=/opt/bin/mptcp-agent "), "{}", unit.path);
        }
    }
}
