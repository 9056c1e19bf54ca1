//! What the kernel itself reports about MPTCP: `ss -M` sockets and `ip mptcp monitor` events,
//! the reference the dataplane's tables are compared with.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};

use crate::netns::Netns;

/// An MPTCP subflow socket as `ss -tniM` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelSubflow {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The local end's token of the connection.
    pub token: u32,
    /// ss flags: `M` MP_CAPABLE, `J` MP_JOIN, `b`/`B` local/remote backup, ...
    pub flags: String,
}

/// An address as ss prints it: `addr:port`, `[v6]:port`, or with `%dev`.
pub fn parse_addr(text: &str) -> Option<SocketAddr> {
    text.parse().ok().or_else(|| {
        // ss prints IPv6 as [addr]:port, which parses, or addr:port; and a socket bound to a
        // device (a subflow from an endpoint with `dev`) as addr%dev:port.
        let (addr, port) = text.rsplit_once(':')?;
        let addr = addr.split('%').next()?.trim_matches(['[', ']']);
        Some(SocketAddr::new(addr.parse().ok()?, port.parse().ok()?))
    })
}

/// Established TCP subflows of MPTCP connections in `ns` (`ss -tniM state established`).
pub fn subflows(ns: &Netns) -> Result<Vec<KernelSubflow>> {
    let out = ns.exec("ss", &["-tniM", "state", "established"])?;
    let mut subflows = Vec::new();
    let mut socket: Option<(SocketAddr, SocketAddr)> = None;
    for line in out.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Socket lines: Netid Recv-Q Send-Q Local Peer; detail lines are indented.
        if !line.starts_with(char::is_whitespace) {
            let mut addrs = fields.iter().filter_map(|f| parse_addr(f));
            socket = addrs.next().zip(addrs.next());
            continue;
        }
        let Some((local, peer)) = socket else { continue };
        if !line.contains("tcp-ulp-mptcp") {
            continue;
        }
        let token = fields
            .iter()
            .find_map(|f| f.strip_prefix("token:"))
            .and_then(|t| t.split('/').nth(1))
            .and_then(|t| t.split('(').next())
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .context("no token in an ss subflow line")?;
        let flags = fields.iter().find_map(|f| f.strip_prefix("flags:")).unwrap_or("").to_owned();
        subflows.push(KernelSubflow { local, peer, token, flags });
    }
    Ok(subflows)
}

/// Tokens of the MPTCP sockets established in `ns` (`ss -Mni`), the local end's.
pub fn connection_tokens(ns: &Netns) -> Result<Vec<u32>> {
    let out = ns.exec("ss", &["-Mni", "state", "established"])?;
    Ok(out
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("token:"))
        .filter_map(|t| u32::from_str_radix(t, 16).ok())
        .collect())
}

/// An endpoint of the in-kernel path manager as `ip -j mptcp endpoint show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEndpoint {
    pub id: u64,
    pub addr: IpAddr,
    /// signal, subflow, backup, fullmesh, implicit, laminar: those set.
    pub flags: Vec<String>,
    pub dev: Option<String>,
}

