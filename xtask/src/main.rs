//! `cargo xtask`: everything from a fresh clone to a tested, running dataplane.

mod bench;
mod demo;
mod fuzz;
mod lab;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demonstrate the MPTCP dataplane")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (Debian packages, nightly rust-src, bpf-linker), mount the
    /// BPF filesystem and check the kernel. Idempotent and quick once done.
    Setup,
    /// Set up, then build the agent with its embedded eBPF programs.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, then run every check: format, clippy, unit tests, eBPF build, integration tests.
    Test,
    /// Set up, build, and run real MPTCP traffic through a namespace lab with the dataplane on,
    /// then through the token-steering balancer lab.
    Demo,
    /// Set up, build, and run one lab: `lb`, the token-steering balancer before three backends.
    Lab {
        #[arg(value_enum)]
        which: lab::Lab,
        /// MPTCP connections (half IPv4, half IPv6).
        #[arg(long, default_value_t = 20)]
        connections: usize,
        #[arg(long, default_value = "token", value_parser = ["token", "hash-only"])]
        steering: String,
    },
    /// Run the benchmark suites (those whose name contains FILTER, if given); results go to
    /// target/bench/results.{json,md}.
    Bench { filter: Option<String> },
    /// Fuzz the option walker and MPTCP codec with cargo fuzz (nightly) for a bounded time.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::setup(),
        Task::Build { release } => {
            setup::setup()?;
            util::build_agent(release).map(drop)
        }
        Task::Test => test::test(),
        Task::Demo => demo::demo(),
        Task::Lab { which, connections, steering } => lab::lab(which, connections, &steering),
        Task::Bench { filter } => bench::bench(filter.as_deref()),
        Task::Fuzz { seconds } => fuzz::fuzz(seconds),
    }
}
