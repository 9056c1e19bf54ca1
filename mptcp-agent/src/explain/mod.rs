//! `explain`: why each MPTCP connection of this network namespace has the subflows it has. The
//! evidence comes from the kernel (`ss -M`, `net.mptcp.*`, the path manager's limits and
//! endpoints, the MPTcpExt counters), the dataplane when it is attached (tracked joins, HMAC
//! verdicts, admission counters) and the balancer when one runs here (`lb stats`); the rule in
//! [`rules`] turns it into one verdict per connection.

pub mod kernel;
pub mod rules;

use std::{collections::BTreeMap, io, net::IpAddr, net::SocketAddr, str::FromStr};

use mptcp_common::maps::{DataplaneConfig, admission, connection_flags, hmac_verdict, subflow_kind};
use serde::Serialize;

pub use self::{
    kernel::KernelConnection,
    rules::{Cause, Verdict},
};
use crate::{
    bpf::Instance,
    dataplane::{stats, tables::Tables},
    lb,
    paths::{
        mptcp_switch,
        pm::{Endpoint, Limits, PmClient},
        rtnl::Rtnl,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("running {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed: {stderr}")]
    Failed { program: &'static str, stderr: String },
    #[error("reading {path}")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0:?} is neither a token (hex) nor ADDR:PORT")]
    Selector(String),
}

/// Which connections to explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// Either end's token.
    Token(u32),
    /// Either end of the connection's initial subflow.
    Addr(SocketAddr),
}

impl FromStr for Selector {
    type Err = ExplainError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse() {
            return Ok(Self::Addr(addr));
        }
        let digits = text.strip_prefix("0x").unwrap_or(text);
        u32::from_str_radix(digits, 16).map(Self::Token).map_err(|_| ExplainError::Selector(text.to_owned()))
    }
}

/// The `net.mptcp.*` switches that decide joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Switches {
    pub enabled: Option<bool>,
    /// 0 in-kernel, 1 userspace.
    pub pm_type: Option<u8>,
    /// 0: this host's MP_CAPABLE sets the C flag (no join to its initial address and port).
    pub allow_join_initial_addr_port: Option<bool>,
}

/// One connection as the dataplane tracked it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DataplaneConnection {
    pub server_token: u32,
    pub client_token: Option<u32>,
    /// Join subflows tracked, half-open ones included.
    pub joins: u32,
    pub joins_verified: u32,
    pub joins_failed: u32,
    /// The server's MP_CAPABLE SYN-ACK carried the C flag.
    pub server_no_join_to_source: bool,
}

/// The dataplane's admission policy and what it dropped, summed over the instance's interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DataplaneEvidence {
    pub instance: String,
    pub admission: &'static str,
    pub join_rate_per_sec: u32,
    pub joins_admitted: u64,
    pub joins_dropped_unknown_token: u64,
    pub joins_dropped_rate_limit: u64,
    pub packets_dropped_hmac: u64,
    pub connections: Vec<DataplaneConnection>,
}

/// A balancer instance running here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BalancerEvidence {
    pub instance: String,
    pub hash_only_vips: Vec<SocketAddr>,
    pub joins_hashed: u64,
    pub joins_unknown_token: u64,
    pub joins_steered_by_token: u64,
}

/// Everything known about this host; `None` where a source could not be read (see
/// `unavailable`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostEvidence {
    pub switches: Option<Switches>,
    pub limits: Option<Limits>,
    pub endpoints: Option<Vec<Endpoint>>,
    /// Usable addresses of this host's interfaces.
    pub addresses: Option<Vec<IpAddr>>,
    /// MPTcpExt counters: the namespace's totals since it was created.
    pub mib: Option<BTreeMap<String, u64>>,
    pub dataplane: Option<DataplaneEvidence>,
    pub balancer: Option<BalancerEvidence>,
    /// Each source that could not be read, and why.
    pub unavailable: Vec<String>,
}

/// One connection, or the balancer, with its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Explained {
    /// `None` for the balancer's own verdict.
    pub connection: Option<KernelConnection>,
    pub verdict: Verdict,
}

/// What `explain` prints, text or JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub explained: Vec<Explained>,
    pub host: HostEvidence,
}

/// Gathers the evidence and judges every selected connection.
pub async fn explain(
    instance: &Instance,
    balancer: &Instance,
    selector: Option<Selector>,
) -> Result<Explanation, ExplainError> {
    let host = gather(instance, balancer).await;
    let connections = kernel::connections()?;
    let selected = connections.into_iter().filter(|c| match selector {
        None => true,
        Some(Selector::Token(token)) => {
            c.token == token
                || host.dataplane.iter().flat_map(|d| &d.connections).any(|t| {
                    (t.server_token == c.token || t.client_token == Some(c.token))
                        && (t.server_token == token || t.client_token == Some(token))
                })
        }
        Some(Selector::Addr(addr)) => c.local == addr || c.remote == addr,
    });
    let mut explained: Vec<Explained> = selected
        .map(|connection| Explained {
            verdict: rules::explain_connection(&host, &connection),
            connection: Some(connection),
        })
        .collect();
    if let Some(verdict) = host.balancer.as_ref().and_then(rules::explain_balancer) {
        explained.push(Explained { connection: None, verdict });
    }
    Ok(Explanation { explained, host })
}

