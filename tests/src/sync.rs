//! The sync lab: two balancer instances, each in a namespace of its own, linked by a veth for
//! their sync daemons; a client namespace sends crafted frames into instance A.
//!
//! ```text
//!  client  c ------------ i  balancer A  s 198.51.100.1/24 ---- s 198.51.100.2/24  balancer B  i ---- d  client
//!          ab ----------- b  (backends be1, be2: fake MACs)                     (the same)  b ---- bb
//! ```
//!
//! Each instance runs `lb start` and `lb sync` as an operator would; every namespace, pin,
//! process and file is removed on drop.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    TempDir, agent,
    netns::{Netns, unique_name, veth},
};

pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 200), 80);
pub const SYNC_PORT: u16 = 7946;
pub const BACKENDS: [&str; 2] = ["be1", "be2"];

/// One balancer instance: its namespace, interfaces, configuration and sync address.
pub struct Side {
    pub ns: Netns,
    pub name: &'static str,
    /// Where the client's frames arrive (the balancer runs here).
    pub iface: String,
    /// The client's end of `iface`.
    pub client_iface: String,
    pub sync_addr: SocketAddr,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub instance: String,
}

pub struct SyncLab {
    pub client: Netns,
    pub a: Side,
    pub b: Side,
    pub key_file: PathBuf,
    dir: TempDir,
}

fn sync_addr(host: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 51, 100, host), SYNC_PORT))
}

/// Writes `bytes` to a file only its owner reads, as the sync key must be.
pub fn write_key(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))
}

impl SyncLab {
    /// The namespaces, links and files; nothing started yet.
    pub fn new(key: &[u8]) -> Result<Self> {
        let client = Netns::new("scl")?;
        let dir = TempDir::new("syn")?;
        let key_file = dir.path().join("sync.key");
        write_key(&key_file, key)?;
        let (a_ns, b_ns) = (Netns::new("sa")?, Netns::new("sb")?);
        let (a_sync, b_sync) = veth(&a_ns, "s", &b_ns, "s")?;
        a_ns.ip(&["addr", "add", "198.51.100.1/24", "dev", &a_sync])?;
        b_ns.ip(&["addr", "add", "198.51.100.2/24", "dev", &b_sync])?;
        let mut sides = Vec::new();
        for (ns, name, own, peer) in [(a_ns, "sa", 1, 2), (b_ns, "sb", 2, 1)] {
            let (iface, client_iface) = veth(&ns, "i", &client, "c")?;
            let (backend_iface, _) = veth(&ns, "b", &client, "bb")?;
            let config = dir.path().join(format!("{name}.toml"));
            let state_dir = dir.path().join(format!("{name}-state"));
            let text = config_text(&iface, &backend_iface, name, sync_addr(own), sync_addr(peer), &key_file);
            std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
            sides.push(Side {
                ns,
                name,
                iface,
                client_iface,
                sync_addr: sync_addr(own),
                config,
                state_dir,
                instance: unique_name("lbs"),
            });
        }
        let b = sides.pop().context("side b")?;
        let a = sides.pop().context("side a")?;
        Ok(Self { client, a, b, key_file, dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn config_text(
    iface: &str,
    backend_iface: &str,
    name: &str,
    listen: SocketAddr,
    peer: SocketAddr,
    key_file: &Path,
) -> String {
    let mut text = format!(
        "interfaces = [\"{iface}\"]\n\n[[vip]]\naddress = \"{VIP}\"\nbackends = [\"{}\", \"{}\"]\n",
        BACKENDS[0], BACKENDS[1]
    );
    for (index, backend) in BACKENDS.iter().enumerate() {
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{backend}\"\naddress = \"203.0.113.{}\"\ninterface = \"{backend_iface}\"\nmac = \"02:00:00:00:00:0{}\"\n",
            index + 1,
            index + 1
        ));
    }
    // One client source learns every token of the test: no per-source learning limit.
    text.push_str("\n[joins]\nlearn-rate = 0\n");
    text.push_str(&format!(
        "\n[sync]\nname = \"{name}\"\nlisten = \"{listen}\"\npeers = [\"{peer}\"]\nkey-file = \"{}\"\n",
        key_file.display()
    ));
    text
}

/// A balancer started with `lb start`; stopped, pins and all, on drop.
pub struct Running<'a> {
    side: &'a Side,
}

impl<'a> Running<'a> {
    pub fn start(side: &'a Side) -> Result<Self> {
        let config = side.config.to_str().context("config path")?;
        agent::run(&side.ns, &["lb", "start", "--config", config, "--instance", &side.instance])?;
        Ok(Self { side })
    }

