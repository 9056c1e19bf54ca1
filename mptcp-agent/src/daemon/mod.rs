//! `mptcp-agent run`: the daemon. It attaches (or finds what a previous run left pinned),
//! configures the programs, consumes their events, judges the handshakes, manages paths with
//! `[paths]` and, with `--cc`, runs the coupled congestion controller. Everything it needs
//! lives in the pinned maps, so a killed daemon restarts where it stopped.
//!
//! Each part is a task of its own with its own error policy: the core (ring buffer, event
//! processing, verdicts) never stops while the daemon runs; the event log writer, the path
//! manager and the congestion controller count, log and retry their run-time failures, and none
//! of them can stop another. Start-up failures still fail the command.

pub mod event_log;
pub mod health;

use std::{
    collections::BTreeMap, fs, path::PathBuf, sync::Arc, sync::atomic::Ordering::Relaxed, time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use mptcp_common::maps::{EVENTS_MAP, Event};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinHandle,
};

use self::{
    event_log::{Backoff, FileSink, LogSender},
    health::{Health, status_path},
};
use crate::{
    bpf::{self, Instance, LoaderError, XdpAttachMode},
    cc::{Controller, monotonic_ns},
    config::{AgentConfig, PathsConfig},
    dataplane::{events::Processor, stats, tables::Tables},
    metrics,
    paths::{PathError, PathEvent, PathManager},
    report::Chain,
    stop::{pause, stopped},
};

