//! Attaching and detaching: pins that outlive the agent, and a clear error with nothing left
//! behind for every way it can go wrong.

use std::process::Command;

use anyhow::{Context as _, Result};
use mptcp_tests::{
    agent::{self, Attached, pin_dir},
    lock::LabLock,
    netns::{Netns, run_stdout, unique_name, veth},
};

/// Runs the agent and returns its stderr, asserting it failed.
fn failure(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = agent::output(ns, args)?;
    assert!(!out.status.success(), "mptcp-agent {args:?} unexpectedly succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Program ID behind a pinned link (`bpftool link show pinned`).
fn linked_program(path: &std::path::Path) -> Result<u64> {
    let out = run_stdout(Command::new("bpftool").args(["link", "show", "pinned"]).arg(path).arg("--json"))?;
    let link: serde_json::Value = serde_json::from_str(&out)?;
    link["prog_id"].as_u64().context("prog_id in bpftool output")
}

fn program_loaded(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
fn pins_outlive_the_agent_and_dump_with_field_names() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let peer = Netns::new("peer")?;
    let (iface, _) = veth(&ns, "a", &peer, "b")?;
    let attached = Attached::new(&ns, &iface)?;
    let dir = pin_dir(&iface);
    for pin in ["maps/COUNTERS", "links/xdp_ingress", "links/tc_egress"] {
        assert!(dir.join(pin).exists(), "{pin} is not pinned");
    }
    // The attach command has exited; the XDP program is still on the interface.
    assert!(ns.ip(&["link", "show", "dev", &iface])?.contains("prog/xdp"));
    let dump =
        run_stdout(Command::new("bpftool").args(["map", "dump", "pinned"]).arg(dir.join("maps/COUNTERS")))?;
    for field in ["tcp_packets", "tcp_without_mptcp", "mp_capable", "mp_join", "dss", "malformed"] {
        assert!(dump.contains(&format!("\"{field}\"")), "bpftool dump lacks field {field}:\n{dump}");
    }

    let programs =
        [linked_program(&dir.join("links/xdp_ingress"))?, linked_program(&dir.join("links/tc_egress"))?];
    agent::run(&ns, &["detach", "--iface", &iface])?;
    assert!(!dir.exists(), "pins left after detach");
    assert!(!ns.ip(&["link", "show", "dev", &iface])?.contains("prog/xdp"), "XDP still attached");
    for id in programs {
        assert!(!program_loaded(id), "program {id} still loaded after detach");
    }
    drop(attached);
    Ok(())
}

#[test]
fn attaching_twice_and_detaching_nothing_are_clear_errors() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let peer = Netns::new("peer")?;
    let (iface, _) = veth(&ns, "a", &peer, "b")?;
    let attached = Attached::new(&ns, &iface)?;
    let error = failure(&ns, &["attach", "--iface", &iface])?;
    assert!(error.contains("already attached"), "{error}");
    // The first attachment is untouched.
    attached.stats()?;
    drop(attached);
    let error = failure(&ns, &["detach", "--iface", &iface])?;
    assert!(error.contains("not attached"), "{error}");
    let error = failure(&ns, &["stats", "--iface", &iface])?;
    assert!(error.contains("not attached"), "{error}");
    Ok(())
}

#[test]
fn a_missing_interface_is_a_clear_error() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let iface = unique_name("none");
    let error = failure(&ns, &["attach", "--iface", &iface])?;
    assert!(error.contains(&format!("interface {iface} does not exist")), "{error}");
    assert!(!pin_dir(&iface).exists());
    let error = failure(&ns, &["attach", "--iface", "../evil"])?;
    assert!(error.contains("invalid interface name"), "{error}");
    Ok(())
}

#[test]
fn a_failed_attach_leaves_nothing_behind() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    // Bridges have no native XDP: the XDP step fails after the maps were pinned.
    let bridge = unique_name("br");
    ns.ip(&["link", "add", &bridge, "type", "bridge"])?;
    ns.ip(&["link", "set", &bridge, "up"])?;
    let error = failure(&ns, &["attach", "--iface", &bridge, "--xdp-mode", "native"])?;
    assert!(error.contains("attaching XDP"), "{error}");
    assert!(!pin_dir(&bridge).exists(), "pins left after a failed attach");
    assert!(!ns.ip(&["link", "show", "dev", &bridge])?.contains("prog/xdp"));
    // Generic mode works on the same bridge.
    Attached::new(&ns, &bridge)?;
    Ok(())
}

#[test]
fn no_bpffs_and_no_privileges_are_named() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let peer = Netns::new("peer")?;
    let (iface, _) = veth(&ns, "a", &peer, "b")?;
    let agent = agent::binary();
    let agent = agent.to_str().context("agent path")?;

    // A private mount namespace without the BPF filesystem.
    let out = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            r#"umount -l /sys/fs/bpf 2>/dev/null; exec nsenter --net="$0" "$1" attach --iface "$2""#,
        ])
        .args([&ns.path(), agent, &iface])
        .output()?;
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(error.contains("no BPF filesystem mounted at /sys/fs/bpf"), "{error}");

    // An unprivileged user.
    let out = ns
        .nsenter_cmd("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            agent,
        ])
        .args(["attach", "--iface", &iface])
        .output()?;
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(error.contains("missing privileges") && error.contains("CAP_BPF"), "{error}");
    assert!(!pin_dir(&iface).exists());
    Ok(())
}
