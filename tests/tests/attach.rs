//! Attaching and detaching: pins that outlive the agent, interfaces sharing an instance's
//! tables, and a clear error with nothing left behind for every way it can go wrong.

use std::process::Command;

use anyhow::{Context as _, Result};
use mptcp_tests::{
    agent::{self, Dataplane, iface_dir, instance_dir},
    kernel,
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

fn bpftool_dump(path: &std::path::Path) -> Result<String> {
    run_stdout(Command::new("bpftool").args(["map", "dump", "pinned"]).arg(path))
}

#[test]
fn pins_outlive_the_agent_and_dump_with_field_names() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let peer = Netns::new("peer")?;
    let (iface, _) = veth(&ns, "a", &peer, "b")?;
    let before: Vec<u64> = kernel::loaded_maps()?.into_iter().map(|(id, _)| id).collect();
    // Native XDP explicitly: on veth, auto attaches the ingress program at tcx instead.
    let dataplane = Dataplane::attach_with(&ns, &[&iface], &["--xdp-mode", "native"])?;
    // The tracker's object brings only its own maps: none of the balancer's or the benchmarks'.
    let created: Vec<String> = kernel::loaded_maps()?
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .map(|(_, name)| name)
        .collect();
    assert!(created.iter().any(|name| name == "SUBFLOWS"), "no tracker maps among {created:?}");
    assert!(
        !created.iter().any(|name| name.starts_with("LB_") || name.starts_with("BASELINE")),
        "attach created maps of other objects: {created:?}"
    );
    let dir = iface_dir(dataplane.instance(), &iface);
    let maps = instance_dir(dataplane.instance()).join("maps");
    for pin in [dir.join("COUNTERS"), dir.join("xdp_ingress"), dir.join("tc_egress"), maps.join("SUBFLOWS")] {
        assert!(pin.exists(), "{} is not pinned", pin.display());
    }
    // The attach command has exited; the XDP program is still on the interface.
    assert!(ns.ip(&["link", "show", "dev", &iface])?.contains("prog/xdp"));
    let dump = bpftool_dump(&dir.join("COUNTERS"))?;
    for field in ["tcp_packets", "tcp_without_mptcp", "mp_capable", "mp_join", "dss", "malformed"] {
        assert!(dump.contains(&format!("\"{field}\"")), "bpftool dump lacks field {field}:\n{dump}");
    }

    let programs = [linked_program(&dir.join("xdp_ingress"))?, linked_program(&dir.join("tc_egress"))?];
    dataplane.run(&["detach", "--iface", &iface])?;
    assert!(!dir.exists(), "pins left after detach");
    assert!(!instance_dir(dataplane.instance()).exists(), "the last detach must remove the shared maps");
    assert!(!ns.ip(&["link", "show", "dev", &iface])?.contains("prog/xdp"), "XDP still attached");
    for id in programs {
        assert!(!program_loaded(id), "program {id} still loaded after detach");
    }
    Ok(())
}

#[test]
fn interfaces_of_one_instance_share_its_tables() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let peer = Netns::new("peer")?;
    let (first, _) = veth(&ns, "a", &peer, "b")?;
    let (second, _) = veth(&ns, "a", &peer, "b")?;
    let dataplane = Dataplane::attach(&ns, &[&first, &second])?;
    let map_id = |iface: &str| -> Result<u64> {
        let out = run_stdout(
            Command::new("bpftool")
                .args(["prog", "show", "id"])
                .arg(linked_program(&iface_dir(dataplane.instance(), iface).join("tc_egress"))?.to_string())
                .arg("--json"),
        )?;
        let prog: serde_json::Value = serde_json::from_str(&out)?;
        let subflows = run_stdout(
            Command::new("bpftool")
                .args(["map", "show", "pinned"])
                .arg(instance_dir(dataplane.instance()).join("maps/SUBFLOWS"))
                .arg("--json"),
        )?;
        let subflows: serde_json::Value = serde_json::from_str(&subflows)?;
        let id = subflows["id"].as_u64().context("map id")?;
        let used = prog["map_ids"].as_array().context("map_ids")?.iter().any(|m| m.as_u64() == Some(id));
        anyhow::ensure!(used, "the program on {iface} does not use the instance's SUBFLOWS map");
        Ok(id)
    };
    assert_eq!(map_id(&first)?, map_id(&second)?);
    // On veth, auto mode runs the ingress program at tcx ingress.
    assert!(iface_dir(dataplane.instance(), &first).join("tc_ingress").exists());
    // Detaching one interface keeps the tables for the other.
    dataplane.run(&["detach", "--iface", &first])?;
    assert!(instance_dir(dataplane.instance()).join("maps/SUBFLOWS").exists());
    dataplane.run(&["subflows"])?;
    Ok(())
}

