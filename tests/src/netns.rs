//! Network namespaces and the commands run in them, removed on drop (panics included).

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd as _,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, Result, bail};

/// Prefix of every namespace and interface the harness creates, so leftovers of a killed run can
/// be found and removed (see [`crate::lock::LabLock`]).
pub const PREFIX: &str = "mpt";

/// A short name unique to this process and call: `{PREFIX}{tag}{pid:04x}{n:02x}`. Interface names
/// must fit in 15 bytes, so `tag` should be at most 4 characters.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{PREFIX}{tag}{:04x}{:02x}", std::process::id() & 0xffff, n & 0xff);
    debug_assert!(name.len() <= 15, "{name} is too long for an interface name");
    name
}

/// Runs a command to completion; fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd.stdin(Stdio::null()).output().with_context(|| format!("spawning {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}

/// Runs a command and returns its stdout as text.
pub fn run_stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout).into_owned())
}

/// A named network namespace (`ip netns`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after `tag` with loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = unique_name(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_stdout(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command run inside the namespace with `ip netns exec` (its own mount namespace, with
    /// /sys remounted for the network namespace).
    pub fn exec_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program ARGS...` inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run_stdout(self.exec_cmd(program).args(args))
    }

    /// A command that enters only the network namespace, keeping the caller's mounts: what the
    /// agent needs to see the host's BPF filesystem.
    pub fn nsenter_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path())).arg(program);
        cmd
    }

    /// Limits what `iface` sends to `mbit` Mbit/s with a token bucket (TBF) whose tail-drop
    /// queue holds `queue_ms` at that rate: a bottleneck as TCP expects one.
    pub fn limit_rate(&self, iface: &str, mbit: u32, queue_ms: u32) -> Result<()> {
        let (rate, latency) = (format!("{mbit}mbit"), format!("{queue_ms}ms"));
        self.exec(
            "tc",
            &[
                "qdisc", "add", "dev", iface, "root", "tbf", "rate", &rate, "burst", "32kb", "latency",
                &latency,
            ],
        )
        .map(drop)
    }

    /// Source routing: what leaves from `from` (an address or prefix) goes via `gateway` on
    /// `iface`, through routing table `table`.
    pub fn route_from(&self, from: &str, gateway: IpAddr, iface: &str, table: u32) -> Result<()> {
        let family = if gateway.is_ipv4() { "-4" } else { "-6" };
        let (gateway, table) = (gateway.to_string(), table.to_string());
        self.ip(&[family, "route", "add", "default", "via", &gateway, "dev", iface, "table", &table])?;
        self.ip(&[family, "rule", "add", "from", from, "table", &table]).map(drop)
    }

    /// Adds `addr/prefix` to `iface` (IPv6 without duplicate address detection).
    pub fn add_addr(&self, iface: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        let cidr = format!("{addr}/{prefix}");
        match addr {
            IpAddr::V4(_) => self.ip(&["addr", "add", &cidr, "dev", iface])?,
            IpAddr::V6(_) => self.ip(&["addr", "add", &cidr, "dev", iface, "nodad"])?,
        };
        Ok(())
    }

    /// Interfaces created in the namespace from now on skip duplicate address detection: their
    /// link-local addresses, which neighbour discovery needs, are usable at once instead of after
    /// a second or two.
    pub fn no_dad(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.default.accept_dad", "0")
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]).map(drop)
    }

    /// Runs `f` on a new thread that has entered the namespace; sockets it creates belong to the
    /// namespace and can be used from any thread afterwards.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<T>> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        let handle = thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        });
        Ok(handle)
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn(f)?.join().map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep the namespace (and its veths) alive.
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let own = std::process::id() as i32;
                if let Ok(pid) = pid.parse::<i32>()
                    && pid != own
                {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        });
        if let Err(error) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cleanup: {error:#}");
        }
    }
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::from([a, b, c, d])
}

pub fn v6(segments: [u16; 8]) -> IpAddr {
    IpAddr::from(segments)
}

/// Connects two namespaces with a veth pair and returns the two interface names.
pub fn veth(a: &Netns, a_tag: &str, b: &Netns, b_tag: &str) -> Result<(String, String)> {
    let (a_if, b_if) = (unique_name(a_tag), unique_name(b_tag));
    run(Command::new("ip").args([
        "link",
        "add",
        &a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &b_if,
        "netns",
        b.name(),
    ]))?;
    a.ip(&["link", "set", &a_if, "up"])?;
    b.ip(&["link", "set", &b_if, "up"])?;
    Ok((a_if, b_if))
}