/// Where the daemon of `instance` logs the events it processed, one JSON object per line.
pub fn event_log_path(instance: &Instance) -> PathBuf {
    instance.run_dir().join("events.jsonl")
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
/// How often subflows silent for long are looked for, in the controller's own copy.
const CC_FORGET_EVERY: Duration = Duration::from_secs(1);
/// How often the core reads the programs' `events_dropped` counters.
const DROP_CHECK: Duration = Duration::from_millis(500);
/// How often `daemon.json` is rewritten.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Records queued for the event log writer; past this they are dropped and counted.
const LOG_CHANNEL: usize = 8192;

/// Runs until SIGTERM or SIGINT; the programs stay attached afterwards.
pub async fn run(
    instance: &Instance,
    ifaces: &[String],
    config: AgentConfig,
    xdp_mode: XdpAttachMode,
) -> Result<()> {
    // Tasks on this thread: the maps' handles need not be Send. Blocking writes go to the
    // blocking pool.
    tokio::task::LocalSet::new().run_until(run_local(instance, ifaces, config, xdp_mode)).await
}

async fn run_local(
    instance: &Instance,
    ifaces: &[String],
    config: AgentConfig,
    xdp_mode: XdpAttachMode,
) -> Result<()> {
    let name = &instance.name;
    if let Some(policy) = config.paths() {
        // Before anything is attached: what the path manager lacks is the operator's to fix.
        bpf::check_privileges(bpf::Privilege::ManagePaths)?;
        crate::paths::check_mptcp()?;
        crate::paths::check_features(policy)?;
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
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| anyhow::anyhow!("polling the event ring buffer: {error}"))?;
    let run_dir = instance.run_dir();
    fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let controller = match config.cc {
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
    // Bound at start-up, so an address that cannot be had fails the command, and before the
    // privileges go (a port below 1024 needs CAP_NET_BIND_SERVICE).
    let metrics = match config.metrics {
        Some(addr) => {
            let listener = metrics::server::bind(addr).await?;
            log::info!("{name}: metrics at http://{addr}/metrics");
            Some(listener)
        }
        None => None,
    };
    // Everything is loaded and attached: from here on the daemon needs its maps and netlink
    // only, and other processes' descriptors if path rules name processes.
    let find_processes =
        config.paths().is_some_and(|p| p.rules.iter().any(|r| r.get_ref().process.is_some()));
    let kept = bpf::drop_to_runtime_privileges(config.paths().is_some(), find_processes)?;
    log::info!("{name}: capabilities kept: {kept:?}");
    let mut health = Health::new(config.paths().is_some(), config.cc.is_some());
    if metrics.is_some() {
        health = health.serving_metrics();
    }
    let health = Arc::new(health);
    // The log is opened by its writer: a log that cannot be written is a run-time failure.
    let (log, writer) = event_log::channel(
        FileSink::new(event_log_path(instance)),
        LOG_CHANNEL,
        health.clone(),
        Backoff::default(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let writer = tokio::task::spawn_local(writer.run(stop_rx.clone()));
    let paths = match config.paths() {
        Some(policy) => {
            let (manager, records) =
                PathManager::start(instance, policy.clone()).await.context("starting the path manager")?;
            records.iter().for_each(|record| {
                health.path_event(record.event.kind());
                log.send(record)
            });
            log::info!("{name}: path manager running ({:?} path manager, mode {:?})", policy.pm, policy.mode);
            Some((manager, policy.clone()))
        }
        None => None,
    };
    log::info!("{name}: admission {:?}, join rate {}/s", config.admission, config.join_rate_per_sec);
    // The counters first: an event lost after this read shows as growth at the next check.
    let mut drops = DropWatch::new(instance.clone());
    if let Err(error) = drops.grew() {
        health.core.failed("reading the events_dropped counters", &error);
    }
    match Processor::new(&mut tables).verify_pending() {
        Ok(0) => {}
        Ok(recovered) => log::info!("{name}: judged {recovered} join(s) left pending by a previous run"),
        Err(error) => health.core.failed("judging joins left pending", &error),
    }
    health.rescans.fetch_add(1, Relaxed);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let ready = ReadyFile::create(instance)?;

    let mut core =
        tokio::task::spawn_local(judge(ring, tables, drops, log.clone(), health.clone(), stop_rx.clone()));
    let mut parts: Vec<(&str, JoinHandle<()>)> = Vec::new();
    if let Some((manager, policy)) = paths {
        let task =
            manage_paths(instance.clone(), policy, manager, log.clone(), health.clone(), stop_rx.clone());
        parts.push(("path manager", tokio::task::spawn_local(task)));
    }
    if let Some(controller) = controller {
        parts.push((
            "congestion controller",
            tokio::task::spawn_local(congestion(controller, health.clone(), stop_rx.clone())),
        ));
    }
    if let Some(listener) = metrics {
        let task = serve_metrics(
            instance.clone(),
            config.metrics_connections,
            listener,
            health.clone(),
            stop_rx.clone(),
        );
        parts.push(("metrics endpoint", tokio::task::spawn_local(task)));
    }
    let status = status_path(instance);
    parts.push((
        "status writer",
        tokio::task::spawn_local(write_status(status.clone(), health.clone(), stop_rx.clone())),
    ));
    // The writer ends once every sender is gone: the parts' and this one.
    drop(log);

    let core_ended = tokio::select! {
        _ = terminate.recv() => None,
        _ = interrupt.recv() => None,
        ended = &mut core => Some(ended),
    };
    stop.send_replace(true);
    let mut outcome = Ok(());
    if let Some(ended) = core_ended {
        // It returns only on stop: this is a panic, and without verdicts the daemon is no use.
        outcome = Err(anyhow::anyhow!("the event processing task ended: {ended:?}"));
    } else if let Err(error) = core.await {
        log::error!("{name}: the event processing task: {}", Chain(&error));
    }
    for (part, task) in parts {
        if let Err(error) = task.await {
            log::error!("{name}: the {part} task: {}", Chain(&error));
        }
    }
    if let Err(error) = writer.await {
        log::error!("{name}: the event log writer task: {}", Chain(&error));
    }
    // The last word, with what the writer flushed on the way out.
    if let Err(error) = health.snapshot(false).write(&status) {
        log::warn!("{name}: {}", Chain(&error));
    }
    drop(ready);
    log::info!("{name}: stopping; the dataplane stays attached (`mptcp-agent detach` removes it)");
    outcome
}

/// The core: consumes the ring buffer, judges handshakes, queues records for the log. It never
/// gives up: a failure is counted and retried.
async fn judge(
    mut ring: AsyncFd<RingBuf<MapData>>,
    mut tables: Tables,
    mut drops: DropWatch,
    log: LogSender,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let mut processor = Processor::new(&mut tables);
    let mut check = tokio::time::interval(DROP_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Also set when a rescan failed, so it is tried again at the next check.
    let mut rescan = false;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => match guard {
                Ok(mut guard) => {
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        let Some(event) = crate::bpf::maps::ring_record::<Event>(&item) else {
                            continue;
                        };
                        health.events.fetch_add(1, Relaxed);
                        log.send(&processor.process(&event));
                    }
                    // The burst's verdicts and checks, one write per entry.
                    processor.flush();
                    guard.clear_ready();
                }
                Err(error) => {
                    health.core.failed("polling the event ring buffer", &error);
                    if !pause(&mut stop, Duration::from_millis(100)).await {
                        break;
                    }
                    health.core.retried();
                }
            },
            _ = check.tick() => {
                // Events are judged as they come; a table scan is needed only for one lost.
                match drops.grew() {
                    Ok(grew) => rescan |= grew,
                    Err(error) => {
                        health.core.failed("reading the events_dropped counters", &error);
                        rescan = true;
                    }
                }
                if rescan {
                    match processor.verify_pending() {
                        Ok(judged) => {
                            rescan = false;
                            health.rescans.fetch_add(1, Relaxed);
                            log::info!("events were lost: judged {judged} pending join(s) from the table");
                        }
                        Err(error) => {
                            health.core.failed("judging pending joins", &error);
                            health.core.retried();
                        }
                    }
                }
            }
            _ = stopped(&mut stop) => break,
        }
    }
}

/// The programs' `events_dropped` counters per interface, as last read.
struct DropWatch {
    instance: Instance,
    seen: BTreeMap<String, u64>,
}

impl DropWatch {
    fn new(instance: Instance) -> Self {
        Self { instance, seen: BTreeMap::new() }
    }

    /// Whether an interface's counter grew since the last read (a new interface: since zero).
    /// Interfaces are listed afresh each time: another `attach` may add one.
    fn grew(&mut self) -> Result<bool, LoaderError> {
        let mut grew = false;
        let mut seen = BTreeMap::new();
        for iface in self.instance.interfaces()? {
            let counters = stats::read_counters(&self.instance, &iface)?;
            let dropped = counters.ingress.events_dropped + counters.egress.events_dropped;
            grew |= dropped > self.seen.get(&iface).copied().unwrap_or(0);
            seen.insert(iface, dropped);
        }
        self.seen = seen;
        Ok(grew)
    }
}

/// The path manager: a failed input is counted and logged, and the next one (at worst its
/// one-second tick) reconciles again; a closed socket restarts it.
async fn manage_paths(
    instance: Instance,
    policy: PathsConfig,
    mut manager: PathManager,
    log: LogSender,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(part) = health.paths.as_ref() else { return };
    let backoff = Backoff::default();
    let mut delay = backoff.initial;
    loop {
        let input = tokio::select! {
            input = manager.wait() => input,
            _ = stopped(&mut stop) => return,
        };
        let error = match manager.handle(input).await {
            Ok(records) => {
                for record in &records {
                    // A request the kernel refused: the policy asks for it again at the next
                    // change or tick.
                    if let PathEvent::PathError { op, error, .. } = &record.event {
                        part.failed_with(format!("path manager: the kernel refused {op}: {error}"));
                    }
                    health.path_event(record.event.kind());
                    log.send(record);
                }
                delay = backoff.initial;
                continue;
            }
            Err(error) => error,
        };
        part.failed("path manager", &error);
        if !pause(&mut stop, delay).await {
            return;
        }
        delay = (delay * 2).min(backoff.max);
        part.retried();
        if matches!(error, PathError::SocketClosed(_)) {
            // The old manager's sockets are dropped with it.
            loop {
                match PathManager::start(&instance, policy.clone()).await {
                    Ok((restarted, records)) => {
                        log::info!("{}: path manager restarted", instance.name);
                        records.iter().for_each(|record| {
                            health.path_event(record.event.kind());
                            log.send(record)
                        });
                        manager = restarted;
                        break;
                    }
                    Err(error) => {
                        part.failed("restarting the path manager", &error);
                        if !pause(&mut stop, delay).await {
                            return;
                        }
                        delay = (delay * 2).min(backoff.max);
                        part.retried();
                    }
                }
            }
        }
    }
}

/// The congestion controller's tick. A failed tick is counted and retried after a backoff; the
/// kernel meanwhile falls back to its own congestion control once decisions go stale.
async fn congestion(mut controller: Controller, health: Arc<Health>, mut stop: watch::Receiver<bool>) {
    let Some(part) = health.cc.as_ref() else { return };
    // Decisions are refreshed well within a decision's lifetime (STALE_NS) and the RTTs of
    // real paths; the per-ACK window arithmetic runs in the kernel. A tick reads only the
    // notifications that came (nothing when every connection is idle), never the table.
    let mut tick = tokio::time::interval(Duration::from_millis(CC_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut forget = tokio::time::interval(CC_FORGET_EVERY);
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let backoff = Backoff::default();
    let mut delay = backoff.initial;
    loop {
        let result = tokio::select! {
            _ = tick.tick() => {
                controller.drain();
                controller.decide(monotonic_ns()).map(drop)
            }
            _ = forget.tick() => controller.forget_silent(monotonic_ns()).map(drop),
            _ = stopped(&mut stop) => return,
        };
        match result {
            Ok(()) => delay = backoff.initial,
            Err(error) => {
                part.failed("congestion control", &error);
                if !pause(&mut stop, delay).await {
                    return;
                }
                delay = (delay * 2).min(backoff.max);
                part.retried();
            }
        }
    }
}

/// The metrics endpoint: each scrape reads the pinned maps and the state files afresh, on the
/// blocking pool, and adds the daemon's own health. A failed scrape is counted and answered with
/// an error; it touches no other part.
async fn serve_metrics(
    instance: Instance,
    connections: usize,
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) {
    let scrape_health = health.clone();
    let scrape = move || -> Result<metrics::Families, metrics::MetricsError> {
        let mut families = metrics::agent::read(&instance, metrics::agent::AgentOptions { connections })?;
        families.extend(scrape_health.families());
        Ok(families)
    };
    let failure = move |what: &str, error: &(dyn std::error::Error + 'static)| {
        if let Some(part) = &health.metrics {
            part.failed(what, error);
        }
    };
    metrics::server::serve(listener, Arc::new(scrape), Arc::new(failure), stop).await;
}

/// Rewrites `daemon.json` every second, on the blocking pool.
async fn write_status(path: PathBuf, health: Arc<Health>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(STATUS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let status = health.snapshot(true);
        let path = path.clone();
        match tokio::task::spawn_blocking(move || status.write(&path)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => health.status.failed("writing the daemon status", &error),
            Err(error) => health.status.failed("the daemon status writer", &error),
        }
    }
}
