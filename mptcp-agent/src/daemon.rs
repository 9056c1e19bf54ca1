//! `mptcp-agent run`: the daemon. It attaches (or finds what a previous run left pinned),
//! configures the programs, consumes their events, judges the handshakes, manages paths with
//! `[paths]` and, with `--cc`, runs the coupled congestion controller. Everything it needs
//! lives in the pinned maps, so a killed daemon restarts where it stopped.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufWriter, Write as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::RingBuf;
use mptcp_common::maps::{EVENTS_MAP, Event};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    bpf::{self, Instance, XdpAttachMode},
    cc::{Controller, monotonic_ns},
    config::AgentConfig,
    dataplane::events::Processor,
    dataplane::tables::Tables,
    paths::{PathInput, PathManager},
    report::Chain,
};

/// Where the daemon of `instance` logs the events it processed, one JSON object per line.
pub fn event_log_path(instance: &Instance) -> PathBuf {
    instance.run_dir().join("events.jsonl")
}

/// The log rotates to `events.jsonl.1` past this size.
const EVENT_LOG_MAX_BYTES: u64 = 16 << 20;

struct EventLog {
    path: PathBuf,
    file: BufWriter<File>,
    written: u64,
}

impl EventLog {
    fn open(instance: &Instance) -> Result<Self> {
        let path = event_log_path(instance);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Self { path, file: BufWriter::new(file), written })
    }

    /// Appends one record: a dataplane [`EventRecord`] or a [`PathRecord`], each with a `kind`.
    fn write(&mut self, record: &impl serde::Serialize) -> Result<()> {
        let line = serde_json::to_string(record)?;
        writeln!(self.file, "{line}")?;
        self.written += line.len() as u64 + 1;
        if self.written > EVENT_LOG_MAX_BYTES {
            self.file.flush()?;
            fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
            self.file = BufWriter::new(File::create(&self.path)?);
            self.written = 0;
        }
        Ok(())
    }
}

/// Tells whoever waits for the daemon (tests, scripts) that it judges events: `ready` in its run
/// directory holds its pid from then until it stops. A pid, not mere existence: a daemon that was
/// killed leaves its file behind.
struct ReadyFile(PathBuf);

impl ReadyFile {
    fn path(instance: &Instance) -> PathBuf {
        instance.run_dir().join("ready")
    }

    fn create(instance: &Instance) -> Result<Self> {
        let path = Self::path(instance);
        fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_file(&self.0) {
            log::warn!("removing {}: {}", self.0.display(), Chain(&error));
        }
    }
}

/// How often the congestion controller refreshes its decisions.
const CC_TICK_MS: u64 = 5;

/// Runs until SIGTERM or SIGINT; the programs stay attached afterwards.
pub async fn run(
    instance: &Instance,
    ifaces: &[String],
    config: AgentConfig,
    xdp_mode: XdpAttachMode,
) -> Result<()> {
    let name = &instance.name;
    if config.paths().is_some() {
        // Before anything is attached: what the path manager lacks is the operator's to fix.
        bpf::check_privileges(bpf::Privilege::ManagePaths)?;
        crate::paths::check_mptcp()?;
    }
    let attached = instance.interfaces()?;
    for iface in ifaces {
        if attached.contains(iface) {
            log::info!("{name}: found {iface} attached, resuming");
        } else {
            bpf::attach(instance, iface, xdp_mode)?;
            log::info!("{name}: attached {iface}");
        }
    }
    let mut tables = Tables::open(|map| Ok(instance.open_map(map)?))?;
    tables.write_config(&config.dataplane())?;
    let ring = RingBuf::try_from(instance.open_map(EVENTS_MAP)?).context("opening the event ring buffer")?;
    // SAFETY: the descriptor belongs to `ring`, which the AsyncFd owns until it is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| anyhow::anyhow!("polling the event ring buffer: {error}"))?;
    let mut log = EventLog::open(instance)?;
    let mut paths = match config.paths() {
        Some(policy) => {
            let (manager, records) =
                PathManager::start(instance, policy.clone()).await.context("starting the path manager")?;
            for record in &records {
                log.write(record)?;
            }
            log.file.flush()?;
            log::info!("{name}: path manager running ({:?} path manager, mode {:?})", policy.pm, policy.mode);
            Some(manager)
        }
        None => None,
    };
    let mut controller = match config.cc {
        Some(algorithm) => {
            let cgroup = match &config.cc_cgroup {
                Some(path) => path.clone(),
                None => bpf::cgroup2_root()?,
            };
            let verb = if bpf::attach_sock_ops(instance, &cgroup)? { "attached" } else { "found" };
            log::info!(
                "{name}: congestion control {algorithm:?}, sock_ops {verb} on cgroup {}",
                cgroup.display()
            );
            Some(Controller::open(instance, algorithm)?)
        }
        None => None,
    };
    // Decisions are refreshed well within a decision's lifetime (STALE_NS) and the RTTs of
    // real paths; the per-ACK window arithmetic runs in the kernel.
    let mut cc_tick = tokio::time::interval(Duration::from_millis(CC_TICK_MS));
    cc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    log::info!("{name}: admission {:?}, join rate {}/s", config.admission, config.join_rate_per_sec);
    let mut processor = Processor::new(&mut tables);
    match processor.verify_pending() {
        Ok(0) => {}
        Ok(recovered) => log::info!("{name}: judged {recovered} join(s) left pending by a previous run"),
        Err(error) => log::warn!("{name}: judging joins left pending: {}", Chain(&error)),
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let _ready = ReadyFile::create(instance)?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() < size_of::<Event>() {
                        continue;
                    }
                    // SAFETY: the programs write whole Events; the ring item may be unaligned.
                    let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
                    let record = processor.process(&event);
                    log.write(&record)?;
                }
                guard.clear_ready();
                log.file.flush()?;
            }
            _ = tick.tick() => {
                // A failed scan is retried on the next tick; events keep being judged meanwhile.
                if let Err(error) = processor.verify_pending() {
                    log::warn!("{name}: judging pending joins: {}", Chain(&error));
                }
            }
            _ = cc_tick.tick(), if controller.is_some() => {
                if let Some(controller) = controller.as_mut() {
                    controller.tick(monotonic_ns())?;
                }
            }
            input = wait_paths(&mut paths) => {
                if let Some(manager) = paths.as_mut() {
                    for record in manager.handle(input).await? {
                        log.write(&record)?;
                    }
                    log.file.flush()?;
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    log.file.flush()?;
    log::info!("{name}: stopping; the dataplane stays attached (`mptcp-agent detach` removes it)");
    Ok(())
}

/// The path manager's next input; never, without one.
async fn wait_paths(paths: &mut Option<PathManager>) -> PathInput {
    match paths {
        Some(manager) => manager.wait().await,
        None => std::future::pending().await,
    }
}
