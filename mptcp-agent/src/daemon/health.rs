//! The daemon's own health: per part, the errors it met and the retries it made; for the event
//! log, the records written and dropped. Kept in atomics the parts share, written every second as
//! `daemon.json` in the run directory, which `mptcp-agent daemon-status` reads.

use std::{
    collections::BTreeMap,
    error::Error,
    fs, io,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    bpf::Instance,
    labels,
    metrics::{Families, Kind},
    report::Chain,
};

/// Where the daemon of `instance` writes its [`DaemonStatus`].
pub fn status_path(instance: &Instance) -> PathBuf {
    instance.run_dir().join("daemon.json")
}

/// A failing part logs its first error at once and then at most one line per this interval, so
/// a full disk or a dead socket does not flood the log it may be failing to write.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Throttle {
    last_logged: Option<Instant>,
    suppressed: u64,
    last_error: Option<String>,
}

/// The counters of one part of the daemon.
#[derive(Default)]
pub struct PartHealth {
    errors: AtomicU64,
    retries: AtomicU64,
    throttle: Mutex<Throttle>,
}

impl PartHealth {
    /// Counts a failure of `what` and logs it, rate-limited.
    pub fn failed(&self, what: &str, error: &(dyn Error + 'static)) {
        self.failed_with(format!("{what}: {}", Chain(error)));
    }

    /// Counts a failure described by `message` and logs it, rate-limited.
    pub fn failed_with(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        // A poisoned lock only means another thread panicked while logging; the counts stand.
        let mut throttle = self.throttle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = throttle.last_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            if throttle.suppressed > 0 {
                log::warn!("{message} ({} more error(s) not logged)", throttle.suppressed);
            } else {
                log::warn!("{message}");
            }
            throttle.last_logged = Some(Instant::now());
            throttle.suppressed = 0;
        } else {
            throttle.suppressed += 1;
        }
        throttle.last_error = Some(message);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    fn status(&self) -> PartStatus {
        let throttle = self.throttle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        PartStatus {
            errors: self.errors.load(Relaxed),
            retries: self.retries.load(Relaxed),
            last_error: throttle.last_error.clone(),
        }
    }
}

/// Every part's counters, shared by the daemon's tasks.
pub struct Health {
    started: Instant,
    pub core: PartHealth,
    pub events: AtomicU64,
    pub rescans: AtomicU64,
    pub log: PartHealth,
    pub records_written: AtomicU64,
    pub records_dropped: AtomicU64,
    /// `None` for a part the configuration does not run.
    pub paths: Option<PartHealth>,
    pub cc: Option<PartHealth>,
    /// The metrics endpoint, when `--metrics` serves one.
    pub metrics: Option<PartHealth>,
    pub status: PartHealth,
    /// Path events logged, by kind (a bounded set: the kinds of `PathEvent`).
    path_events: Mutex<BTreeMap<&'static str, u64>>,
}

impl Health {
    pub fn new(paths: bool, cc: bool) -> Self {
        Self {
            started: Instant::now(),
            core: PartHealth::default(),
            events: AtomicU64::new(0),
            rescans: AtomicU64::new(0),
            log: PartHealth::default(),
            records_written: AtomicU64::new(0),
            records_dropped: AtomicU64::new(0),
            paths: paths.then(PartHealth::default),
            cc: cc.then(PartHealth::default),
            metrics: None,
            status: PartHealth::default(),
            path_events: Mutex::new(BTreeMap::new()),
        }
    }

    /// With the metrics endpoint's part.
    pub fn serving_metrics(mut self) -> Self {
        self.metrics = Some(PartHealth::default());
        self
    }

    pub fn path_event(&self, kind: &'static str) {
        let mut events = self.path_events.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *events.entry(kind).or_default() += 1;
    }

    /// The daemon's metrics: the status it writes to `daemon.json`, and the path events.
    pub fn families(&self) -> Families {
        let status = self.snapshot(true);
        let mut families = Families::default();
        let parts = [
            ("core", Some(&status.core.part)),
            ("event_log", Some(&status.event_log.part)),
            ("paths", status.paths.as_ref()),
            ("cc", status.cc.as_ref()),
            ("metrics", status.metrics.as_ref()),
            ("status_file", Some(&status.status_file)),
        ];
        for (part, health) in parts.into_iter().filter_map(|(part, health)| Some((part, health?))) {
            families.counter(
                "mptcp_daemon_errors",
                "Errors a part of the daemon met.",
                labels!("part" => part),
                health.errors,
            );
            families.counter(
                "mptcp_daemon_retries",
                "Retries a part of the daemon made.",
                labels!("part" => part),
                health.retries,
            );
        }
        families.counter(
            "mptcp_daemon_events",
            "Ring buffer events the daemon processed.",
            Vec::new(),
            status.core.events,
        );
        families.counter(
            "mptcp_daemon_rescans",
            "Scans of the subflow table for pending joins (start-up, lost events).",
            Vec::new(),
            status.core.rescans,
        );
        let log = "Event log records, written or dropped (the writer's queue was full).";
        families.counter(
            "mptcp_daemon_log_records",
            log,
            labels!("outcome" => "written"),
            status.event_log.written,
        );
        families.counter(
            "mptcp_daemon_log_records",
            log,
            labels!("outcome" => "dropped"),
            status.event_log.dropped,
        );
        families.gauge(
            "mptcp_daemon_uptime_seconds",
            "Seconds since the daemon started.",
            Vec::new(),
            self.started.elapsed().as_secs_f64(),
        );
        families.declare("mptcp_path_events", "Path events the daemon logged, by kind.", Kind::Counter);
        let events = self.path_events.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (kind, count) in events.iter() {
            families.counter(
                "mptcp_path_events",
                "Path events the daemon logged, by kind.",
                labels!("kind" => kind),
                *count,
            );
        }
        families
    }

