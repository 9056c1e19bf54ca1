//! Running the mptcp-agent binary the way an operator does, and undoing what it pinned.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{Netns, unique_name};

/// Capability numbers (linux/capability.h) the tests check processes for.
pub mod capability {
    pub const SETPCAP: u32 = 8;
    pub const NET_ADMIN: u32 = 12;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// `field` (`CapEff:`, `CapBnd:`, ...) of a /proc/PID/status text as a capability mask.
pub fn capability_mask(status: &str, field: &str) -> Result<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .with_context(|| format!("{field} missing"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

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

/// Pin directory of a dataplane instance.
pub fn instance_dir(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/mptcp").join(instance)
}

/// The daemon's files of a dataplane instance (event log, path state, ready file).
pub fn run_dir(instance: &str) -> PathBuf {
    Path::new("/run/mptcp-agent").join(instance)
}

/// Pin directory of one interface of an instance (its counters and links).
pub fn iface_dir(instance: &str, iface: &str) -> PathBuf {
    instance_dir(instance).join("ifaces").join(iface)
}

/// The link pins `attach` leaves in an interface's directory, one per hook.
const LINK_PINS: [&str; 3] = ["xdp_ingress", "tc_ingress", "tc_egress"];

/// A dataplane instance of its own attached to interfaces of one namespace; detached, pins and
/// all, on drop.
pub struct Dataplane<'a> {
    ns: &'a Netns,
    instance: String,
    ifaces: Vec<String>,
}

impl<'a> Dataplane<'a> {
    /// Attaches a fresh instance to `ifaces` with `mptcp-agent attach`.
    pub fn attach(ns: &'a Netns, ifaces: &[&str]) -> Result<Self> {
        Self::attach_with(ns, ifaces, &[])
    }

    /// [`Dataplane::attach`] with more `attach` flags (`--xdp-mode skb`, ...).
    pub fn attach_with(ns: &'a Netns, ifaces: &[&str], flags: &[&str]) -> Result<Self> {
        let mut dataplane = Self { ns, instance: unique_name("ins"), ifaces: Vec::new() };
        for iface in ifaces {
            dataplane.run(&[&["attach", "--iface", iface][..], flags].concat())?;
            dataplane.ifaces.push((*iface).to_owned());
        }
        Ok(dataplane)
    }

    /// The instance `instance` that something else (a service unit) attaches to `ifaces`:
    /// undone on drop like one this attached.
    pub fn adopt(ns: &'a Netns, instance: &str, ifaces: &[&str]) -> Self {
        Self { ns, instance: instance.to_owned(), ifaces: ifaces.iter().map(|i| (*i).to_owned()).collect() }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ns(&self) -> &Netns {
        self.ns
    }

    /// Runs `mptcp-agent ARGS --instance INSTANCE` in the namespace; fails on a non-zero exit.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        run(self.ns, &[args, &["--instance", &self.instance]].concat())
    }

    /// Runs the agent command and parses its `--json` output.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.run(&[args, &["--json"]].concat())?;
        serde_json::from_str(&out).with_context(|| format!("parsing the JSON of {args:?}: {out}"))
    }

    /// `mptcp-agent stats --iface IF --json`.
    pub fn stats(&self, iface: &str) -> Result<serde_json::Value> {
        self.json(&["stats", "--iface", iface])
    }

    /// The pin of one of the instance's shared maps (`HALF_OPEN`, ...).
    pub fn map_pin(&self, name: &str) -> PathBuf {
        instance_dir(&self.instance).join("maps").join(name)
    }

    /// The programs the instance's link pins attach, as (interface, hook, program id).
    pub fn programs(&self) -> Result<Vec<(String, String, u64)>> {
        let mut programs = Vec::new();
        for iface in &self.ifaces {
            for hook in LINK_PINS {
                let pin = iface_dir(&self.instance, iface).join(hook);
                if pin.exists() {
                    programs.push((iface.clone(), hook.to_owned(), crate::kernel::linked_program(&pin)?));
                }
            }
        }
        Ok(programs)
    }
}

/// A long-running agent process (`mptcp-agent run` of a [`Dataplane`], `lb sync`, ...); stopped
/// with SIGTERM on drop.
pub struct Daemon {
    child: Option<std::process::Child>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Starts the daemon for the dataplane's instance and interfaces with `args` added, and
    /// waits until it has configured the programs.
    pub fn start(dataplane: &Dataplane<'_>, args: &[&str]) -> Result<Self> {
        let mut full: Vec<&str> = [&["run", "--instance", &dataplane.instance][..], args].concat();
        for iface in &dataplane.ifaces {
            full.extend(["--iface", iface]);
        }
        // Ready when its ready file names it (whatever it logs, at any RUST_LOG level).
        let ready = run_dir(&dataplane.instance).join("ready");
        Self::spawn(dataplane.ns, &full, |pid| {
            std::fs::read_to_string(&ready).is_ok_and(|text| text.trim() == pid.to_string())
        })
    }

    /// Starts `mptcp-agent ARGS` in `ns` as a long-running process and waits (10 s at most)
    /// until `ready(pid)` says it is ready.
    pub fn spawn(ns: &Netns, args: &[&str], ready: impl Fn(u32) -> bool) -> Result<Self> {
        use std::io::{BufRead as _, BufReader};
        let agent = binary();
        let mut cmd = ns.nsenter_cmd(agent.to_str().context("agent path is not UTF-8")?);
        cmd.args(args);
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning mptcp-agent {args:?}"))?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let pid = child.id();
        let mut daemon = Self { child: Some(child), log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if ready(pid) {
                return Ok(daemon);
            }
            let exited = daemon.child.as_mut().map(|child| child.try_wait()).transpose()?.flatten();
            if let Some(status) = exited {
                anyhow::bail!(
                    "mptcp-agent {args:?} exited ({status}) before it was ready:\n{}",
                    daemon.log()
                );
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("mptcp-agent {args:?} was not ready within 10 s:\n{}", daemon.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM (see [`terminate`]).
    pub fn stop(mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child.take().map_or(Ok(None), terminate)
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// SIGTERM, as systemd stops a service, 5 s to exit, then SIGKILL; the exit status, `None` if
/// it had to be killed.
fn terminate(mut child: std::process::Child) -> Result<Option<std::process::ExitStatus>> {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(None)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take()
            && let Err(error) = terminate(child)
        {
            eprintln!("cleanup: stopping mptcp-agent: {error:#}");
        }
    }
}

impl Drop for Dataplane<'_> {
    fn drop(&mut self) {
        for iface in &self.ifaces {
            if iface_dir(&self.instance, iface).exists()
                && let Err(error) = self.run(&["detach", "--iface", iface])
            {
                eprintln!("cleanup: {error:#}");
            }
        }
        if instance_dir(&self.instance).exists() {
            eprintln!("cleanup: removing the pins of {} directly", self.instance);
            let _ = std::fs::remove_dir_all(instance_dir(&self.instance));
        }
        // The daemon's event log and path state.
        let _ = std::fs::remove_dir_all(run_dir(&self.instance));
    }
}
