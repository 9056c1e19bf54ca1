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
    /// then through the token-steering balancer lab, alone and as three instances behind ECMP.
    Demo,
    /// Set up, build, and run one lab: `lb`, the token-steering balancer before three backends
    /// (`--instances N`: N of them behind an ECMP router).
    Lab {
        #[arg(value_enum)]
        which: lab::Lab,
        /// MPTCP connections (half IPv4, half IPv6).
        #[arg(long, default_value_t = 20)]
        connections: usize,
        #[arg(long, default_value = "token", value_parser = ["token", "hash-only"])]
        steering: String,
        /// Balancer instances: 1 is the single balancer; 2 to 4 run behind an ECMP router, with
        /// three clients and the backends on a LAN.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
        instances: u8,
        /// How the instances behind ECMP get joins to their owner.
        #[arg(long, value_enum, default_value = "join-addresses")]
        mode: lab::EcmpMode,
        /// Behind ECMP: the clients' second-path endpoints are `subflow fullmesh`.
        #[arg(long)]
        fullmesh: bool,
    },
    /// Set up, build the agent (release) and install it as a service: `mptcp-agent install`
    /// (the binary, systemd units, example configurations).
    Install {
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
    },
    /// Run the benchmark suites (those whose name contains FILTER, if given); results go to
    /// target/bench/results.{json,md}.
    Bench { filter: Option<String> },
    /// Run one cargo fuzz (nightly) target, bounded in time (60 s unless told) or executions:
    /// parse_options (option walker and codec), decode_capture and decode_session (capture
    /// reader and decode), programs_frame and programs_session (the programs under test-run).
    Fuzz {
        #[arg(long, default_value = "parse_options")]
        target: String,
        #[arg(long, conflicts_with = "runs")]
        seconds: Option<u64>,
        #[arg(long)]
        runs: Option<u64>,
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
        Task::Lab { which, connections, steering, instances, mode, fullmesh } => {
            let ecmp = lab::EcmpArgs { instances: usize::from(instances), mode, fullmesh };
            lab::lab(which, connections, &steering, ecmp)
        }
        Task::Install { root, prefix } => {
            setup::setup()?;
            let agent = util::build_agent(true)?;
            util::run(
                std::process::Command::new(agent)
                    .arg("install")
                    .arg("--root")
                    .arg(root)
                    .arg("--prefix")
                    .arg(prefix),
            )
        }
        Task::Bench { filter } => bench::bench(filter.as_deref()),
        Task::Fuzz { target, seconds, runs } => {
            let bound = runs.map_or(fuzz::Bound::Seconds(seconds.unwrap_or(60)), fuzz::Bound::Runs);
            fuzz::fuzz(&target, bound)
        }
    }
}