    pub fn dropped(&self, records: u64) {
        self.records_dropped.fetch_add(records, Relaxed);
    }

    pub fn snapshot(&self, running: bool) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            running,
            updated_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            uptime_s: self.started.elapsed().as_secs(),
            core: CoreStatus {
                events: self.events.load(Relaxed),
                rescans: self.rescans.load(Relaxed),
                part: self.core.status(),
            },
            event_log: LogStatus {
                written: self.records_written.load(Relaxed),
                dropped: self.records_dropped.load(Relaxed),
                part: self.log.status(),
            },
            paths: self.paths.as_ref().map(PartHealth::status),
            cc: self.cc.as_ref().map(PartHealth::status),
            metrics: self.metrics.as_ref().map(PartHealth::status),
            status_file: self.status.status(),
        }
    }
}

/// `daemon.json`: what the daemon writes and `daemon-status` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// False in the last status a daemon writes as it stops.
    pub running: bool,
    pub updated_unix_ms: u64,
    pub uptime_s: u64,
    /// Ring buffer, event processing and verdicts.
    pub core: CoreStatus,
    pub event_log: LogStatus,
    pub paths: Option<PartStatus>,
    pub cc: Option<PartStatus>,
    /// The metrics endpoint (`--metrics`); absent from the files of older daemons.
    #[serde(default)]
    pub metrics: Option<PartStatus>,
    /// Writing this file.
    pub status_file: PartStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStatus {
    pub errors: u64,
    pub retries: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStatus {
    pub events: u64,
    /// Scans of the subflow table for joins left pending (start-up, lost events).
    pub rescans: u64,
    #[serde(flatten)]
    pub part: PartStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    pub written: u64,
    /// Records that found the channel to the writer full (the writer is slow or failing).
    pub dropped: u64,
    #[serde(flatten)]
    pub part: PartStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl DaemonStatus {
    /// Writes it whole: a temporary file renamed over the last one, so readers never see half.
    pub fn write(&self, path: &Path) -> Result<(), StatusError> {
        let error = |source| StatusError::Write { path: path.to_owned(), source };
        let text = serde_json::to_string(self).map_err(|source| error(source.into()))?;
        let temporary = path.with_extension("json.tmp");
        fs::write(&temporary, text + "\n").map_err(error)?;
        fs::rename(&temporary, path).map_err(error)
    }

    pub fn read(path: &Path) -> Result<Self, StatusError> {
        let text =
            fs::read_to_string(path).map_err(|source| StatusError::Read { path: path.to_owned(), source })?;
        serde_json::from_str(&text).map_err(|source| StatusError::Parse { path: path.to_owned(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_every_time_and_the_last_is_kept() {
        let part = PartHealth::default();
        for n in 0..5 {
            part.failed("writing", &io::Error::other(format!("disk full {n}")));
        }
        part.retried();
        let status = part.status();
        assert_eq!((status.errors, status.retries), (5, 1));
        assert_eq!(status.last_error.as_deref(), Some("writing: disk full 4"));
        let throttle = part.throttle.lock().unwrap();
        assert_eq!(throttle.suppressed, 4, "only the first of a burst is logged");
    }

    #[test]
    fn metrics_count_path_events_by_kind_and_name_the_parts_that_run() {
        let health = Health::new(false, true).serving_metrics();
        health.path_event("path_primary");
        health.path_event("path_primary");
        health.path_event("endpoint_added");
        health.cc.as_ref().unwrap().failed("tick", &io::Error::other("gone"));
        let text = health.families().openmetrics().unwrap();
        assert!(text.contains("mptcp_path_events_total{kind=\"path_primary\"} 2\n"), "{text}");
        assert!(text.contains("mptcp_path_events_total{kind=\"endpoint_added\"} 1\n"), "{text}");
        assert!(text.contains("mptcp_daemon_errors_total{part=\"cc\"} 1\n"), "{text}");
        assert!(text.contains("mptcp_daemon_errors_total{part=\"metrics\"} 0\n"), "{text}");
        assert!(!text.contains("part=\"paths\""), "{text}");
    }

    #[test]
    fn the_status_reads_back_as_written() {
        let health = Health::new(true, false);
        health.log.failed("writing", &io::Error::other("no space"));
        health.dropped(3);
        let status = health.snapshot(true);
        let dir = std::env::temp_dir().join(format!("mptcp-status-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("daemon.json");
        status.write(&path).unwrap();
        let read = DaemonStatus::read(&path);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.unwrap(), status);
        assert!(status.cc.is_none() && status.paths.is_some());
        assert_eq!((status.event_log.dropped, status.event_log.part.errors), (3, 1));
    }
}
