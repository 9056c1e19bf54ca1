//! Running the mptcp-agent binary the way an operator does, and undoing what it pinned.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// The agent binary: `$MPTCP_AGENT_BIN`, else the workspace's debug build.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MPTCP_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/mptcp-agent");
    assert!(
        path.exists(),
        "the agent binary is missing at {}: run `cargo xtask test`, which builds it, or `cargo build -p mptcp-agent`",
        path.display()
    );
    path
}

/// Runs the agent with `args` in the network namespace `ns` (host mounts, so /sys/fs/bpf is the
/// host's) and returns its output whatever the exit status.
pub fn output(ns: &Netns, args: &[&str]) -> Result<Output> {
    let agent = binary();
    ns.nsenter_cmd(agent.to_str().context("agent path is not UTF-8")?)
        .args(args)
        .output()
        .with_context(|| format!("running the agent with {args:?}"))
}

/// Runs the agent and returns its stdout; fails with its stderr on a non-zero exit.
pub fn run(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = output(ns, args)?;
    if !out.status.success() {
        bail!("mptcp-agent {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pin directory of an interface.
pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/mptcp").join(iface)
}

/// The dataplane attached to one interface; detached (or its pins removed) on drop.
pub struct Attached<'a> {
    ns: &'a Netns,
    iface: String,
}

impl<'a> Attached<'a> {
    pub fn new(ns: &'a Netns, iface: &str) -> Result<Self> {
        run(ns, &["attach", "--iface", iface])?;
        Ok(Self { ns, iface: iface.to_owned() })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// `mptcp-agent stats --iface IF --json`, parsed.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let out = run(self.ns, &["stats", "--iface", &self.iface, "--json"])?;
        serde_json::from_str(&out).context("parsing stats JSON")
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if pin_dir(&self.iface).exists()
            && let Err(error) = run(self.ns, &["detach", "--iface", &self.iface])
        {
            eprintln!("cleanup: {error:#}; removing the pins directly");
            let _ = std::fs::remove_dir_all(pin_dir(&self.iface));
        }
    }
}
