//! One lab at a time on a machine: the tests and the demo take this lock, and whoever takes it
//! removes what a killed earlier run left behind.

use std::{fs::File, os::fd::AsRawFd as _, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::netns::{PREFIX, run_stdout};

const LOCK_PATH: &str = "/run/lock/mptcp-dataplane-lab.lock";
const PIN_ROOT: &str = "/sys/fs/bpf/mptcp";

/// Held while a lab exists; released on drop.
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Blocks until no other lab runs, then removes leftovers of crashed runs.
    pub fn acquire() -> Result<Self> {
        let file = File::create(LOCK_PATH).with_context(|| format!("creating {LOCK_PATH}"))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("flock");
        }
        remove_leftovers()?;
        Ok(Self { _file: file })
    }
}

/// Namespaces and pins carrying the harness prefix belong to no live lab once the lock is held.
fn remove_leftovers() -> Result<()> {
    let namespaces = run_stdout(Command::new("ip").args(["netns", "list"]))?;
    for name in namespaces.lines().filter_map(|line| line.split_whitespace().next()) {
        if name.starts_with(PREFIX) {
            eprintln!("removing leftover namespace {name}");
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    // Instances the harness created; removing their link pins detaches what is still attached.
    if let Ok(entries) = std::fs::read_dir(PIN_ROOT) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                eprintln!("removing leftover pins {}", entry.path().display());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let _ = std::fs::remove_dir(Path::new(PIN_ROOT));
    }
    Ok(())
}
