//! The `capture` suite: `decode` and `replay` (release build) on generated captures of one long
//! connection at two sizes, the larger several times what fitted in memory before they
//! streamed, and of many short connections at two counts, to show `decode`'s memory does not
//! follow the connections that have ended: wall time and peak RSS of each run, and tshark's
//! MPTCP analysis of the smaller file, bounded in time.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    netns::unique_name,
    synthetic::{self, Usage},
    tshark::TSHARK_PREFS,
};

use super::Row;
use crate::util::build_agent;

/// Data segments of the two long captures (about 0.3 GB, the size issue 14 measured, and 1.9 GB).
const LONG_SEGMENTS: [u64; 2] = [200_000, 1_200_000];
/// Short connections (handshake, one segment, close) of the two many-handshakes captures (the
/// second reuses client ports, after the first use has closed).
const HANDSHAKES: [u32; 2] = [50_000, 200_000];
/// Each run's bound; tshark's is the one that matters.
const AGENT_LIMIT: Duration = Duration::from_secs(300);
const TSHARK_LIMIT: Duration = Duration::from_secs(60);

/// A scratch directory under /var/tmp (disk, not a tmpfs that would count against memory),
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let path = Path::new("/var/tmp").join(unique_name("cap"));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {error}", self.0.display());
        }
    }
}

pub fn capture() -> Result<Vec<Row>> {
    let agent = build_agent(true)?;
    let scratch = Scratch::new()?;
    let mut rows = Vec::new();
    let mut files = Vec::new();
    for segments in LONG_SEGMENTS {
        let path = scratch.0.join(format!("long-{segments}.pcap"));
        let bytes = synthetic::write_long_connection(&path, segments)?;
        files.push((format!("1 connection, {segments} segments"), path, bytes));
    }
    for connections in HANDSHAKES {
        let path = scratch.0.join(format!("handshakes-{connections}.pcap"));
        let bytes = synthetic::write_handshakes(&path, connections)?;
        files.push((format!("{connections} connections"), path, bytes));
    }

    let stdout = scratch.0.join("out");
    for (index, (label, path, bytes)) in files.iter().enumerate() {
        let size = format!("{label}, {:.2} GB", *bytes as f64 / 1e9);
        for command in ["decode", "replay"] {
            let mut cmd = Command::new(&agent);
            cmd.arg(command).arg(path).arg("--json");
            let usage = synthetic::measure(&mut cmd, &stdout, AGENT_LIMIT)?
                .with_context(|| format!("{command} still running after {} s", AGENT_LIMIT.as_secs()))?;
            ensure!(usage.status.success(), "{command} {}: {:?}", path.display(), usage.status);
            eprintln!(
                "{command} {size}: {:.1} s, {} MiB",
                usage.wall.as_secs_f64(),
                usage.max_rss_kib / 1024
            );
            rows.extend(usage_rows(&format!("{command}, {size}"), &usage, *bytes));
        }
        if index == 0 {
            rows.push(tshark_row(&size, path, &stdout)?);
        }
        // Each file is done with: free its disk space now.
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(rows)
}

fn usage_rows(case: &str, usage: &Usage, bytes: u64) -> [Row; 2] {
    let rate = bytes as f64 / 1e6 / usage.wall.as_secs_f64();
    [
        Row {
            suite: "capture".into(),
            case: format!("{case}: wall time"),
            value: usage.wall.as_secs_f64(),
            unit: "s".into(),
            note: format!("release build, --json to a file on /var/tmp; {rate:.0} MB/s"),
        },
        Row {
            suite: "capture".into(),
            case: format!("{case}: peak RSS"),
            value: usage.max_rss_kib as f64 / 1024.0,
            unit: "MiB".into(),
            note: "getrusage ru_maxrss of the child".into(),
        },
    ]
}

/// tshark with the MPTCP analysis the decode tests compare against, on the smaller capture.
fn tshark_row(size: &str, path: &Path, stdout: &Path) -> Result<Row> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(path).args(["-T", "fields", "-e", "frame.number", "-e", "mptcp.dss.dsn"]);
    for pref in TSHARK_PREFS {
        cmd.args(["-o", pref]);
    }
    let usage = synthetic::measure(&mut cmd, stdout, TSHARK_LIMIT)?;
    Ok(match usage {
        Some(usage) => Row {
            suite: "capture".into(),
            case: format!("tshark, {size}: wall time"),
            value: usage.wall.as_secs_f64(),
            unit: "s".into(),
            note: format!(
                "-T fields frame.number, mptcp.dss.dsn, analysis on; peak RSS {} MiB",
                usage.max_rss_kib / 1024
            ),
        },
        None => Row {
            suite: "capture".into(),
            case: format!("tshark, {size}: wall time"),
            value: TSHARK_LIMIT.as_secs_f64(),
            unit: "s".into(),
            note: format!("still running after {} s, killed (a lower bound)", TSHARK_LIMIT.as_secs()),
        },
    })
}
