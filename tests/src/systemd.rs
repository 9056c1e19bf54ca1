//! A throwaway systemd: PID 1 of a private PID and mount namespace, booting only the units a
//! test writes, so the agent's real units run under real systemd on a host whose init is not
//! systemd. The host is never touched: `/etc` and `/usr/local` are overlays whose writes stay in
//! a scratch directory, `/run`, `/tmp` and `/var/log` are private tmpfs, and the host's own unit
//! enablement is hidden. Only `/run/netns` (so units can join a lab's namespace through
//! `NetworkNamespacePath=`), `/run/mptcp-agent` (the daemon's run files), the agent binary under
//! test and the BPF file system are shared. Killing PID 1 (on drop) ends every process and mount in it.

use std::{
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{TempDir, netns::run};

/// What PID 1 boots: nothing but itself (units a test starts by name).
const BOOT_TARGET: &str =
    "[Unit]\nDescription=mptcp-tests boot\nDefaultDependencies=no\nWants=systemd-journald.service\n";

/// Prepares the mounts (see the module's comment), then execs systemd as PID 1.
const BOOT_SCRIPT: &str = r#"set -eu
s=$1
mkdir -p "$s/etc.upper" "$s/etc.work" "$s/usr.upper" "$s/usr.work" "$s/netns" "$s/agent" /run/netns /run/mptcp-agent
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$s/etc.upper,workdir=$s/etc.work" /etc
mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$s/usr.upper,workdir=$s/usr.work" /usr/local
[ "$(stat -f -c %T /etc)" = overlayfs ] || { echo "/etc is not the overlay" >&2; exit 1; }
find /etc/systemd/system -mindepth 1 -delete
printf '%s' "$2" > /etc/systemd/system/mptcp-tests-boot.target
mount --rbind /run/netns "$s/netns"
mount --rbind /run/mptcp-agent "$s/agent"
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns /run/mptcp-agent
mount --move "$s/netns" /run/netns
mount --move "$s/agent" /run/mptcp-agent
# The binary under test, wherever it was built (often below /tmp, which is hidden next).
mkdir -p /run/mptcp-tests && touch /run/mptcp-tests/mptcp-agent
mount --bind "$3" /run/mptcp-tests/mptcp-agent
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/log
exec env container=mptcp-tests /lib/systemd/systemd --system --unit=mptcp-tests-boot.target --log-target=console
"#;

pub struct SystemdHost {
    init: Child,
    pid: u32,
    _scratch: TempDir,
}

impl SystemdHost {
    /// Where the agent binary `boot` was given is seen inside.
    pub const AGENT: &str = "/run/mptcp-tests/mptcp-agent";

    /// Boots it, with the agent binary `agent` at [`Self::AGENT`], and waits until its manager
    /// answers `systemctl`.
    pub fn boot(agent: &Path) -> Result<Self> {
        ensure!(
            Path::new("/lib/systemd/systemd").exists(),
            "systemd is not installed (/lib/systemd/systemd)"
        );
        let scratch = TempDir::new("sysd")?;
        let scratch_path = scratch.path().to_str().context("scratch path is not UTF-8")?.to_owned();
        let log = std::fs::File::create(scratch.path().join("boot.log"))?;
        let init = Command::new("unshare")
            .args([
                "--fork",
                "--pid",
                "--mount",
                "--propagation",
                "private",
                "--mount-proc",
                "--net",
                "--uts",
            ])
            .args(["bash", "-c", BOOT_SCRIPT, "boot", &scratch_path, BOOT_TARGET])
            .arg(agent)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting systemd under unshare")?;
        let unshare = init.id();
        let mut host = Self { init, pid: 0, _scratch: scratch };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // PID 1 of the new namespace is unshare's child.
            let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next().and_then(|pid| pid.parse().ok()) {
                host.pid = pid;
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd"
                    && host
                        .command("systemctl")
                        .args(["is-active", "mptcp-tests-boot.target"])
                        .output()?
                        .status
                        .success()
                {
                    return Ok(host);
                }
            }
            if let Some(status) = host.init.try_wait()? {
                bail!("systemd exited during boot ({status}): {}", host.boot_log());
            }
            if Instant::now() > deadline {
                bail!("systemd did not boot in 20 s: {}", host.boot_log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn boot_log(&self) -> String {
        std::fs::read_to_string(self._scratch.path().join("boot.log")).unwrap_or_default()
    }

    /// `program` in its mount and PID namespaces (its /etc, /usr/local and /run).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-m", "-p", program]);
        cmd
    }

    /// `program args` in it; fails with its stderr on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        self.run("systemctl", args)
    }

    /// One property of a unit (`systemctl show -p NAME --value`).
    pub fn property(&self, unit: &str, name: &str) -> Result<String> {
        Ok(self.systemctl(&["show", "-p", name, "--value", unit])?.trim().to_owned())
    }

    /// The unit's state and journal, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        let status = self.command("systemctl").args(["status", "--no-pager", "-n", "0", unit]).output();
        let status = status
            .map_or_else(|error| error.to_string(), |out| String::from_utf8_lossy(&out.stdout).into_owned());
        let journal = self.run("journalctl", &["--no-pager", "-o", "cat", "-u", unit]);
        format!("{status}\n{}", journal.unwrap_or_else(|error| format!("{error:#}")))
    }

    /// Writes `contents` to `path` in its file system (the /etc overlay, say) with `mode`.
    pub fn write(&self, path: &str, contents: &[u8], mode: &str) -> Result<()> {
        let script = "mkdir -p \"$(dirname \"$1\")\" && umask 077 && cat > \"$1\" && chmod \"$2\" \"$1\"";
        let mut child = self
            .command("sh")
            .args(["-c", script, "write", path, mode])
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("writing {path}"))?;
        child.stdin.take().context("stdin")?.write_all(contents)?;
        ensure!(child.wait()?.success(), "writing {path} failed");
        Ok(())
    }

    /// Waits until `check` holds, for at most `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        while !check()? {
            if Instant::now() > deadline {
                bail!("{what}: not within {limit:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        // Stop the units first: their ExecStop= (the balancer's `lb stop`) undoes what they pinned.
        if self.pid != 0 {
            let _ = self.command("systemctl").args(["stop", "mptcp-agent-*"]).output();
            // SIGKILL to PID 1 of a PID namespace kills everything in it.
            let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
        }
        // unshare reaps its child and exits; killed first, it would leave PID 1 a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.init.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.init.kill();
        let _ = self.init.wait();
    }
}
