//! `mptcp-agent paths`: the path report, as JSON or for humans.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::{bpf::Instance, dataplane::tables::Tables, paths::Report};

/// Prints the report of `instance`'s paths; `tables` when the dataplane is attached.
pub fn print(instance: &Instance, tables: Option<&Tables>, json: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(crate::paths::report(instance, tables))?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", to_text(&report)?);
    }
    Ok(())
}

/// A value as the configuration spells it: its serde name, without JSON's quotes.
fn spelled(value: impl Serialize) -> serde_json::Result<String> {
    let value = serde_json::to_value(value)?;
    Ok(value.as_str().map_or_else(|| value.to_string(), str::to_owned))
}

/// The report for humans.
fn to_text(report: &Report) -> Result<String> {
    let mut out = String::new();
    let pm = match report.pm_type {
        Some(0) => "in-kernel",
        Some(1) => "userspace",
        _ => "unknown",
    };
    writeln!(
        out,
        "path manager: {pm} (net.mptcp.pm_type = {})",
        report.pm_type.map_or("?".into(), |t| t.to_string())
    )?;
    match &report.daemon {
        Some(daemon) => {
            let policy = &daemon.policy;
            writeln!(
                out,
                "policy: pm {}, mode {}, server {}, ndiffports {}, max-subflows {}, make-before-break {}, primary {}",
                spelled(policy.pm)?,
                spelled(policy.mode)?,
                policy.server,
                policy.ndiffports,
                policy.max_subflows,
                policy.make_before_break,
                daemon.primary.as_deref().unwrap_or("null")
            )?;
            if !policy.rules.is_empty() {
                out.push_str(
                    "rules (the first that matches a connection applies; unmatched: the policy above):\n",
                );
            }
            for (number, rule) in policy.rules.iter().enumerate() {
                let keys = [
                    rule.dport.map(|p| format!("dport {p}")),
                    rule.sport.map(|p| format!("sport {p}")),
                    rule.cgroup.as_ref().map(|c| format!("cgroup {c}")),
                    rule.process.as_ref().map(|p| format!("process {p}")),
                ];
                let keys: Vec<String> = keys.into_iter().flatten().collect();
                writeln!(
                    out,
                    "  {:<3} {:<40} mode {:<12} interfaces {}",
                    number + 1,
                    keys.join(", "),
                    spelled(rule.mode)?,
                    rule.interfaces.join(", ")
                )?;
            }
        }
        None => out.push_str("policy: none (no daemon with a [paths] table runs for this instance)\n"),
    }
    writeln!(
        out,
        "limits: subflows {}, add_addr_accepted {}",
        report.limits.subflows, report.limits.add_addr_accepted
    )?;
    let joins = match report.allow_join_initial {
        Some(true) => "allowed (net.mptcp.allow_join_initial_addr_port = 1)",
        Some(false) => {
            "denied: accepted connections' SYN-ACKs set the C flag (net.mptcp.allow_join_initial_addr_port = 0)"
        }
        None => "allowed (this kernel has no net.mptcp.allow_join_initial_addr_port)",
    };
    writeln!(out, "joins to the initial address: {joins}")?;
    writeln!(out, "send buffers: at most {} bytes (net.ipv4.tcp_wmem)", report.send_buffer_max)?;
    writeln!(
        out,
        "\n{:<16} {:<5} {:<8} {:<7} {:<40} routes (default in tables)",
        "interface", "state", "role", "primary", "addresses"
    )?;
    for interface in &report.interfaces {
        let state = if interface.up && interface.carrier { "up" } else { "down" };
        let role = interface.role.map_or("-".to_owned(), |r| format!("{r:?}").to_lowercase());
        let tables: Vec<String> = interface.routes.default_route_tables.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "{:<16} {:<5} {:<8} {:<7} {:<40} {} ({})",
            interface.name,
            state,
            role,
            if interface.primary { "yes" } else { "" },
            interface.addresses.join(" "),
            interface.routes.routes,
            tables.join(",")
        )?;
    }
    writeln!(out, "\n{:<4} {:<40} {:<6} {:<24} dev", "id", "endpoint", "port", "flags")?;
    for view in &report.endpoints {
        let endpoint = &view.endpoint;
        writeln!(
            out,
            "{:<4} {:<40} {:<6} {:<24} {}",
            endpoint.id,
            endpoint.addr,
            endpoint.port.map_or(String::new(), |p| p.to_string()),
            endpoint.flags.names().join(","),
            view.iface.as_deref().unwrap_or("-")
        )?;
    }
    match &report.subflows {
        Some(subflows) => {
            writeln!(
                out,
                "\n{:<16} {:<46} {:<46} {:<10} {:<12} {:<6} {:>12} {:>12}",
                "path", "local", "remote", "token", "state", "backup", "bytes-sent", "bytes-recv"
            )?;
            for subflow in subflows {
                writeln!(
                    out,
                    "{:<16} {:<46} {:<46} {:<10} {:<12} {:<6} {:>12} {:>12}",
                    subflow.iface.as_deref().unwrap_or("-"),
                    subflow.local.to_string(),
                    subflow.remote.to_string(),
                    subflow.token.as_deref().unwrap_or("-"),
                    subflow.state,
                    subflow.backup,
                    subflow.bytes_sent,
                    subflow.bytes_received
                )?;
            }
        }
        None => out.push_str("\nsubflows: the dataplane instance is not attached here\n"),
    }
    if let Some(daemon) = &report.daemon {
        let connections = &daemon.connections;
        writeln!(
            out,
            "\nconnections (path manager events){}",
            if connections.is_empty() { ": none open" } else { "" }
        )?;
        for state in connections {
            let subflows: Vec<String> = state
                .connection
                .subflows
                .iter()
                .map(|s| format!("{}->{}{}", s.local, s.remote, if s.backup { " (backup)" } else { "" }))
                .collect();
            let rule = match state.connection.rule {
                Some(rule) => format!(" rule {rule}"),
                None if daemon.policy.rules.is_empty() => String::new(),
                None => " no rule".into(),
            };
            writeln!(
                out,
                "  {} {}{} {}",
                state.token,
                if state.connection.server_side { "server" } else { "client" },
                rule,
                subflows.join(", ")
            )?;
        }
    }
    Ok(out)
}
