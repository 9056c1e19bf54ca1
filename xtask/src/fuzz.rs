//! `cargo xtask fuzz [--seconds N]`: the libFuzzer target of `mptcp-common/fuzz` for a bounded
//! time, with the nightly toolchain cargo fuzz needs; installs cargo-fuzz when it is missing.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, run, workspace_root};

const TARGET: &str = "parse_options";

pub fn fuzz(seconds: u64) -> Result<()> {
    let installed =
        Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let crate_dir = workspace_root().join("mptcp-common");
    let mut child = Command::new("cargo")
        .current_dir(&crate_dir)
        .args(["+nightly", "fuzz", "run", TARGET, "--", &format!("-max_total_time={seconds}")])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning cargo +nightly fuzz (is the nightly toolchain installed?)")?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    // libFuzzer ends a clean run with "Done N runs in S second(s)".
    let mut done = None;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(rest) = line.strip_prefix("Done ") {
            done = Some(rest.to_owned());
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "fuzzing {TARGET} failed ({status}); the crashing input is under {}",
            crate_dir.join("fuzz/artifacts").join(TARGET).display()
        );
    }
    let done = done.context("libFuzzer did not report how many executions ran")?;
    let runs: u64 = done
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected libFuzzer summary: Done {done}"))?;
    println!("fuzz: {runs} executions of {TARGET} ran clean (Done {done})");
    Ok(())
}
