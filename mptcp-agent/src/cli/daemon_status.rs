//! `mptcp-agent daemon-status`: the daemon's own health, from the `daemon.json` it rewrites
//! every second.

use std::{
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use crate::{
    bpf::Instance,
    daemon::health::{DaemonStatus, PartStatus, status_path},
};

/// A running daemon's status older than this is reported as stale (it rewrites it every second).
const STALE_MS: u64 = 5_000;

pub fn print(instance: &Instance, json: bool) -> Result<()> {
    let path = status_path(instance);
    let status = DaemonStatus::read(&path)
        .with_context(|| format!("has `mptcp-agent run --instance {}` run?", instance.name))?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        print!("{}", to_text(&status, now)?);
    }
    Ok(())
}

fn part_line(out: &mut String, name: &str, part: &PartStatus, extra: &str) -> std::fmt::Result {
    writeln!(out, "{name:<22} errors {:>8}  retries {:>8}{extra}", part.errors, part.retries)?;
    if let Some(error) = &part.last_error {
        writeln!(out, "{:<22} last error: {error}", "")?;
    }
    Ok(())
}

/// The status for humans; `now_ms` (Unix time) tells whether it is fresh.
fn to_text(status: &DaemonStatus, now_ms: u64) -> Result<String> {
    let mut out = String::new();
    let age_ms = now_ms.saturating_sub(status.updated_unix_ms);
    let state = match (status.running, age_ms > STALE_MS) {
        (false, _) => "stopped".to_owned(),
        (true, false) => "running".to_owned(),
        (true, true) => format!("not updated for {} s (killed?)", age_ms / 1000),
    };
    writeln!(out, "daemon pid {}: {state}, up {} s", status.pid, status.uptime_s)?;
    let core = &status.core;
    part_line(&mut out, "core", &core.part, &format!("  events {}  rescans {}", core.events, core.rescans))?;
    let log = &status.event_log;
    part_line(
        &mut out,
        "event log",
        &log.part,
        &format!("  written {}  dropped {}", log.written, log.dropped),
    )?;
    match &status.paths {
        Some(part) => part_line(&mut out, "path manager", part, "")?,
        None => writeln!(out, "{:<22} not running", "path manager")?,
    }
    match &status.cc {
        Some(part) => part_line(&mut out, "congestion control", part, "")?,
        None => writeln!(out, "{:<22} not running", "congestion control")?,
    }
    match &status.metrics {
        Some(part) => part_line(&mut out, "metrics endpoint", part, "")?,
        None => writeln!(out, "{:<22} not running", "metrics endpoint")?,
    }
    part_line(&mut out, "status file", &status.status_file, "")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::health::Health;

    #[test]
    fn text_shows_counts_errors_and_staleness() {
        let health = Health::new(false, true);
        health.log.failed("writing the event log", &std::io::Error::other("No space left on device"));
        health.dropped(7);
        let status = health.snapshot(true);
        let text = to_text(&status, status.updated_unix_ms).unwrap();
        assert!(text.contains(": running,"), "{text}");
        assert!(text.contains("written 0  dropped 7"), "{text}");
        assert!(text.contains("last error: writing the event log: No space left on device"), "{text}");
        assert!(text.contains("path manager           not running"), "{text}");
        let text = to_text(&status, status.updated_unix_ms + 60_000).unwrap();
        assert!(text.contains("not updated for 60 s"), "{text}");
    }
}
