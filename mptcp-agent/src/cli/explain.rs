//! `mptcp-agent explain`: rendering of [`crate::explain::Explanation`].

use std::fmt::Write as _;

use crate::explain::Explanation;

/// One block per connection: the connection, the cause, its evidence, the fix; then the sources
/// that could not be read.
pub fn to_text(explanation: &Explanation) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    if explanation.explained.is_empty() {
        writeln!(out, "no MPTCP connection to explain in this network namespace")?;
    }
    for explained in &explanation.explained {
        match &explained.connection {
            Some(c) => writeln!(
                out,
                "connection {} -> {} token {:#010x} ({})",
                c.local,
                c.remote,
                c.token,
                if c.server_side { "server" } else { "client" }
            )?,
            None => writeln!(out, "balancer")?,
        }
        let cause = serde_json::to_value(explained.verdict.cause).map_err(|_| std::fmt::Error)?;
        writeln!(out, "  cause: {}", cause.as_str().unwrap_or_default())?;
        for line in &explained.verdict.evidence {
            writeln!(out, "  evidence: {line}")?;
        }
        writeln!(out, "  fix: {}", explained.verdict.fix)?;
    }
    for source in &explanation.host.unavailable {
        writeln!(out, "unavailable: {source}")?;
    }
    writeln!(out, "(MPTcpExt counters are the namespace's totals since it was created)")?;
    Ok(out)
}
