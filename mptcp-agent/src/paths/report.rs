//! What `mptcp-agent paths` shows: the kernel's path manager, the interfaces, the daemon's state
//! and the dataplane's subflows, gathered in one [`Report`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use serde::Serialize;

use super::{
    PathError, check_mptcp, hex_token, mptcp_switch,
    pm::{self, PmClient},
    pm_type,
    rtnl::{self, NetState, Rtnl},
    state::{PathState, state_path},
    tcp_wmem,
};
use crate::{
    bpf::Instance,
    config::Role,
    dataplane::tables::{SubflowView, TableError, Tables},
};

/// A subflow the dataplane tracks, placed on the local interface it uses.
#[derive(Debug, Serialize)]
pub struct PathSubflow {
    pub iface: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The local end's token of the connection.
    pub token: Option<String>,
    pub kind: &'static str,
    pub state: &'static str,
    pub backup: bool,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
}

/// An interface for `paths`.
#[derive(Debug, Serialize)]
pub struct InterfaceView {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub carrier: bool,
    pub role: Option<Role>,
    pub primary: bool,
    pub addresses: Vec<String>,
    pub routes: rtnl::RouteSummary,
}

/// An endpoint for `paths`, with its interface's name.
#[derive(Debug, Serialize)]
pub struct EndpointView {
    #[serde(flatten)]
    pub endpoint: pm::Endpoint,
    pub iface: Option<String>,
}

/// What `mptcp-agent paths` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub pm_type: Option<u8>,
    /// `net.mptcp.allow_join_initial_addr_port`: `false` when this host's MP_CAPABLE SYN-ACKs
    /// set the C flag; `None` on a kernel without the switch.
    pub allow_join_initial: Option<bool>,
    /// `net.ipv4.tcp_wmem`'s largest value: how far a subflow's send buffer may grow.
    pub send_buffer_max: u32,
    pub limits: pm::Limits,
    pub endpoints: Vec<EndpointView>,
    pub interfaces: Vec<InterfaceView>,
    /// The daemon's policy and per-connection state, when a daemon with `[paths]` runs.
    pub daemon: Option<PathState>,
    /// Subflows from the dataplane's tables, when the instance is attached.
    pub subflows: Option<Vec<PathSubflow>>,
}

/// Gathers the report: endpoints and limits from the kernel, links, addresses and routes from
/// rtnetlink, the policy and connections from the daemon's state, bytes per subflow from the
/// dataplane. Runs in the caller's network namespace.
pub async fn report(instance: &Instance, tables: Option<&Tables>) -> Result<Report, PathError> {
    check_mptcp()?;
    let mut pm = PmClient::connect().await?;
    let endpoints = pm.endpoints().await?;
    let limits = pm.limits().await?;
    let rtnl = Rtnl::connect(false)?;
    let net = rtnl.snapshot().await?;
    let routes = rtnl.routes().await?;
    let daemon = PathState::read(&state_path(instance))?;
    let roles: BTreeMap<&str, Role> = daemon
        .iter()
        .flat_map(|d| &d.policy.interfaces)
        .map(|interface| (interface.name.as_str(), interface.role))
        .collect();
    let primary = daemon.as_ref().and_then(|d| d.primary.as_deref());
    let name = |index: Option<u32>| index.and_then(|i| net.links.get(&i)).map(|l| l.name.clone());
    let interfaces = net
        .links
        .values()
        .filter(|link| !link.loopback)
        .map(|link| InterfaceView {
            name: link.name.clone(),
            index: link.index,
            up: link.up,
            carrier: link.carrier,
            role: roles.get(link.name.as_str()).copied(),
            primary: primary == Some(link.name.as_str()),
            addresses: net.addresses_of(link.index).map(|a| format!("{}/{}", a.addr, a.prefix_len)).collect(),
            routes: routes.get(&link.index).cloned().unwrap_or_default(),
        })
        .collect();
    let endpoints = endpoints
        .into_iter()
        .map(|endpoint| EndpointView {
            iface: name(endpoint.if_index).or_else(|| net.link_of(endpoint.addr).map(|l| l.name.clone())),
            endpoint,
        })
        .collect();
    let subflows = tables.map(|tables| dataplane_subflows(tables, &net)).transpose()?;
    let allow_join_initial = mptcp_switch("allow_join_initial_addr_port")?.map(|value| value != "0");
    let [_, _, send_buffer_max] = tcp_wmem()?;
    Ok(Report {
        pm_type: pm_type()?,
        allow_join_initial,
        send_buffer_max,
        limits,
        endpoints,
        interfaces,
        daemon,
        subflows,
    })
}

/// The dataplane's subflows, each oriented from this host: sent is what the local end sent, and
/// the token is the local end's, the one the kernel's events and `ss -M` name the connection by.
fn dataplane_subflows(tables: &Tables, net: &NetState) -> Result<Vec<PathSubflow>, TableError> {
    use mptcp_common::maps::connection_flags;
    let client_tokens: BTreeMap<u32, u32> = tables
        .connections()?
        .into_iter()
        .filter(|(_, c)| c.flags & connection_flags::CLIENT_KEY != 0)
        .map(|(server_token, c)| (server_token, c.client_token))
        .collect();
    let mut subflows = tables.subflows()?;
    subflows.sort_by_key(|(_, subflow)| subflow.first_seen_ns);
    // Connections this host is the client of, known by a subflow whose client end is ours now.
    // An end whose address is gone (IPv6 flushes a link's addresses when it goes down) is
    // oriented by its connection, else the dead initial subflow would show as the server's.
    let local_clients: BTreeSet<u32> = subflows
        .iter()
        .filter(|(key, subflow)| net.link_of(SubflowView::new(key, subflow).client.ip()).is_some())
        .map(|(_, subflow)| subflow.conn_token)
        .collect();
    Ok(subflows
        .iter()
        .map(|(key, subflow)| {
            let view = SubflowView::new(key, subflow);
            let client_is_local = net.link_of(view.client.ip()).is_some()
                || (net.link_of(view.server.ip()).is_none()
                    && subflow.conn_token != 0
                    && local_clients.contains(&subflow.conn_token));
            let (local, remote, sent, received) = if client_is_local {
                (view.client, view.server, &view.c2s, &view.s2c)
            } else {
                (view.server, view.client, &view.s2c, &view.c2s)
            };
            PathSubflow {
                iface: net.link_of(local.ip()).map(|l| l.name.clone()),
                local,
                remote,
                token: (subflow.conn_token != 0).then(|| {
                    let local_token = if client_is_local {
                        client_tokens.get(&subflow.conn_token).copied().unwrap_or(subflow.conn_token)
                    } else {
                        subflow.conn_token
                    };
                    hex_token(local_token)
                }),
                kind: view.kind,
                state: view.state,
                backup: view.backup,
                packets_sent: sent.packets,
                bytes_sent: sent.bytes,
                packets_received: received.packets,
                bytes_received: received.bytes,
            }
        })
        .collect())
}