    /// `mptcp-agent ARGS --instance INSTANCE` in the side's namespace.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        agent::run(&self.side.ns, &[args, &["--instance", &self.side.instance]].concat())
    }

    pub fn stats(&self) -> Result<serde_json::Value> {
        let state_dir = self.side.state_dir.to_str().context("state dir")?;
        let out = self.run(&["lb", "stats", "--json", "--state-dir", state_dir])?;
        serde_json::from_str(&out).with_context(|| format!("parsing lb stats: {out}"))
    }

    pub fn map_pin(&self, name: &str) -> PathBuf {
        agent::instance_dir(&self.side.instance).join("maps").join(name)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if agent::instance_dir(&self.side.instance).exists()
            && let Err(error) = self.run(&["lb", "stop"])
        {
            eprintln!("cleanup: {error:#}");
            let _ = std::fs::remove_dir_all(agent::instance_dir(&self.side.instance));
        }
    }
}

/// `lb sync` of a side as a child process; SIGTERM on drop, SIGKILL if it does not stop.
pub struct SyncDaemon {
    child: Option<Child>,
    stderr: PathBuf,
}

impl SyncDaemon {
    /// Starts it and waits for its first state file.
    pub fn start(side: &Side, log_dir: &Path) -> Result<Self> {
        let agent = agent::binary();
        let stderr = log_dir.join(format!("{}-sync.log", side.name));
        let log = std::fs::File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let child = side
            .ns
            .nsenter_cmd(agent.to_str().context("agent path is not UTF-8")?)
            .args(["lb", "sync", "--instance", &side.instance, "--config"])
            .arg(&side.config)
            .arg("--state-dir")
            .arg(&side.state_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning mptcp-agent lb sync")?;
        let pid = child.id();
        let mut daemon = Self { child: Some(child), stderr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(state) = daemon.state(side)?
                && state["pid"].as_u64() == Some(u64::from(pid))
            {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                bail!("lb sync exited ({status}) before writing its state:\n{}", daemon.log());
            }
            if Instant::now() > deadline {
                bail!("lb sync wrote no state within 10 s:\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its state file, if written.
    pub fn state(&self, side: &Side) -> Result<Option<serde_json::Value>> {
        match std::fs::read_to_string(side.state_dir.join("sync.json")) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).context("parsing sync.json")?)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).context("reading sync.json"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Stops it with SIGTERM as systemd does; its exit status, `None` if it had to be killed.
    pub fn stop(mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.take() {
            Some(child) => terminate(child),
            None => Ok(None),
        }
    }
}

/// SIGTERM, 5 s to exit, then SIGKILL.
fn terminate(mut child: Child) -> Result<Option<std::process::ExitStatus>> {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    Ok(None)
}

impl Drop for SyncDaemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.take()
            && let Err(error) = terminate(child)
        {
            eprintln!("cleanup: stopping lb sync: {error:#}");
        }
    }
}

/// The token table of a balancer: token -> (backend slot, origin, stored_ns).
pub fn tokens(pin: &Path) -> Result<std::collections::BTreeMap<u32, (u32, u32, u64)>> {
    let word = |bytes: &[u8], at: usize| -> Result<u32> {
        Ok(u32::from_ne_bytes(bytes.get(at..at + 4).context("short entry")?.try_into()?))
    };
    crate::kernel::map_dump(pin)?
        .into_iter()
        .map(|(key, value)| {
            let stored = u64::from_ne_bytes(value.get(8..16).context("short value")?.try_into()?);
            Ok((word(&key, 0)?, (word(&value, 0)?, word(&value, 4)?, stored)))
        })
        .collect()
}