impl KernelEndpoint {
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// The in-kernel path manager's endpoints in `ns`.
pub fn endpoints(ns: &Netns) -> Result<Vec<KernelEndpoint>> {
    let out = ns.ip(&["-j", "mptcp", "endpoint", "show"])?;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(out.trim()).context("ip -j mptcp endpoint show")?;
    list.iter()
        .map(|entry| {
            let mut flags: Vec<String> = ["signal", "subflow", "backup", "fullmesh", "implicit"]
                .into_iter()
                .filter(|flag| entry[*flag] == true)
                .map(str::to_owned)
                .collect();
            // iproute2 older than Linux 6.18's laminar flag (bit 5) prints it as `rawflags 20`.
            let raw = entry["rawflags"].as_str().and_then(|hex| u32::from_str_radix(hex, 16).ok());
            if entry["laminar"] == true || raw.is_some_and(|bits| bits & 0x20 != 0) {
                flags.push("laminar".to_owned());
            }
            Ok(KernelEndpoint {
                id: entry["id"].as_u64().context("endpoint id")?,
                addr: entry["address"].as_str().context("endpoint address")?.parse()?,
                flags,
                dev: entry["dev"].as_str().map(str::to_owned),
            })
        })
        .collect()
}

/// The network namespace's SNMP and extended counters (`nstat -saz`), MPTcpExt* included.
pub fn counters(ns: &Netns) -> Result<BTreeMap<String, u64>> {
    let out = ns.exec("nstat", &["-saz", "-j"])?;
    let json: serde_json::Value = serde_json::from_str(&out).context("nstat -j")?;
    Ok(json["kernel"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| Some((name.clone(), value.as_u64()?)))
        .collect())
}

/// A running `ip mptcp monitor`; its events are parsed on demand.
pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

/// One `ip mptcp monitor` event: its kind and `key=value` fields.
#[derive(Debug, Clone)]
pub struct MonitorEvent {
    pub kind: String,
    pub fields: BTreeMap<String, String>,
}

impl MonitorEvent {
    pub fn token(&self) -> Option<u32> {
        self.fields.get("token").and_then(|t| u32::from_str_radix(t, 16).ok())
    }

    /// The event's (local, remote) ends, from saddr/daddr and sport/dport.
    pub fn ends(&self) -> Option<(SocketAddr, SocketAddr)> {
        let addr = |prefix: &str| {
            self.fields
                .get(&format!("{prefix}4"))
                .or_else(|| self.fields.get(&format!("{prefix}6")))?
                .parse()
                .ok()
        };
        let port = |key: &str| self.fields.get(key)?.parse().ok();
        Some((
            SocketAddr::new(addr("saddr")?, port("sport")?),
            SocketAddr::new(addr("daddr")?, port("dport")?),
        ))
    }
}

impl Monitor {
    pub fn start(ns: &Netns) -> Result<Self> {
        let mut child = ns
            .exec_cmd("ip")
            .args(["mptcp", "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning ip mptcp monitor")?;
        let stdout = child.stdout.take().context("monitor stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut lines) = sink.lock() {
                    lines.push(line);
                }
            }
        });
        // Traffic must not start before it has joined the events' multicast group (a fixed
        // sleep of 200 ms was too short once in CI: it saw no event at all).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !subscribed(child.id()) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "ip mptcp monitor did not subscribe to the MPTCP events within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(Self { child, lines })
    }

    /// The events seen so far.
    pub fn events(&self) -> Vec<MonitorEvent> {
        let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
        lines
            .iter()
            .filter_map(|line| {
                let (kind, rest) = line.trim().strip_prefix('[')?.split_once(']')?;
                let fields = rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                Some(MonitorEvent { kind: kind.trim().to_owned(), fields })
            })
            .collect()
    }
}

/// Whether process `pid` holds a generic netlink socket (protocol 16) that has joined a
/// multicast group: `/proc/PID/net/netlink` (its namespace's sockets) joined with its open fds.
fn subscribed(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| Some(link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned()))
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")) else { return false };
    table.lines().skip(1).any(|row| {
        let columns: Vec<&str> = row.split_whitespace().collect();
        // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        columns.len() >= 10
            && columns[1] == "16"
            && !columns[3].trim_start_matches('0').is_empty()
            && inodes.iter().any(|inode| inode == columns[9])
    })
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's SNMP and extended counters in `ns` (`nstat -asz`): `TcpExtTCPSynRetrans`,
/// `MPTcpExtMPJoinAckRx`, ...
pub fn nstat(ns: &Netns) -> Result<BTreeMap<String, u64>> {
    let out = ns.exec("nstat", &["-asz"])?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((name.to_owned(), value))
        })
        .collect())
}

/// IDs and names of every BPF map loaded on the host (`bpftool map show`): diffed around a load,
/// what an object created.
pub fn loaded_maps() -> Result<Vec<(u64, String)>> {
    let out =
        crate::netns::run_stdout(std::process::Command::new("bpftool").args(["map", "show", "--json"]))?;
    let maps: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool map show --json")?;
    Ok(maps
        .iter()
        .filter_map(|map| Some((map["id"].as_u64()?, map["name"].as_str().unwrap_or("").to_owned())))
        .collect())
}

fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let out = crate::netns::run_stdout(std::process::Command::new("bpftool").args(args).arg("--json"))?;
    serde_json::from_str(&out).with_context(|| format!("bpftool {args:?}"))
}

fn pin_str(pin: &std::path::Path) -> Result<&str> {
    pin.to_str().with_context(|| format!("{} is not UTF-8", pin.display()))
}

/// The id of the program a pinned BPF link attaches.
pub fn linked_program(pin: &std::path::Path) -> Result<u64> {
    bpftool_json(&["link", "show", "pinned", pin_str(pin)?])?["prog_id"]
        .as_u64()
        .with_context(|| format!("no prog_id for the link pinned at {}", pin.display()))
}

/// A pinned map's capacity (`max_entries`).
pub fn map_max_entries(pin: &std::path::Path) -> Result<u64> {
    bpftool_json(&["map", "show", "pinned", pin_str(pin)?])?["max_entries"]
        .as_u64()
        .with_context(|| format!("no max_entries for the map pinned at {}", pin.display()))
}

/// The entries a pinned map holds now.
pub fn map_entries(pin: &std::path::Path) -> Result<u64> {
    let dump = bpftool_json(&["map", "dump", "pinned", pin_str(pin)?])?;
    Ok(dump.as_array().with_context(|| format!("the dump of {} is not a list", pin.display()))?.len() as u64)
}

/// Every entry of a pinned map as key and value bytes (`bpftool map dump`'s hex bytes).
pub fn map_dump(pin: &std::path::Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let dump = bpftool_json(&["map", "dump", "pinned", pin_str(pin)?])?;
    let bytes = |value: &serde_json::Value| -> Result<Vec<u8>> {
        value
            .as_array()
            .context("not a list of bytes")?
            .iter()
            .map(|byte| {
                let text = byte.as_str().context("not a hex byte")?;
                u8::from_str_radix(text.trim_start_matches("0x"), 16).with_context(|| text.to_owned())
            })
            .collect()
    };
    dump.as_array()
        .with_context(|| format!("the dump of {} is not a list", pin.display()))?
        .iter()
        .map(|entry| Ok((bytes(&entry["key"])?, bytes(&entry["value"])?)))
        .collect::<Result<_>>()
        .with_context(|| format!("the dump of {}", pin.display()))
}

/// A program's run statistics: kept by the kernel while statistics are enabled ([`BpfStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgramRuns {
    /// What ran between `before` and these.
    pub fn since(self, before: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(before.run_cnt),
        }
    }

    pub fn plus(self, other: Self) -> Self {
        Self { run_time_ns: self.run_time_ns + other.run_time_ns, run_cnt: self.run_cnt + other.run_cnt }
    }

    /// Mean time of one run (one packet), if any ran.
    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// Program `id`'s run statistics (`bpftool prog show`; absent, hence zero, while the kernel has
/// never kept them).
pub fn program_runs(id: u64) -> Result<ProgramRuns> {
    let prog = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    let field = |name: &str| prog[name].as_u64().unwrap_or(0);
    Ok(ProgramRuns { run_time_ns: field("run_time_ns"), run_cnt: field("run_cnt") })
}

/// BPF run statistics on, for every program on the host, while this lives: the descriptor of
/// bpf(BPF_ENABLE_STATS), so they go off with the process even if it is killed, and the
/// `kernel.bpf_stats_enabled` sysctl others may set is left alone.
pub struct BpfStats {
    _fd: std::os::fd::OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        use std::os::fd::FromRawFd as _;
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // union bpf_attr's enable_stats member: one u32, the statistics type.
        let attr = [BPF_STATS_RUN_TIME, 0, 0, 0];
        // SAFETY: bpf(2) reads size_of_val(&attr) bytes of attr.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), std::mem::size_of_val(&attr))
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
        }
        // SAFETY: a descriptor the kernel just returned to us alone.
        Ok(Self { _fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) } })
    }
}
