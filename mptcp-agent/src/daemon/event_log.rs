//! The event log writer: its own task, fed through a bounded channel, so the verdicts never wait
//! for the disk. A record that does not fit the channel is dropped and counted; a failed write is
//! counted, logged (rate-limited) and retried with backoff on a reopened file, the records in
//! hand kept meanwhile (the channel fills, and drops, while it waits).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use super::health::Health;

/// The log rotates to `events.jsonl.1` past this size.
const EVENT_LOG_MAX_BYTES: u64 = 16 << 20;
/// The log holds the connections' keys, with which anyone could compute valid MP_JOIN HMACs:
/// only its owner reads it.
const EVENT_LOG_MODE: u32 = 0o600;
/// Records written per write: one syscall and flush for a burst of events.
const BATCH: usize = 256;

/// Where log lines go; the daemon's is [`FileSink`], tests use their own.
pub trait Sink: Send + 'static {
    /// Writes whole lines and flushes them. After an error the next call starts afresh (a
    /// reopened file).
    fn write(&mut self, lines: &[u8]) -> io::Result<()>;
}

/// The event log file, opened on first use and again after a failure.
pub struct FileSink {
    path: PathBuf,
    file: Option<File>,
    written: u64,
}

impl FileSink {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None, written: 0 }
    }

    fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file =
                    OpenOptions::new().create(true).append(true).mode(EVENT_LOG_MODE).open(&self.path)?;
                // A log an older agent created keeps its mode otherwise.
                file.set_permissions(fs::Permissions::from_mode(EVENT_LOG_MODE))?;
                self.written = file.metadata()?.len();
                self.file.insert(file)
            }
        };
        let before = self.written;
        if let Err(error) = file.write_all(lines).and_then(|()| file.flush()) {
            // Cut the partial batch off, or the retry would leave half a line in the log.
            return Err(match file.set_len(before) {
                Ok(()) => error,
                Err(cut) => io::Error::new(error.kind(), format!("{error} (and truncating it back: {cut})")),
            });
        }
        self.written += lines.len() as u64;
        if self.written > EVENT_LOG_MAX_BYTES {
            self.file = None;
            fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn write(&mut self, lines: &[u8]) -> io::Result<()> {
        let result = self.append(lines);
        if result.is_err() {
            self.file = None;
        }
        result
    }
}

/// How long the writer waits before retrying a failed write: doubling from `initial` to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

/// The senders' end: never waits.
#[derive(Clone)]
pub struct LogSender {
    records: mpsc::Sender<String>,
    health: Arc<Health>,
}

impl LogSender {
    /// Queues one record (a dataplane [`EventRecord`] or a [`PathRecord`], each with a `kind`);
    /// drops and counts it when the writer is behind.
    ///
    /// [`EventRecord`]: crate::dataplane::events::EventRecord
    /// [`PathRecord`]: crate::paths::PathRecord
    pub fn send(&self, record: &impl serde::Serialize) {
        match serde_json::to_string(record) {
            Ok(line) => {
                if self.records.try_send(line).is_err() {
                    self.health.dropped(1);
                }
            }
            Err(error) => {
                self.health.log.failed("serializing an event record", &error);
                self.health.dropped(1);
            }
        }
    }
}

/// A channel of `capacity` records to a writer; run the writer with [`LogWriter::run`].
pub fn channel<S: Sink>(
    sink: S,
    capacity: usize,
    health: Arc<Health>,
    backoff: Backoff,
) -> (LogSender, LogWriter<S>) {
    let (records, receiver) = mpsc::channel(capacity);
    (LogSender { records, health: health.clone() }, LogWriter { sink: Some(sink), receiver, health, backoff })
}

pub struct LogWriter<S> {
    /// `None` only while a write runs on the blocking pool, or after it panicked.
    sink: Option<S>,
    receiver: mpsc::Receiver<String>,
    health: Arc<Health>,
    backoff: Backoff,
}

