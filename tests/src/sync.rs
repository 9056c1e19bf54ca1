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
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    TempDir,
    agent::{self, Daemon},
    balancer::Balancer,
    netns::{Netns, veth},
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
}

pub struct SyncLab {
    pub client: Netns,
    pub a: Side,
    pub b: Side,
    pub key_file: PathBuf,
    /// Holds the key and the configurations; removed on drop.
    _dir: TempDir,
}

fn sync_addr(host: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 51, 100, host), SYNC_PORT))
}

/// Writes `bytes` to a new file only its owner reads, as the sync key must be.
pub fn write_key(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, bytes).with_context(|| format!("writing {}", path.display()))
}

/// 32 random bytes: a fresh sync key.
pub fn random_key() -> Result<[u8; 32]> {
    use std::io::Read as _;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key).context("reading /dev/urandom")?;
    Ok(key)
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
            let text = config_text(&iface, &backend_iface, name, sync_addr(own), sync_addr(peer), &key_file);
            std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
            sides.push(Side { ns, name, iface, client_iface, sync_addr: sync_addr(own), config });
        }
        let b = sides.pop().context("side b")?;
        let a = sides.pop().context("side a")?;
        Ok(Self { client, a, b, key_file, _dir: dir })
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

/// `mptcp-agent lb sync` next to a balancer, its state in the default place
/// (`/run/mptcp-agent/lb-INSTANCE/sync.json`, which `lb stats` reads); SIGTERM on drop.
pub struct SyncDaemon {
    daemon: Option<Daemon>,
    state: PathBuf,
}

impl SyncDaemon {
    /// Starts it and waits until it wrote its first state (naming its own pid).
    pub fn start(balancer: &Balancer<'_>) -> Result<Self> {
        let state = agent::run_dir(&format!("lb-{}", balancer.instance())).join("sync.json");
        let args = ["lb", "sync", "--config", balancer.config_arg()?, "--instance", balancer.instance()];
        let daemon = Daemon::spawn(balancer.ns(), &args, |pid| {
            read_state(&state).is_ok_and(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        })?;
        Ok(Self { daemon: Some(daemon), state })
    }

    /// Its state file (`sync.json`).
    pub fn state(&self) -> Result<serde_json::Value> {
        read_state(&self.state)
    }

    /// Waits (bounded) until `ready(state)` holds.
    pub fn wait_for(
        &self,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = self.state()?;
            if ready(&state) {
                return Ok(state);
            }
            ensure!(Instant::now() < deadline, "sync: {what} not within 10 s: {state}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Stops it with SIGTERM, as systemd does: its exit status (`None` if it had to be killed)
    /// and the last state it wrote.
    pub fn stop(mut self) -> Result<(Option<std::process::ExitStatus>, serde_json::Value)> {
        let status = self.daemon.take().map_or(Ok(None), Daemon::stop)?;
        Ok((status, self.state()?))
    }

    /// Kills it with SIGKILL, as a host's death would.
    pub fn kill(mut self) -> Result<()> {
        self.daemon.take().map_or(Ok(()), Daemon::kill)
    }
}

impl Drop for SyncDaemon {
    fn drop(&mut self) {
        drop(self.daemon.take());
        if let Some(dir) = self.state.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn read_state(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
