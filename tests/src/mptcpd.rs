//! mptcpd, the Multipath TCP daemon Debian packages, run in a namespace for side-by-side
//! comparisons; stopped on drop.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// Where Debian installs the daemon.
pub const MPTCPD: &str = "/usr/libexec/mptcpd";

pub struct Mptcpd {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Mptcpd {
    /// Starts mptcpd in `ns` with `args` (e.g. `--path-manager=addr_adv --addr-flags=subflow`)
    /// and waits until its path manager plugins are initialised.
    pub fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        let mut child = ns
            .exec_cmd(MPTCPD)
            .arg("--log=stderr")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning mptcpd (is it installed? `cargo xtask setup`)")?;
        let stderr = child.stderr.take().context("mptcpd stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("path manager initialized") {
                    let _ = ready_tx.send(());
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mptcpd = Self { child, log };
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            bail!("mptcpd did not start:\n{}", mptcpd.log());
        }
        Ok(mptcpd)
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }
}

impl Drop for Mptcpd {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our child (`ip netns exec` execs mptcpd in place).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
