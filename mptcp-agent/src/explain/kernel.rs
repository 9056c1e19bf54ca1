//! What the kernel says of this network namespace's MPTCP connections: `ss -Mni` (its
//! `mptcp_info` per connection, through inet_diag) and the MPTcpExt counters of
//! `/proc/net/netstat`.

use std::{collections::BTreeMap, net::SocketAddr, process::Command};

use serde::Serialize;

use super::ExplainError;

/// One MPTCP connection as the kernel reports it (`ss -Mni`); ss leaves out fields that are 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelConnection {
    /// This end's token.
    pub token: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Accepted from a listening socket here: this host is the connection's server.
    pub server_side: bool,
    /// Subflows beyond the initial one.
    pub subflows: u32,
    /// The limits the connection took at its creation.
    pub subflows_max: u32,
    pub add_addr_signal: u32,
    pub add_addr_accepted: u32,
    pub add_addr_accepted_max: u32,
    pub fallback: bool,
}

fn ss(args: &[&str]) -> Result<String, ExplainError> {
    let output = Command::new("ss")
        .args(args)
        .output()
        .map_err(|source| ExplainError::Spawn { program: "ss", source })?;
    if !output.status.success() {
        return Err(ExplainError::Failed {
            program: "ss",
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `addr:port`, `[v6]:port`, `v6:port` or `addr%dev:port` as ss prints them.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    text.parse().ok().or_else(|| {
        let (addr, port) = text.rsplit_once(':')?;
        let addr = addr.split('%').next()?.trim_matches(['[', ']']);
        // A wildcard listener.
        let ip = if addr == "*" { std::net::Ipv6Addr::UNSPECIFIED.into() } else { addr.parse().ok()? };
        Some(SocketAddr::new(ip, port.parse().ok()?))
    })
}

/// Socket lines (`State Recv-Q Send-Q Local Peer`) each followed by an indented detail line.
fn sockets(text: &str) -> Vec<(SocketAddr, SocketAddr, String)> {
    let mut out: Vec<(SocketAddr, SocketAddr, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(last) = out.last_mut() {
                last.2.push_str(line);
                last.2.push(' ');
            }
            continue;
        }
        let mut addrs = line.split_whitespace().filter_map(parse_addr);
        if let Some((local, peer)) = addrs.next().zip(addrs.next()) {
            out.push((local, peer, String::new()));
        }
    }
    out
}

/// Parses `ss -Mni` (established) given the local ends of `ss -Mnl` (listening).
pub fn parse_connections(established: &str, listening: &str) -> Vec<KernelConnection> {
    let listeners: Vec<SocketAddr> =
        listening.lines().filter_map(|line| line.split_whitespace().find_map(parse_addr)).collect();
    sockets(established)
        .into_iter()
        .map(|(local, remote, details)| {
            let field = |name: &str| -> Option<&str> {
                details.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix(':'))
            };
            let number = |name: &str| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            let server_side = listeners.iter().any(|listener| {
                listener.port() == local.port()
                    && (listener.ip().is_unspecified() || listener.ip() == local.ip())
            });
            KernelConnection {
                token: field("token").and_then(|t| u32::from_str_radix(t, 16).ok()).unwrap_or(0),
                local,
                remote,
                server_side,
                subflows: number("subflows"),
                subflows_max: number("subflows_max"),
                add_addr_signal: number("add_addr_signal"),
                add_addr_accepted: number("add_addr_accepted"),
                add_addr_accepted_max: number("add_addr_accepted_max"),
                fallback: details.split_whitespace().any(|f| f == "fallback"),
            }
        })
        .collect()
}

/// The namespace's established MPTCP connections.
pub fn connections() -> Result<Vec<KernelConnection>, ExplainError> {
    // `ss -l` also lists sockets in the LISTEN state only: a port of one is a server port.
    let listening = ss(&["-Mnl"])?;
    let established = ss(&["-Mni", "state", "established"])?;
    Ok(parse_connections(&established, &listening))
}

/// The `MPTcpExt` counters of `/proc/net/netstat` (the caller's namespace): a header line of
/// names, then a line of values.
pub fn parse_mib(netstat: &str) -> BTreeMap<String, u64> {
    let mut lines = netstat.lines().filter(|line| line.starts_with("MPTcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return BTreeMap::new() };
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

pub fn mib() -> Result<BTreeMap<String, u64>, ExplainError> {
    let path = "/proc/net/netstat";
    let text = std::fs::read_to_string(path).map_err(|source| ExplainError::Read { path, source })?;
    Ok(parse_mib(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESTABLISHED: &str = "State Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess
ESTAB 0      0          192.0.2.1:60778    192.0.2.2:5000
\t subflows:1 subflows_max:4 add_addr_accepted_max:4 remote_key token:9763e368 write_seq:f2 snd_una:f2
ESTAB 0      0          [2001:db8::1]:5000    [2001:db8::2]:41234
\t fallback token:0000abcd
";
    const LISTENING: &str = "State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess
LISTEN 0      128        *:5000      *:*
";

    #[test]
    fn connections_parse_with_their_side() {
        let parsed = parse_connections(ESTABLISHED, LISTENING);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].token, 0x9763e368);
        assert_eq!((parsed[0].subflows, parsed[0].subflows_max, parsed[0].add_addr_accepted_max), (1, 4, 4));
        assert!(!parsed[0].server_side, "port 60778 is not listening");
        assert!(parsed[1].server_side && parsed[1].fallback);
        assert_eq!(parsed[1].subflows_max, 0, "absent from ss: 0");
        assert_eq!(parsed[1].remote, "[2001:db8::2]:41234".parse().unwrap());
    }

    #[test]
    fn mib_reads_the_mptcp_lines_only() {
        let text = "TcpExt: SyncookiesSent X\nTcpExt: 1 2\nMPTcpExt: MPJoinSynRx MPJoinNoTokenFound\nMPTcpExt: 3 7\n";
        let mib = parse_mib(text);
        assert_eq!(mib.get("MPJoinNoTokenFound"), Some(&7));
        assert_eq!(mib.len(), 2);
    }
}
