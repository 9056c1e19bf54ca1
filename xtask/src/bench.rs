//! `cargo xtask bench [FILTER]`: runs the benchmark suites (all, or those whose name contains
//! FILTER), prints one table and writes `target/bench/results.json` and `results.md`.
//!
//! A suite is a function returning [`Row`]s; add one to [`SUITES`] to extend the report.

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::util::{cargo, output, workspace_root};

/// One measured value.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub suite: String,
    pub case: String,
    pub value: f64,
    pub unit: String,
    /// What exactly was measured, and how.
    pub note: String,
}

struct Suite {
    name: &'static str,
    run: fn() -> Result<Vec<Row>>,
}

const SUITES: &[Suite] = &[Suite { name: "parser", run: parser }];

pub fn bench(filter: Option<&str>) -> Result<()> {
    let selected: Vec<&Suite> =
        SUITES.iter().filter(|suite| filter.is_none_or(|f| suite.name.contains(f))).collect();
    if selected.is_empty() {
        let names: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
        bail!("no benchmark suite matches {filter:?}; suites: {}", names.join(", "));
    }
    let mut rows = Vec::new();
    for suite in selected {
        eprintln!("== bench suite {}", suite.name);
        rows.extend((suite.run)().with_context(|| format!("benchmark suite {}", suite.name))?);
    }
    let table = markdown(&rows);
    print!("{table}");
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&rows)? + "\n")?;
    std::fs::write(dir.join("results.md"), &table)?;
    eprintln!("wrote {0}/results.json and {0}/results.md", dir.display());
    Ok(())
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| suite | case | value | unit | note |\n|---|---|---:|---|---|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {} | {} |",
            row.suite, row.case, row.value, row.unit, row.note
        );
    }
    out
}

/// One line of `mptcp-common/benches/parser.rs` output.
#[derive(Deserialize)]
struct ParserCase {
    case: String,
    ns_per_packet: f64,
    option_bytes: usize,
    iterations: u64,
    samples: usize,
}

/// The user-space option parser (release build): walk a Linux option area, parse its MPTCP option.
fn parser() -> Result<Vec<Row>> {
    let stdout = output(cargo().args(["bench", "-p", "mptcp-common", "--bench", "parser"]))?;
    let rows: Vec<Row> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let case: ParserCase = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
            Ok(Row {
                suite: "parser".into(),
                case: case.case,
                value: case.ns_per_packet,
                unit: "ns/packet".into(),
                note: format!(
                    "walk of a {}-byte option area + MPTCP parse; median of {} samples, {} packets",
                    case.option_bytes, case.samples, case.iterations
                ),
            })
        })
        .collect::<Result<_>>()?;
    if rows.is_empty() {
        bail!("the parser benchmark printed no results:\n{stdout}");
    }
    Ok(rows)
}
