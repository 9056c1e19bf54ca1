//! Command line: one subcommand per operator task; the rendering of each domain sits beside
//! this file.

mod daemon_status;
pub mod decode;
mod explain;
mod lb;
mod paths;
mod tables;

use std::{
    io::{BufRead as _, BufReader, Seek as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use mptcp_common::lb::backend_state;

use crate::{
    analysis::replay,
    bpf::{self, Instance, Privilege, XdpAttachMode, check_privileges},
    cc,
    config::{Admission, AgentConfig},
    daemon,
    dataplane::tables::{Snapshot, SubflowView, Tables},
    dataplane::{events::EventRecord, stats},
    lb::{
        BackendConfig, LbConfig, Steering,
        sync::{self, wire::BackendAction},
    },
    metrics::ListenAddr,
    top,
};

#[derive(Debug, Parser)]
#[command(name = "mptcp-agent", version, about = "eBPF/XDP-accelerated Multipath TCP dataplane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Which dataplane instance a command is about.
#[derive(Debug, clap::Args)]
pub struct InstanceArg {
    /// The instance: interfaces attached to one instance share its connection tables.
    #[arg(long, default_value = bpf::DEFAULT_INSTANCE)]
    pub instance: String,
}

impl InstanceArg {
    fn get(&self) -> Result<Instance> {
        Ok(Instance::new(&self.instance)?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the tracker, attach its ingress (XDP, or tcx on veth) and tcx egress programs to an
    /// interface and pin them under /sys/fs/bpf/mptcp/INSTANCE/ifaces/IFACE, so they stay
    /// attached after this command exits.
    Attach {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto)]
        xdp_mode: XdpAttachMode,
    },
    /// Detach the programs from an interface and remove its pins.
    Detach {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        iface: String,
    },
    /// Run the daemon: attach (or resume what is pinned), judge handshakes, log events.
    Run {
        #[command(flatten)]
        instance: InstanceArg,
        /// Interfaces to attach (repeat the flag; default: the config's `interfaces`); they share
        /// the instance's tables.
        #[arg(long)]
        iface: Vec<String>,
        /// TOML file; flags given here override its keys.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum)]
        admission: Option<Admission>,
        /// MP_JOIN SYNs per second accepted from one source address (0: no limit).
        #[arg(long)]
        join_rate: Option<u32>,
        /// MP_JOIN SYNs one source may send at once before the rate applies (default: the rate,
        /// at least 1).
        #[arg(long)]
        join_burst: Option<u32>,
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpAttachMode>,
        /// Coupled congestion control of this host's MPTCP subflows (sock_ops on a cgroup):
        /// `none` records windows and RTTs only.
        #[arg(long, value_enum)]
        cc: Option<crate::cc::Algorithm>,
        /// The cgroup v2 directory whose sockets --cc covers (default: the hierarchy's root).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics: ADDR:PORT, [IPV6]:PORT, or PORT
        /// (on 127.0.0.1).
        #[arg(long)]
        metrics: Option<ListenAddr>,
        /// Per-connection metric series for at most N connections (default 0: none).
        #[arg(long)]
        metrics_connections: Option<usize>,
    },
    /// Print the packet, option and dataplane counters of an interface.
    Stats {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the tracked MPTCP connections.
    Conns {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        json: bool,
    },
    /// A live terminal view of the tracked connections and their subflows: rates per direction,
    /// srtt and cwnd where the daemon runs with --cc. Keys: s sort, r reverse, / filter, Esc
    /// clear, up/down select, q quit.
    Top {
        #[command(flatten)]
        instance: InstanceArg,
        /// Milliseconds between reads of the tables.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
        interval: u64,
    },
    /// Print the connection table in the format `replay` prints (JSON).
    Table {
        #[command(flatten)]
        instance: InstanceArg,
    },
    /// Print the tracked subflows.
    Subflows {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        json: bool,
    },
    /// Print path management: the kernel's endpoints and limits, the interfaces with their
    /// addresses and routes, the daemon's policy and connections, and the subflows per path
    /// with the bytes the dataplane counted. Run it in the namespace the daemon manages.
    Paths {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        json: bool,
    },
    /// Print the daemon's own health: per part (event processing, event log, path manager,
    /// congestion control) the errors met and retries made; the log records written and dropped.
    DaemonStatus {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        json: bool,
    },
    /// Print the events the daemon processed; --follow keeps printing new ones.
    Events {
        #[command(flatten)]
        instance: InstanceArg,
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Feed a capture (pcap or pcapng) frame by frame through a private copy of the XDP
    /// program with BPF_PROG_TEST_RUN, process its events like the daemon, and print the
    /// resulting connection table.
    Replay {
        file: PathBuf,
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
        /// Read a capture still being written as it grows, until its writer closes it or
        /// SIGINT/SIGTERM; the summary is written then.
        #[arg(long)]
        follow: bool,
    },
    /// Install this binary, its systemd units and example configurations (see README,
    /// "Running as a service").
    Install {
        /// Where the file system starts: `/`, or a staging directory for a package.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Where the binary goes (PREFIX/bin) and what the units run.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// Explain why each MPTCP connection of this network namespace (or the one given by a token,
    /// either end's, or an ADDR:PORT of either end) has the subflows it has: one verdict with its
    /// evidence and the fix. Run it in the namespace of the host whose connections it explains.
    Explain {
        /// A token (hex) or ADDR:PORT.
        connection: Option<crate::explain::Selector>,
        #[command(flatten)]
        instance: InstanceArg,
        /// The balancer instance whose counters to read if one runs here.
        #[arg(long, default_value = "lb")]
        lb_instance: String,
        #[arg(long)]
        json: bool,
    },
    /// The token-steering load balancer: every MP_JOIN reaches the backend owning its
    /// connection (RFC 8041 section 3.12).
    Lb {
        #[command(flatten)]
        instance: LbInstanceArg,
        #[command(subcommand)]
        command: LbCommand,
    },
}

/// Which balancer instance a command is about.
#[derive(Debug, clap::Args)]
pub struct LbInstanceArg {
    #[arg(long, global = true, default_value = "lb")]
    pub instance: String,
}

#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// Load the balancer from a TOML file, fill its maps and attach it to the client-facing
    /// interfaces; it stays attached (pinned) after this command exits.
    Start {
        #[arg(long)]
        config: PathBuf,
        /// Override every VIP's `steering`.
        #[arg(long, value_enum)]
        steering: Option<Steering>,
    },
    /// Detach the balancer and remove its pins.
    Stop,
    /// Print the balancer's counters and its backends (and its sync daemon's, if one runs).
    Stats {
        #[arg(long)]
        json: bool,
        /// Where the sync daemon writes its state (default: /run/mptcp-agent/lb-INSTANCE).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Serve the balancer's Prometheus metrics (its maps and its sync daemon's state, read on
    /// every scrape): a foreground exporter (SIGTERM or SIGINT stops it).
    Metrics {
        /// ADDR:PORT, [IPV6]:PORT, or PORT (on 127.0.0.1).
        #[arg(long)]
        listen: ListenAddr,
        /// Where the sync daemon writes its state (default: /run/mptcp-agent/lb-INSTANCE).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Sync tokens, flows and backend changes with the peers in `[sync]`: a foreground daemon
    /// (SIGTERM or SIGINT stops it).
    Sync {
        #[arg(long)]
        config: PathBuf,
        /// Where to write its state, sync.json (default: /run/mptcp-agent/lb-INSTANCE).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// On a backend host: put in place what `lb.toml` asks of backend NAME (its VIPs on
    /// loopback; for join addressing its join addresses, their `signal` endpoints and
    /// `allow_join_initial_addr_port = 0`). Idempotent.
    BackendSetup {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        backend: String,
    },
    /// Add, drain, reactivate or remove a backend of the running balancer.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a backend; it takes its Maglev share of new flows at once.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        address: std::net::IpAddr,
        /// The balancer's interface towards it.
        #[arg(long)]
        interface: String,
        /// Its MAC (default: from the neighbour table).
        #[arg(long)]
        mac: Option<String>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// VIPs (ADDR:PORT) it serves; repeat the flag.
        #[arg(long, required = true)]
        vip: Vec<std::net::SocketAddr>,
        /// Its join address (one IPv4, one IPv6 at most); repeat the flag.
        #[arg(long)]
        join_address: Vec<std::net::IpAddr>,
        /// The port clients join on (default: the first VIP's).
        #[arg(long)]
        join_port: Option<u16>,
    },
    /// Stop giving it new flows; its flows and MPTCP connections (with new joins) stay.
    Drain(PeerCommand),
    /// Give a drained backend new flows again.
    Activate(PeerCommand),
    /// Remove it: its flows are dropped.
    Remove(PeerCommand),
}

/// A backend change, applied here and, with a configuration that has `[sync]`, on every peer.
#[derive(Debug, clap::Args)]
pub struct PeerCommand {
    pub name: String,
    /// `lb.toml`: with `[sync]`, the change is sent to every peer, each peer's answer printed.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Attach { instance, iface, xdp_mode } => {
            let attached = bpf::attach(&instance.get()?, &iface, xdp_mode)?;
            let hook = match attached.hook {
                bpf::IngressHook::Xdp(mode) => format!("XDP ({mode:?})"),
                bpf::IngressHook::Tc => "tcx".to_owned(),
            };
            println!(
                "attached to {iface} (ingress {hook}, egress tcx); pinned under {}",
                attached.dir.display()
            );
        }
        Command::Detach { instance, iface } => {
            bpf::detach(&instance.get()?, &iface)?;
            println!("detached from {iface}");
        }
        Command::Run {
            instance,
            iface,
            config,
            admission,
            join_rate,
            join_burst,
            xdp_mode,
            cc,
            cgroup,
            metrics,
            metrics_connections,
        } => {
            let mut settings = match &config {
                Some(path) => AgentConfig::load(path)?,
                None => AgentConfig::default(),
            };
            settings.admission = admission.unwrap_or(settings.admission);
            settings.join_rate_per_sec = join_rate.unwrap_or(settings.join_rate_per_sec);
            settings.join_burst = join_burst.or(settings.join_burst);
            settings.cc = cc.or(settings.cc);
            settings.cc_cgroup = cgroup.or(settings.cc_cgroup);
            settings.metrics = metrics.or(settings.metrics);
            settings.metrics_connections = metrics_connections.unwrap_or(settings.metrics_connections);
            let mode = xdp_mode.or(settings.xdp_mode.map(Into::into)).unwrap_or(XdpAttachMode::Auto);
            let iface = if iface.is_empty() { settings.interfaces.clone() } else { iface };
            anyhow::ensure!(
                !iface.is_empty(),
                "no interface to attach: give --iface or `interfaces` in --config"
            );
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(daemon::run(&instance.get()?, &iface, settings, mode))?;
        }
        Command::Stats { instance, iface, json } => {
            let counters = stats::read_counters(&instance.get()?, &iface)?;
            if json {
                println!("{}", stats::to_json(&iface, &counters));
            } else {
                print!("{}", stats::to_table(&iface, &counters));
            }
        }
        Command::Replay { file, json } => {
            let report = replay::replay(&file)?;
            let text = if json { serde_json::to_string(&report)? + "\n" } else { replay::to_text(&report)? };
            write_stdout(&text)?;
        }
        Command::Decode { file, json, packets, follow } => decode_streamed(&file, json, packets, follow)?,
        Command::Conns { instance, json } => {
            let instance = instance.get()?;
            let views = Snapshot::read(&open_tables(&instance)?)?.connection_views();
            // Congestion state of the subflows, when the daemon runs with --cc.
            let congestion = cc::snapshot(&instance)?;
            let rows = tables::connection_rows(&views, &congestion);
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                print!("{}", tables::connections_text(&rows));
            }
        }
        Command::Top { instance, interval } => {
            let instance = instance.get()?;
            top::run(&open_tables(&instance)?, &instance, Duration::from_millis(interval))?;
        }
        Command::Table { instance } => {
            let tables = open_tables(&instance.get()?)?;
            println!("{}", serde_json::to_string(&replay::table(&tables)?)?);
        }
        Command::Subflows { instance, json } => {
            let tables = open_tables(&instance.get()?)?;
            let mut subflows = tables.subflows()?;
            subflows.sort_by_key(|(_, subflow)| subflow.first_seen_ns);
            let views: Vec<SubflowView> = subflows.iter().map(|(key, s)| SubflowView::new(key, s)).collect();
            if json {
                println!("{}", serde_json::to_string(&views)?);
            } else {
                print!("{}", tables::subflows_text(&views));
            }
        }
        Command::DaemonStatus { instance, json } => daemon_status::print(&instance.get()?, json)?,
        Command::Events { instance, follow, json } => print_events(&instance.get()?, follow, json)?,
        Command::Paths { instance, json } => {
            let instance = instance.get()?;
            // Bytes per subflow need the dataplane; without it the rest still tells a lot.
            let tables = if instance.exists() { Some(open_tables(&instance)?) } else { None };
            paths::print(&instance, tables.as_ref(), json)?;
        }
        Command::Install { root, prefix } => {
            let installed = crate::service::install(&root, &prefix)?;
            for file in &installed.files {
                println!("installed {}", file.display());
            }
            println!(
                "next: write /etc/mptcp-agent/INSTANCE.toml (examples/ has one), then \
                 `systemctl daemon-reload` and `systemctl enable --now UNIT` with UNIT one of: {}",
                installed
                    .units
                    .iter()
                    .map(|unit| unit.replace('@', "@INSTANCE"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Command::Explain { connection, instance, lb_instance, json } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let explanation = runtime.block_on(crate::explain::explain(
                &instance.get()?,
                &Instance::new(&lb_instance)?,
                connection,
            ))?;
            let text = if json {
                serde_json::to_string(&explanation)? + "\n"
            } else {
                explain::to_text(&explanation)?
            };
            write_stdout(&text)?;
        }
        Command::Lb { instance, command } => run_lb(&Instance::new(&instance.instance)?, command)?,
    }
    Ok(())
}

fn run_lb(instance: &Instance, command: LbCommand) -> Result<()> {
    // Resolving backends' MACs goes through rtnetlink, which is asynchronous.
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    match command {
        LbCommand::Start { config, steering: steering_mode } => {
            let settings = LbConfig::load(&config)?;
            runtime()?.block_on(crate::lb::start(instance, &settings, steering_mode))?;
            println!(
                "balancer {} attached to {}; pinned under {}",
                instance.name,
                settings.interfaces.join(", "),
                instance.dir.display()
            );
        }
        LbCommand::Stop => {
            crate::lb::stop(instance)?;
            println!("balancer {} stopped", instance.name);
        }
        LbCommand::Stats { json, state_dir } => {
            let state_dir = state_dir.unwrap_or_else(|| sync::default_state_dir(instance));
            let stats = crate::lb::stats(instance, &state_dir)?;
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                print!("{}", lb::stats_table(&stats));
            }
        }
        LbCommand::BackendSetup { config, backend } => {
            let host = crate::lb::BackendHost::from_config(&LbConfig::load(&config)?, &backend)?;
            let changes = runtime()?.block_on(host.set_up())?;
            if changes.is_empty() {
                println!("backend {backend}: already set up");
            }
            for change in changes {
                println!("backend {backend}: {change}");
            }
        }
        LbCommand::Backend { command } => match command {
            BackendCommand::Add { name, address, interface, mac, weight, vip, join_address, join_port } => {
                let backend = BackendConfig {
                    name: name.clone(),
                    address,
                    interface,
                    mac,
                    weight,
                    join_addresses: join_address,
                    join_port,
                };
                runtime()?.block_on(crate::lb::add_backend(instance, &backend, &vip))?;
                println!("backend {name} added");
            }
            BackendCommand::Drain(command) => backend_everywhere(instance, command, BackendAction::Drain)?,
            BackendCommand::Activate(command) => {
                backend_everywhere(instance, command, BackendAction::Activate)?
            }
            BackendCommand::Remove(command) => backend_everywhere(instance, command, BackendAction::Remove)?,
        },
        LbCommand::Metrics { listen, state_dir } => {
            let state_dir = state_dir.unwrap_or_else(|| sync::default_state_dir(instance));
            runtime()?.block_on(crate::metrics::lb::run(instance, listen, state_dir))?;
        }
        LbCommand::Sync { config, state_dir } => {
            let settings = LbConfig::load(&config)?;
            let state_dir = state_dir.unwrap_or_else(|| sync::default_state_dir(instance));
            runtime()?.block_on(sync::run(instance, &settings, state_dir))?;
        }
    }
    Ok(())
}

/// Applies a backend change here, then sends it to every peer of `[sync]`; fails if a peer
/// did not apply it.
fn backend_everywhere(instance: &Instance, command: PeerCommand, action: BackendAction) -> Result<()> {
    let PeerCommand { name, config } = command;
    let (state, done) = match action {
        BackendAction::Drain => (backend_state::DRAINING, "draining"),
        BackendAction::Activate => (backend_state::ACTIVE, "active"),
        BackendAction::Remove => (backend_state::UNUSED, "removed"),
    };
    crate::lb::set_backend_state(instance, &name, state)?;
    println!("backend {name} {done}");
    let Some(sync) = config.map(|path| LbConfig::load(&path)).transpose()?.and_then(|c| c.sync) else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let acks = runtime.block_on(sync::broadcast(&sync, action, &name))?;
    print!("{}", lb::acks_text(&acks));
    let missing = acks.iter().filter(|ack| ack.outcome != sync::AckOutcome::Applied).count();
    anyhow::ensure!(missing == 0, "{missing} of {} peer(s) did not apply it", acks.len());
    Ok(())
}

/// One subflow's congestion state and the controller's decision, for `conns`.
/// `decode`: records written as they become final, through a buffer (stdout's own flushes
/// at every line; following, each line goes out as it is written), the summary at the end. A
/// closed pipe (`decode ... | head`) is not an error.
fn decode_streamed(file: &std::path::Path, json: bool, packets: bool, follow: bool) -> Result<()> {
    use crate::analysis::decode::{JsonWriter, StreamError};
    let out: Box<dyn std::io::Write> = if follow {
        crate::analysis::follow::stop_on_signals().context("installing the SIGINT and SIGTERM handlers")?;
        Box::new(std::io::LineWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    };
    let written = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(anyhow::Error::from(error)),
    };
    let streamed = |error: StreamError<std::io::Error>| match error {
        StreamError::Capture(error) => Err(anyhow::Error::from(error)),
        StreamError::Output(error) => written(error),
    };
    if json {
        // Into the buffer; an error here is the temporary file's.
        let mut writer =
            JsonWriter::new(out, &file.display().to_string(), packets).context("starting the JSON report")?;
        let report = match decode_to(file, packets, follow, &mut writer) {
            Ok(report) => report,
            Err(error) => return streamed(error),
        };
        writer.finish(&report).map(drop).or_else(written)
    } else {
        let mut writer = decode::TextWriter::new(out);
        let report = match decode_to(file, packets, follow, &mut writer) {
            Ok(report) => report,
            Err(error) => return streamed(error),
        };
        writer.finish(&report).map(drop).or_else(written)
    }
}

/// Decodes `file` into `sink`, following it as it grows when `follow` is set.
fn decode_to<S>(
    file: &std::path::Path,
    packets: bool,
    follow: bool,
    sink: &mut S,
) -> Result<crate::analysis::decode::Report, crate::analysis::decode::StreamError<S::Error>>
where
    S: crate::analysis::decode::RecordSink,
    S::Error: std::error::Error + 'static,
{
    if follow {
        crate::analysis::decode::follow_file(file, packets, &crate::analysis::follow::STOPPED, sink)
    } else {
        crate::analysis::decode::stream_file(file, packets, sink)
    }
}

/// Writes to stdout; a closed pipe (`decode ... | head`) is not an error.
fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn open_tables(instance: &Instance) -> Result<Tables> {
    check_privileges(Privilege::ReadMaps)?;
    // Fails with a clear error before the tables are opened one by one.
    instance.open_map(mptcp_common::maps::SUBFLOWS_MAP)?;
    Ok(Tables::open(|name| Ok(instance.open_map(name)?))?)
}

fn print_events(instance: &Instance, follow: bool, json: bool) -> Result<()> {
    let path = daemon::event_log_path(instance);
    let file = std::fs::File::open(&path).with_context(|| {
        format!(
            "no event log at {} (is `mptcp-agent run --instance {}` running?)",
            path.display(),
            instance.name
        )
    })?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            if !follow {
                return Ok(());
            }
            // Rotated away: start over on the new file.
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < reader.stream_position()? {
                reader = BufReader::new(std::fs::File::open(&path)?);
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if json {
            print!("{line}");
        } else {
            println!("{}", human_event(&line)?);
        }
    }
}

/// One event line for humans, from its logged JSON: a dataplane event, read back as the
/// daemon wrote it, or a path event, shown field by field.
fn human_event(line: &str) -> Result<String> {
    if let Ok(record) = serde_json::from_str::<EventRecord>(line) {
        return Ok(record.line());
    }
    let record: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).with_context(|| format!("an event log line that is not JSON: {line}"))?;
    let text = |key: &str| {
        record.get(key).map(|value| value.as_str().map_or_else(|| value.to_string(), str::to_owned))
    };
    let details: Vec<String> = record
        .iter()
        .filter(|(key, value)| !["time_ns", "kind"].contains(&key.as_str()) && !value.is_null())
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    Ok(format!(
        "{:>16} {:<22} {}",
        text("time_ns").unwrap_or_default(),
        text("kind").unwrap_or_default(),
        details.join(" ")
    ))
}
