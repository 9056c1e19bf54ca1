//! `cargo xtask fuzz [--target NAME] [--seconds N | --runs N]`: one libFuzzer target, bounded in
//! time or in executions, with the nightly toolchain cargo fuzz needs; installs cargo-fuzz when
//! it is missing. Prints the executions libFuzzer counted and fails with the crashing input's
//! path when there is one.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, run, workspace_root};

/// A fuzz target: its crate, and how cargo fuzz builds and runs it.
pub struct Target {
    pub name: &'static str,
    /// The directory holding the cargo-fuzz crate `fuzz/`.
    crate_dir: &'static str,
    /// Extra `cargo fuzz run` options.
    build: &'static [&'static str],
    /// Extra libFuzzer options.
    libfuzzer: &'static [&'static str],
    /// Seed inputs, relative to the fuzz crate, read besides its corpus.
    seeds: Option<&'static str>,
}

/// The agent's targets are safe Rust over safe crates, so AddressSanitizer would only slow them
/// down; they build without it and with debug assertions (overflow checks) instead. The programs
/// run in the kernel, where the verifier is what keeps memory safe.
const AGENT_BUILD: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

pub const TARGETS: [Target; 5] = [
    Target { name: "parse_options", crate_dir: "mptcp-common", build: &[], libfuzzer: &[], seeds: None },
    Target {
        name: "decode_capture",
        crate_dir: "mptcp-agent",
        build: AGENT_BUILD,
        libfuzzer: &[],
        seeds: Some("seeds/decode_capture"),
    },
    Target {
        name: "decode_session",
        crate_dir: "mptcp-agent",
        build: AGENT_BUILD,
        libfuzzer: &[],
        seeds: None,
    },
    Target {
        name: "programs_frame",
        crate_dir: "mptcp-agent",
        build: AGENT_BUILD,
        // The target cuts longer inputs to one Ethernet frame of a 1500-byte MTU.
        libfuzzer: &["-max_len=1514"],
        seeds: None,
    },
    Target {
        name: "programs_session",
        crate_dir: "mptcp-agent",
        build: AGENT_BUILD,
        libfuzzer: &[],
        seeds: None,
    },
];

/// How long a run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    Seconds(u64),
    Runs(u64),
}

/// How the target is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Optimised, for runs that look for bugs.
    Release,
    /// Unoptimised: builds in less than half the CPU time (the agent's targets pull in its
    /// whole dependency tree) and runs tens of times slower; enough to show a target builds
    /// and runs, which is what the test suite's smoke run checks.
    Dev,
}

/// What a clean run did.
pub struct Outcome {
    pub runs: u64,
    /// As libFuzzer counts them (whole seconds, the build excluded).
    pub seconds: u64,
}

pub fn target(name: &str) -> Result<&'static Target> {
    TARGETS.iter().find(|t| t.name == name).with_context(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("no fuzz target {name}; there are {}", names.join(", "))
    })
}

pub fn fuzz(name: &str, bound: Bound) -> Result<()> {
    let target = target(name)?;
    let outcome = run_target(target, bound, Profile::Release)?;
    println!(
        "fuzz: {} executions of {} ran clean in {} s ({:.0} per second)",
        outcome.runs,
        target.name,
        outcome.seconds,
        outcome.runs as f64 / outcome.seconds.max(1) as f64
    );
    Ok(())
}

/// Runs one target (libFuzzer's own output passes through) and reads its summary.
pub fn run_target(target: &Target, bound: Bound, profile: Profile) -> Result<Outcome> {
    install_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join(target.crate_dir).join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target.name);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut command = Command::new("cargo");
    command.current_dir(&fuzz_dir).args(["+nightly", "fuzz", "run"]).args(target.build);
    if profile == Profile::Dev {
        command.arg("--dev");
    }
    command.arg(target.name);
    command.arg(&corpus);
    if let Some(seeds) = target.seeds {
        command.arg(fuzz_dir.join(seeds));
    }
    let bound = match bound {
        Bound::Seconds(seconds) => format!("-max_total_time={seconds}"),
        Bound::Runs(runs) => format!("-runs={runs}"),
    };
    command.arg("--").arg(bound).args(target.libfuzzer);
    let mut child = command
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning cargo +nightly fuzz (is the nightly toolchain installed?)")?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    // libFuzzer ends a clean run with "Done N runs in S second(s)" and names a crashing input
    // with "Test unit written to PATH".
    let (mut done, mut artifact) = (None, None);
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        eprintln!("{line}");
        if let Some(rest) = line.strip_prefix("Done ") {
            done = Some(rest.to_owned());
        }
        if let Some(path) = line.split("Test unit written to ").nth(1) {
            artifact = Some(fuzz_dir.join(path.trim()));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        // The last unit written is the crash (an earlier one may be a slow unit).
        match artifact {
            Some(path) => {
                bail!("fuzzing {} failed ({status}); the crashing input is {}", target.name, path.display())
            }
            None => bail!("fuzzing {} failed ({status}) without writing a crashing input", target.name),
        }
    }
    let done = done.context("libFuzzer did not report how many executions ran")?;
    // "N runs in S second(s)"
    let words: Vec<&str> = done.split_whitespace().collect();
    let number = |index: usize| words.get(index).and_then(|n| n.parse::<u64>().ok());
    let (Some(runs), Some(seconds)) = (number(0), number(3)) else {
        bail!("unexpected libFuzzer summary: Done {done}");
    };
    Ok(Outcome { runs, seconds })
}

fn install_cargo_fuzz() -> Result<()> {
    let installed =
        Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
