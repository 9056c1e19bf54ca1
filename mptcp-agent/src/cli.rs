//! Command line: one subcommand per operator task.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    decode,
    loader::{self, PinLayout, XdpAttachMode},
    stats,
};

#[derive(Debug, Parser)]
#[command(name = "mptcp-agent", version, about = "eBPF/XDP-accelerated Multipath TCP dataplane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs, attach XDP (ingress) and TC (tcx egress) to an interface and pin them
    /// under /sys/fs/bpf/mptcp/IFACE so they stay attached after this command exits.
    Attach {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
        xdp_mode: XdpAttachMode,
    },
    /// Detach the programs from an interface and remove its pins.
    Detach {
        #[arg(long)]
        iface: String,
    },
    /// Print the packet and MPTCP option counters of an interface.
    Stats {
        #[arg(long)]
        iface: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Decode every MPTCP option of a capture file (pcap or pcapng; Ethernet, raw IP, Linux
    /// cooked v1/v2), group subflows into connections by token and verify the MP_JOIN and
    /// ADD_ADDR HMACs whose keys the capture holds. Needs no privileges.
    Decode {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also list every packet that carries MPTCP options, option by option.
        #[arg(long)]
        packets: bool,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Attach { iface, xdp_mode } => {
            let layout = loader::attach(&iface, xdp_mode)?;
            println!("attached to {iface} (XDP mode {xdp_mode:?}); pinned under {}", layout.dir.display());
        }
        Command::Detach { iface } => {
            loader::detach(&iface)?;
            println!("detached from {iface}");
        }
        Command::Stats { iface, json } => {
            let layout = PinLayout::new(&iface)?;
            let counters = stats::read_counters(&layout)?;
            if json {
                println!("{}", stats::to_json(&iface, &counters));
            } else {
                print!("{}", stats::to_table(&iface, &counters));
            }
        }
        Command::Decode { file, json, packets } => {
            let report = decode::decode_file(&file, packets)?;
            let text = if json { decode::to_json(&report)? + "\n" } else { decode::to_text(&report) };
            write_stdout(&text)?;
        }
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`decode ... | head`) is not an error.
fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