impl<S: Sink> LogWriter<S> {
    /// Writes until every sender is gone and what they sent is written. Once `stop` is set a
    /// failed write is not retried (its records count as dropped), so stopping is prompt.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut lines = Vec::with_capacity(BATCH);
        while self.receiver.recv_many(&mut lines, BATCH).await > 0 {
            let count = lines.len() as u64;
            let mut batch = String::with_capacity(lines.iter().map(|line| line.len() + 1).sum());
            for line in lines.drain(..) {
                batch.push_str(&line);
                batch.push('\n');
            }
            let mut batch = batch.into_bytes();
            let mut delay = self.backoff.initial;
            loop {
                let result;
                (batch, result) = match self.write(batch).await {
                    Some(written) => written,
                    None => {
                        self.health.dropped(count);
                        return;
                    }
                };
                match result {
                    Ok(()) => {
                        self.health.records_written.fetch_add(count, Relaxed);
                        break;
                    }
                    Err(error) => {
                        self.health.log.failed("writing the event log", &error);
                        if *stop.borrow() || !crate::stop::pause(&mut stop, delay).await {
                            self.health.dropped(count);
                            break;
                        }
                        self.health.log.retried();
                        delay = (delay * 2).min(self.backoff.max);
                    }
                }
            }
        }
    }

    /// One write on the blocking pool, off the thread that judges events; `None` when the sink
    /// panicked (logged; the writer then stops and senders count their records as dropped).
    async fn write(&mut self, batch: Vec<u8>) -> Option<(Vec<u8>, io::Result<()>)> {
        let mut sink = self.sink.take()?;
        match tokio::task::spawn_blocking(move || {
            let result = sink.write(&batch);
            (sink, batch, result)
        })
        .await
        {
            Ok((sink, batch, result)) => {
                self.sink = Some(sink);
                Some((batch, result))
            }
            Err(error) => {
                self.health.log.failed("the event log writer", &error);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Fails its first `failures` writes; keeps what it was given after that.
    struct Flaky {
        failures: usize,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Sink for Flaky {
        fn write(&mut self, lines: &[u8]) -> io::Result<()> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.written.lock().unwrap().extend_from_slice(lines);
            Ok(())
        }
    }

    const QUICK: Backoff = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(4) };

    #[tokio::test]
    async fn failed_writes_are_retried_and_full_channel_records_dropped() {
        let health = Arc::new(Health::new(false, false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Flaky { failures: 3, written: written.clone() };
        let (sender, writer) = channel(sink, 4, health.clone(), QUICK);
        // Ten records into a channel of four, before the writer runs: six never fit.
        for n in 0..10 {
            sender.send(&n);
        }
        assert_eq!(health.records_dropped.load(Relaxed), 6);
        let (_stop, stopped) = watch::channel(false);
        drop(sender);
        writer.run(stopped).await;
        assert_eq!(String::from_utf8(written.lock().unwrap().clone()).unwrap(), "0\n1\n2\n3\n");
        let status = health.snapshot(true);
        assert_eq!((status.event_log.written, status.event_log.dropped), (4, 6));
        assert_eq!((status.event_log.part.errors, status.event_log.part.retries), (3, 3));
        assert!(status.event_log.part.last_error.is_some_and(|e| e.contains("No space left")));
    }

    #[tokio::test]
    async fn once_stopping_a_failed_write_is_dropped_not_retried() {
        let health = Arc::new(Health::new(false, false));
        let sink = Flaky { failures: usize::MAX, written: Arc::default() };
        let (sender, writer) = channel(sink, 8, health.clone(), QUICK);
        sender.send(&"a");
        sender.send(&"b");
        drop(sender);
        let (stop, stopped) = watch::channel(false);
        stop.send_replace(true);
        writer.run(stopped).await;
        let status = health.snapshot(false);
        assert_eq!((status.event_log.written, status.event_log.dropped), (0, 2));
        assert_eq!((status.event_log.part.errors, status.event_log.part.retries), (1, 0));
    }

    #[tokio::test]
    async fn a_full_disk_is_an_error_of_the_file_sink_not_a_panic() {
        let health = Arc::new(Health::new(false, false));
        let (sender, writer) = channel(FileSink::new("/dev/full".into()), 8, health.clone(), QUICK);
        sender.send(&"lost");
        drop(sender);
        let (stop, stopped) = watch::channel(false);
        stop.send_replace(true);
        writer.run(stopped).await;
        let status = health.snapshot(false);
        assert_eq!((status.event_log.part.errors, status.event_log.dropped), (1, 1));
    }
}