/// Reads every source; one that fails is recorded as unavailable, with its error chain.
async fn gather(instance: &Instance, balancer: &Instance) -> HostEvidence {
    let mut host = HostEvidence::default();
    let mut unavailable = Vec::new();
    let mut missing = |what: &str, error: &(dyn std::error::Error + 'static)| {
        unavailable.push(format!("{what}: {}", crate::report::Chain(error)));
    };
    match switches() {
        Ok(s) => host.switches = Some(s),
        Err(error) => missing("net.mptcp sysctls", &error),
    }
    match PmClient::connect().await {
        Ok(mut pm) => {
            match pm.limits().await {
                Ok(limits) => host.limits = Some(limits),
                Err(error) => missing("ip mptcp limits", &error),
            }
            match pm.endpoints().await {
                Ok(endpoints) => host.endpoints = Some(endpoints),
                Err(error) => missing("ip mptcp endpoints", &error),
            }
        }
        Err(error) => missing("the mptcp_pm netlink family", &error),
    }
    match addresses().await {
        Ok(addrs) => host.addresses = Some(addrs),
        Err(error) => missing("interface addresses", &*error),
    }
    match kernel::mib() {
        Ok(mib) => host.mib = Some(mib),
        Err(error) => missing("MPTcpExt counters", &error),
    }
    if instance.exists() {
        match dataplane(instance) {
            Ok(d) => host.dataplane = Some(d),
            Err(error) => {
                unavailable.push(format!("dataplane {}: {}", instance.name, crate::report::Chain(&*error)))
            }
        }
    } else {
        unavailable.push(format!("dataplane {}: not attached", instance.name));
    }
    if balancer.exists() {
        match balancer_evidence(balancer) {
            Ok(b) => host.balancer = Some(b),
            Err(error) => {
                unavailable.push(format!("balancer {}: {}", balancer.name, crate::report::Chain(&error)))
            }
        }
    } else {
        unavailable.push(format!("balancer {}: none runs here", balancer.name));
    }
    host.unavailable = unavailable;
    host
}

fn switches() -> Result<Switches, crate::paths::PathError> {
    let flag = |name| -> Result<Option<bool>, crate::paths::PathError> {
        Ok(mptcp_switch(name)?.map(|value| value != "0"))
    };
    Ok(Switches {
        enabled: flag("enabled")?,
        pm_type: crate::paths::pm_type()?,
        allow_join_initial_addr_port: flag("allow_join_initial_addr_port")?,
    })
}

async fn addresses() -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let rtnl = Rtnl::connect(false)?;
    Ok(rtnl.addresses().await?.into_iter().filter(|a| a.usable()).map(|a| a.addr).collect())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn dataplane(instance: &Instance) -> Result<DataplaneEvidence, BoxError> {
    let tables = Tables::open(|name| Ok(instance.open_map(name)?))?;
    let config: DataplaneConfig = tables.config.get(&0, 0)?;
    let mut evidence = DataplaneEvidence {
        instance: instance.name.clone(),
        admission: match config.admission {
            admission::KNOWN_TOKEN => "known-token",
            admission::VERIFIED => "verified",
            _ => "allow",
        },
        join_rate_per_sec: config.join_rate_per_sec,
        ..DataplaneEvidence::default()
    };
    for iface in instance.interfaces()? {
        let counters = stats::read_counters(instance, &iface)?;
        for c in [&counters.ingress, &counters.egress] {
            evidence.joins_admitted += c.joins_admitted;
            evidence.joins_dropped_unknown_token += c.joins_dropped_unknown_token;
            evidence.joins_dropped_rate_limit += c.joins_dropped_rate_limit;
            evidence.packets_dropped_hmac += c.packets_dropped_hmac;
        }
    }
    let mut connections: BTreeMap<u32, DataplaneConnection> = tables
        .connections()?
        .into_iter()
        .map(|(token, c)| {
            let client = c.flags & connection_flags::CLIENT_KEY != 0;
            let tracked = DataplaneConnection {
                server_token: token,
                client_token: client.then_some(c.client_token),
                server_no_join_to_source: c.flags & connection_flags::SERVER_NO_JOIN_TO_SOURCE != 0,
                ..DataplaneConnection::default()
            };
            (token, tracked)
        })
        .collect();
    for (_, subflow) in tables.subflows()? {
        if subflow.kind != subflow_kind::JOIN {
            continue;
        }
        let Some(tracked) = connections.get_mut(&subflow.conn_token) else { continue };
        tracked.joins += 1;
        match subflow.hmac {
            hmac_verdict::VERIFIED => tracked.joins_verified += 1,
            hmac_verdict::FAILED => tracked.joins_failed += 1,
            _ => {}
        }
    }
    evidence.connections = connections.into_values().collect();
    Ok(evidence)
}

fn balancer_evidence(balancer: &Instance) -> Result<BalancerEvidence, lb::SteeringError> {
    let stats = lb::stats(balancer, &lb::sync::default_state_dir(balancer))?;
    Ok(BalancerEvidence {
        instance: balancer.name.clone(),
        hash_only_vips: stats
            .vips
            .iter()
            .filter(|vip| vip.steering == lb::Steering::HashOnly)
            .map(|vip| vip.address)
            .collect(),
        joins_hashed: stats.counters.joins_hashed,
        joins_unknown_token: stats.counters.joins_unknown_token,
        joins_steered_by_token: stats.counters.joins_steered_by_token,
    })
}
