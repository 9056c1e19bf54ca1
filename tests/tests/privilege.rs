//! Least privilege: once loaded, the daemon keeps only the capabilities it uses, in every thread;
//! the pins the programs trust and the event log (which holds the connections' keys) are private
//! to root; an unprivileged local user can read none of it and change nothing.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    admission::forged_join_fails_under_verified,
    agent::{self, Daemon, Dataplane, capability, capability_mask, instance_dir, run_dir},
    lab::{DualHomedLab, LabOptions},
    lock::LabLock,
    netns::Netns,
    traffic::{Proto, Server},
};

/// The unprivileged user tests act as.
const NOBODY: &str = "65534";

/// `program args` run in `ns` as user and group nobody, with `caps` (setpriv syntax, e.g.
/// "+bpf") as its inheritable and ambient capabilities.
fn as_nobody(ns: &Netns, caps: &str, program: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = ns.nsenter_cmd("setpriv");
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"]);
    if !caps.is_empty() {
        cmd.args(["--inh-caps", caps, "--ambient-caps", caps]);
    }
    cmd.arg(program).args(args).output().with_context(|| format!("setpriv {program}"))
}

fn denied(output: &Output, what: &str) -> Result<String> {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        !output.status.success(),
        "{what} succeeded as nobody: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(stderr)
}

fn mode(path: &Path) -> Result<(u32, u32)> {
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((meta.permissions().mode() & 0o7777, meta.uid()))
}

#[test]
fn an_unprivileged_user_can_neither_read_the_keys_nor_touch_the_maps() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let daemon = Daemon::start(&dataplane, &["--admission", "verified"])?;

    // Every thread of the running daemon: CAP_BPF only (no path manager configured), nothing
    // in the bounding, inheritable or ambient sets beyond it, and no_new_privs.
    let pid = daemon.pid().context("daemon pid")?;
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))?.collect::<Result<_, _>>()?;
    ensure!(!tasks.is_empty(), "no threads under /proc/{pid}/task");
    for task in &tasks {
        let status = std::fs::read_to_string(task.path().join("status"))?;
        let context = || format!("thread {:?} of the daemon:\n{status}", task.file_name());
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            ensure!(
                capability_mask(&status, field)? == 1 << capability::BPF,
                "{field} is not CAP_BPF alone: {}",
                context()
            );
        }
        for field in ["CapInh:", "CapAmb:"] {
            ensure!(capability_mask(&status, field)? == 0, "{field} not empty: {}", context());
        }
        ensure!(status.lines().any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])), "{}", context());
    }

    // With those alone it still judges: the forged join is flagged, real joins verified.
    let server = Server::start(&lab.server, lab.server_addr(0, 5611), Proto::Mptcp, 1)?;
    forged_join_fails_under_verified(&lab, &dataplane, server)?;

    let instance = instance_dir(dataplane.instance());
    for dir in [
        instance.clone(),
        instance.join("maps"),
        instance.join("ifaces"),
        instance.join("ifaces").join(ifaces[0]),
    ] {
        ensure!(mode(&dir)? == (0o700, 0), "{} is not root's alone: {:o}", dir.display(), mode(&dir)?.0);
    }
    for pin in std::fs::read_dir(instance.join("maps"))? {
        let pin = pin?.path();
        ensure!(mode(&pin)? == (0o600, 0), "{} is not root's alone: {:o}", pin.display(), mode(&pin)?.0);
    }
    let log = run_dir(dataplane.instance()).join("events.jsonl");
    let text = std::fs::read_to_string(&log)?;
    ensure!(text.contains("\"sender_key\""), "the log holds no keys, so this test proves nothing:\n{text}");
    ensure!(mode(&log)? == (0o600, 0), "{} mode {:o}", log.display(), mode(&log)?.0);

    // As nobody: the log is unreadable; the agent names what it lacks; bpftool cannot open a
    // pin, not even with CAP_BPF (the directories are root's).
    let stderr =
        denied(&as_nobody(&lab.server, "", "cat", &[log.to_str().context("path")?])?, "reading the log")?;
    ensure!(stderr.contains("Permission denied"), "{stderr}");
    let agent = agent::binary();
    let agent = agent.to_str().context("agent path")?;
    let conns = ["conns", "--instance", dataplane.instance()];
    let stderr = denied(&as_nobody(&lab.server, "", agent, &conns)?, "mptcp-agent conns")?;
    ensure!(stderr.contains("CAP_BPF"), "{stderr}");
    let detach = ["detach", "--instance", dataplane.instance(), "--iface", ifaces[0]];
    denied(&as_nobody(&lab.server, "", agent, &detach)?, "mptcp-agent detach")?;
    let config = instance.join("maps").join("CONFIG");
    let config = config.to_str().context("path")?;
    for caps in ["", "+bpf"] {
        let output = as_nobody(&lab.server, caps, "bpftool", &["map", "dump", "pinned", config])?;
        let stderr = denied(&output, &format!("bpftool map dump with caps {caps:?}"))?;
        // bpftool statfs()es the pin's directory first and reports the EACCES as "not in bpf
        // file system"; without CAP_BPF the bpf() call itself is refused.
        let refused = ["Permission denied", "Operation not permitted", "not in bpf file system"];
        ensure!(refused.iter().any(|r| stderr.contains(r)), "{stderr}");
        // With CAP_BPF the bpf() call is allowed: what refuses it is the pins' modes.
        ensure!(caps.is_empty() || !stderr.contains("Operation not permitted"), "{stderr}");
    }
    drop(daemon);
    // bpftool as root still reads it: the denials above are about who asks.
    let dump = Command::new("bpftool").args(["map", "dump", "pinned", config]).output()?;
    ensure!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    Ok(())
}
