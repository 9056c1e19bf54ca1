//! Packet captures with tcpdump, read back with tshark (the reference MPTCP dissector).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{Netns, run_stdout};

/// A running tcpdump; stopped (and its file flushed) by [`Capture::stop`] or on drop.
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
}

impl Capture {
    /// Captures TCP on `iface` inside `ns` into `path`, 256 bytes of each packet (headers and
    /// options); returns once tcpdump listens.
    pub fn start(ns: &Netns, iface: &str, path: &Path) -> Result<Self> {
        Self::start_with_snaplen(ns, iface, path, 256)
    }

    /// [`Capture::start`] keeping `snaplen` bytes of each packet (0: all of it, which payload
    /// checks such as DSS checksums need).
    pub fn start_with_snaplen(ns: &Netns, iface: &str, path: &Path, snaplen: u32) -> Result<Self> {
        let snaplen = snaplen.to_string();
        let mut child = ns
            .exec_cmd("tcpdump")
            // Immediate mode: without it packets still in the ring buffer at SIGINT are lost.
            // A 16 MiB buffer: whole packets fill the default 2 MiB one in bursts.
            .args(["-i", iface, "-n", "--immediate-mode", "-U", "-B", "16384", "-s", &snaplen, "-w"])
            .arg(path)
            .arg("tcp")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning tcpdump (is it installed? `cargo xtask setup`)")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let capture = Self { child: Some(child), path: path.to_owned() };
        // tcpdump may first name the link type (`-i any`: "data link type LINUX_SLL2").
        let mut said = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(line)) if said.len() < 4 => said.push(line),
                other => bail!("tcpdump on {iface} did not start: {said:?} {other:?}"),
            }
        }
        // Drain the rest of stderr so tcpdump never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(capture)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops tcpdump and waits until it has written everything.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    bail!("tcpdump did not stop");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `tshark -r FILE -T fields -e F1 -e F2 ...`: one row per packet, one column per field;
/// repeated fields come comma-separated. MPTCP mapping analysis (reinjections) is on.
pub fn tshark_fields(path: &Path, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    tshark_fields_with_prefs(
        path,
        &["mptcp.analyze_mappings:TRUE", "mptcp.intersubflows_retransmission:TRUE"],
        fields,
    )
}

/// [`tshark_fields`] with Wireshark preferences set (`-o NAME:VALUE` each).
pub fn tshark_fields_with_prefs(path: &Path, prefs: &[&str], fields: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(path).args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"]);
    for pref in prefs {
        cmd.args(["-o", pref]);
    }
    for field in fields {
        cmd.args(["-e", field]);
    }
    let out = run_stdout(&mut cmd)?;
    Ok(out.lines().map(|line| line.split('\t').map(str::to_owned).collect()).collect())
}
