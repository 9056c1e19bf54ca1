//! `cargo xtask test`: every check the project has, in order of cost. Nothing is skipped: a
//! missing capability is an error that names it.

use std::process::Command;

use anyhow::{Result, ensure};

use crate::{
    fuzz,
    setup::setup,
    util::{build_agent, cargo, is_root, run},
};

pub fn test() -> Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "mptcp-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for the BPF target, with the nightly toolchain.
    run(Command::new("cargo")
        .current_dir(crate::util::workspace_root())
        .args(["+nightly", "clippy", "-p", "mptcp-ebpf", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"]))?;
    run(cargo().args(["test", "--workspace", "--exclude", "mptcp-tests", "--exclude", "mptcp-ebpf"]))?;
    let agent = build_agent(false)?;
    ensure!(
        is_root(),
        "the integration tests create network namespaces and load eBPF programs: run them as root"
    );
    run(cargo()
        .args(["test", "-p", "mptcp-tests", "--", "--test-threads=1"])
        .env("MPTCP_AGENT_BIN", &agent))?;
    fuzz_smoke()
}

/// Every fuzz target built and run for a few seconds, so none can rot; the long runs are
/// `cargo xtask fuzz --target NAME`.
fn fuzz_smoke() -> Result<()> {
    const SECONDS: u64 = 5;
    for target in &fuzz::TARGETS {
        let outcome = fuzz::run_target(target, fuzz::Bound::Seconds(SECONDS))?;
        println!("fuzz smoke: {} executions of {} ran clean", outcome.runs, target.name);
    }
    Ok(())
}
