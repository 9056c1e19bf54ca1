//! `cargo xtask test`: every check the project has, in order of cost. Nothing is skipped: a
//! missing capability is an error that names it.

use std::process::Command;

use anyhow::{Result, ensure};

use crate::{
    fuzz,
    setup::setup,
    util::{cargo, is_root, run, workspace_root},
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
        .current_dir(workspace_root())
        .args(["+nightly", "clippy", "-p", "mptcp-ebpf", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"]))?;
    run(cargo().args(["test", "--workspace", "--exclude", "mptcp-tests", "--exclude", "mptcp-ebpf"]))?;
    // That `cargo test` built the agent's binary for the agent's own integration tests, with
    // the dev-dependencies' features; `cargo build -p mptcp-agent` would build it once more
    // without them (a minute on this machine kind).
    let agent = workspace_root().join("target/debug/mptcp-agent");
    ensure!(agent.is_file(), "`cargo test` built no agent binary at {}", agent.display());
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
/// `cargo xtask fuzz --target NAME`, optimised. The smoke builds unoptimised: the agent's
/// targets' optimised first build took 6.5-7.5 minutes of this suite.
fn fuzz_smoke() -> Result<()> {
    const SECONDS: u64 = 5;
    for target in &fuzz::TARGETS {
        let outcome = fuzz::run_target(target, fuzz::Bound::Seconds(SECONDS), fuzz::Profile::Dev)?;
        println!("fuzz smoke: {} executions of {} ran clean", outcome.runs, target.name);
    }
    Ok(())
}