#[test]
fn attaching_twice_and_detaching_nothing_are_clear_errors() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let peer = Netns::new("peer")?;
    let (iface, _) = veth(&ns, "a", &peer, "b")?;
    let dataplane = Dataplane::attach(&ns, &[&iface])?;
    let instance = ["--instance", dataplane.instance()];
    let error = failure(&ns, &[&["attach", "--iface", &iface][..], &instance].concat())?;
    assert!(error.contains("already attached"), "{error}");
    // The first attachment is untouched.
    dataplane.stats(&iface)?;
    dataplane.run(&["detach", "--iface", &iface])?;
    let error = failure(&ns, &[&["detach", "--iface", &iface][..], &instance].concat())?;
    assert!(error.contains("not attached"), "{error}");
    let error = failure(&ns, &[&["stats", "--iface", &iface][..], &instance].concat())?;
    assert!(error.contains("not attached"), "{error}");
    let error = failure(&ns, &[&["conns"][..], &instance].concat())?;
    assert!(error.contains("is not running"), "{error}");
    Ok(())
}

#[test]
fn a_missing_interface_and_bad_names_are_clear_errors() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    let iface = unique_name("none");
    let instance = unique_name("ins");
    let error = failure(&ns, &["attach", "--iface", &iface, "--instance", &instance])?;
    assert!(error.contains(&format!("interface {iface} does not exist")), "{error}");
    assert!(!instance_dir(&instance).exists());
    let error = failure(&ns, &["attach", "--iface", "../evil", "--instance", &instance])?;
    assert!(error.contains("invalid interface name"), "{error}");
    let error = failure(&ns, &["attach", "--iface", "lo", "--instance", "../evil"])?;
    assert!(error.contains("invalid instance name"), "{error}");
    Ok(())
}

#[test]
fn a_failed_attach_leaves_nothing_behind() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("att")?;
    // Bridges have no native XDP: the XDP step fails after the maps were created and pinned.
    let bridge = unique_name("br");
    ns.ip(&["link", "add", &bridge, "type", "bridge"])?;
    ns.ip(&["link", "set", &bridge, "up"])?;
    let instance = unique_name("ins");
    let error =
        failure(&ns, &["attach", "--iface", &bridge, "--xdp-mode", "native", "--instance", &instance])?;
    assert!(error.contains("attaching XDP"), "{error}");
    assert!(!instance_dir(&instance).exists(), "pins left after a failed attach");
    assert!(!ns.ip(&["link", "show", "dev", &bridge])?.contains("prog/xdp"));
    // Generic mode works on the same bridge.
    Dataplane::attach(&ns, &[&bridge])?;
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
    let instance = unique_name("ins");

    // A private mount namespace without the BPF filesystem.
    let out = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            r#"umount -l /sys/fs/bpf 2>/dev/null; exec nsenter --net="$0" "$1" attach --iface "$2" --instance "$3""#,
        ])
        .args([&ns.path(), agent, &iface, &instance])
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
        .args(["attach", "--iface", &iface, "--instance", &instance])
        .output()?;
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(error.contains("missing privileges") && error.contains("CAP_BPF"), "{error}");
    assert!(!instance_dir(&instance).exists());
    Ok(())
}
