//! The daemon's path manager: takes rtnetlink's and the kernel's path manager's events and
//! brings the kernel's endpoints and limits (in-kernel path manager) or each connection's
//! subflows (userspace path manager) to what the policy asks for.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use super::{
    PathError, check_features, check_mptcp, hex_token, monotonic_ns, owner,
    pm::{self, EventKind, LocalAddr, PmClient, PmError, PmEvent, PmEvents},
    policy::{self, Action, Attempt, ConnectionInfo, SubflowInfo},
    record::{PathEvent, PathRecord, Request},
    rtnl::{NetEvent, NetState, Rtnl},
    rules,
    state::{ConnectionState, PathState, Policy, state_path},
    sysctl::{set_deny_join_initial, set_pm_type, set_send_buffer_max},
};
use crate::{
    bpf::{self, Instance},
    config::{PathsConfig, PmKind},
};

/// A subflow asked for and not established after this long counts as failed.
const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// A local address whose subflow failed is not tried again on that connection for this long.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Stable local address IDs for the userspace path manager: one per address, 1 to 255.
#[derive(Debug, Default)]
struct AddressIds(BTreeMap<IpAddr, u8>);

impl AddressIds {
    fn id(&mut self, addr: IpAddr) -> u8 {
        if let Some(id) = self.0.get(&addr) {
            return *id;
        }
        let used: BTreeSet<u8> = self.0.values().copied().collect();
        // IDs are a u8 on the wire: past 255 addresses the last one is shared.
        let id = (1..=u8::MAX).find(|id| !used.contains(id)).unwrap_or(u8::MAX);
        self.0.insert(addr, id);
        id
    }
}

/// What woke the path manager.
pub enum PathInput {
    Net(NetEvent),
    Pm(PmEvent),
    Tick,
    Closed(&'static str),
}

/// The path manager of the daemon.
pub struct PathManager {
    config: PathsConfig,
    /// The policy of each `[[paths.rule]]`, in file order.
    rule_configs: Vec<PathsConfig>,
    rtnl: Rtnl,
    pm: PmClient,
    events: PmEvents,
    net: NetState,
    /// Indexes the configured interfaces have had, so endpoints of a vanished one stay ours.
    managed: BTreeSet<u32>,
    ids: AddressIds,
    connections: BTreeMap<u32, ConnectionInfo>,
    primary: Option<String>,
    state_path: PathBuf,
    tick: tokio::time::Interval,
}

impl PathManager {
    /// Checks MPTCP, selects the kernel's path manager, subscribes to rtnetlink and the path
    /// manager's events, then applies the policy to the interfaces as they are.
    pub async fn start(
        instance: &Instance,
        config: PathsConfig,
    ) -> Result<(Self, Vec<PathRecord>), PathError> {
        check_mptcp()?;
        check_features(&config)?;
        let rtnl = Rtnl::connect(true)?;
        let mut pm = PmClient::connect().await?;
        let events = pm.subscribe()?;
        let mut records = Vec::new();
        if set_pm_type(config.pm)? {
            records.push(PathRecord::now(PathEvent::PmTypeSet { pm: config.pm }));
        }
        let changes = [
            config.deny_join_initial.map(set_deny_join_initial).transpose()?.flatten(),
            config.send_buffer_max().map(set_send_buffer_max).transpose()?.flatten(),
        ];
        records.extend(
            changes.into_iter().flatten().map(|change| PathRecord::now(PathEvent::SysctlSet(change))),
        );
        if config.pm == PmKind::Kernel {
            let limits = pm::Limits {
                subflows: u32::from(config.max_subflows()),
                add_addr_accepted: u32::from(config.add_addr_accepted()),
            };
            pm.set_limits(limits).await?;
            records.push(PathRecord::now(PathEvent::LimitsSet(limits)));
        }
        let net = rtnl.snapshot().await?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rule_configs = (0..config.rules.len()).filter_map(|i| config.for_rule(i)).collect();
        let mut manager = Self {
            config,
            rule_configs,
            rtnl,
            pm,
            events,
            net,
            managed: BTreeSet::new(),
            ids: AddressIds::default(),
            connections: BTreeMap::new(),
            primary: None,
            state_path: state_path(instance),
            tick,
        };
        for interface in &manager.config.interfaces {
            match manager.net.link_named(interface.name()) {
                Some(link) => {
                    manager.managed.insert(link.index);
                }
                None => log::warn!("paths: interface {} does not exist (yet)", interface.name()),
            }
        }
        records.push(PathRecord::now(PathEvent::PathsStarted { policy: Policy::new(&manager.config) }));
        // A start is a reconcile against endpoints a previous run (or an operator) left.
        manager.update_primary(&mut records);
        if manager.config.pm == PmKind::Kernel {
            manager.reconcile_endpoints(&[], &mut records).await?;
        }
        manager.write_state()?;
        Ok((manager, records))
    }

    /// Waits for the next input; cancel-safe, so it can sit in a `select!`.
    pub async fn wait(&mut self) -> PathInput {
        tokio::select! {
            event = self.rtnl.next_event() => event.map_or(PathInput::Closed("rtnetlink"), PathInput::Net),
            event = self.events.next() => event.map_or(PathInput::Closed("mptcp_pm events"), PathInput::Pm),
            _ = self.tick.tick() => PathInput::Tick,
        }
    }

    /// Acts on one input; returns what to log. Failed requests are logged as `path_error` and
    /// do not stop the daemon; a closed socket does.
    pub async fn handle(&mut self, input: PathInput) -> Result<Vec<PathRecord>, PathError> {
        let mut records = Vec::new();
        let changed = match input {
            PathInput::Net(event) => self.on_net_event(event, &mut records).await?,
            PathInput::Pm(event) => self.on_pm_event(event, &mut records).await?,
            PathInput::Tick => self.on_tick(&mut records).await?,
            PathInput::Closed(socket) => return Err(PathError::SocketClosed(socket)),
        };
        if changed {
            self.write_state()?;
        }
        Ok(records)
    }

    /// Index of a configured interface, if `index` is one.
    fn configured_name(&self, index: u32) -> Option<&str> {
        let name = &self.net.links.get(&index)?.name;
        self.config.interfaces.iter().map(|i| i.name()).find(|n| n == name)
    }

    /// Usable addresses of configured interfaces: (address, interface index).
    fn usable_addresses(&self) -> BTreeSet<(IpAddr, u32)> {
        self.net
            .addresses
            .iter()
            .filter(|a| a.usable() && self.configured_name(a.index).is_some())
            .filter(|a| self.net.links.get(&a.index).is_some_and(|l| l.usable()))
            .map(|a| (a.addr, a.index))
            .collect()
    }

    fn update_primary(&mut self, records: &mut Vec<PathRecord>) {
        let primary = policy::primary(&self.config, &self.net).map(|i| i.name().to_owned());
        if primary != self.primary {
            let previous = std::mem::replace(&mut self.primary, primary.clone());
            records.push(PathRecord::now(PathEvent::PathPrimary { iface: primary, previous }));
        }
    }

    async fn on_net_event(
        &mut self,
        event: NetEvent,
        records: &mut Vec<PathRecord>,
    ) -> Result<bool, PathError> {
        let before = self.usable_addresses();
        let was_usable = |net: &NetState, index: u32| net.links.get(&index).is_some_and(|l| l.usable());
        let index = match &event {
            NetEvent::Link(link) => link.index,
            NetEvent::LinkGone(index) => *index,
            NetEvent::AddressAdded(address) | NetEvent::AddressGone(address) => address.index,
        };
        let usable_before = was_usable(&self.net, index);
        if let NetEvent::Link(link) = &event
            && self.config.interfaces.iter().any(|i| i.name() == link.name)
        {
            self.managed.insert(link.index);
        }
        // A link that goes takes its name with it.
        let name_before = self.net.links.get(&index).map(|l| l.name.clone());
        if !self.net.apply(&event) || !self.managed.contains(&index) {
            return Ok(false);
        }
        let name = self.net.links.get(&index).map(|l| l.name.clone()).or(name_before);
        let usable_now = was_usable(&self.net, index);
        match &event {
            NetEvent::Link(_) | NetEvent::LinkGone(_) if usable_before != usable_now => {
                records.push(PathRecord::now(PathEvent::PathLink { up: usable_now, iface: name, index }))
            }
            NetEvent::AddressAdded(address) => records.push(PathRecord::now(PathEvent::PathAddressAdded {
                iface: name,
                addr: address.addr,
                prefix_len: address.prefix_len,
                usable: address.usable(),
            })),
            NetEvent::AddressGone(address) => records
                .push(PathRecord::now(PathEvent::PathAddressRemoved { iface: name, addr: address.addr })),
            _ => {}
        }
        let after = self.usable_addresses();
        if before == after {
            return Ok(true);
        }
        let lost: Vec<IpAddr> = before.difference(&after).map(|(addr, _)| *addr).collect();
        self.update_primary(records);
        match self.config.pm {
            PmKind::Kernel => self.reconcile_endpoints(&lost, records).await?,
            PmKind::Userspace => self.reconcile_connections(records).await,
        }
        Ok(true)
    }

    /// Brings the in-kernel path manager's endpoints on configured interfaces to what the
    /// policy asks for. The paths that stay or come are set up first (flag changes, then
    /// additions: the kernel opens their subflows at once), and the endpoints that go are removed
    /// last: the kernel then closes their subflows and sends their unacknowledged data again on
    /// what is already there. `lost` addresses that had no endpoint may still carry connections'
    /// initial subflows: those close too.
    async fn reconcile_endpoints(
        &mut self,
        lost: &[IpAddr],
        records: &mut Vec<PathRecord>,
    ) -> Result<(), PathError> {
        let desired = policy::endpoints(&self.config, &self.net);
        let current = self.pm.endpoints().await?;
        let ours = |endpoint: &pm::Endpoint| {
            endpoint.if_index.is_some_and(|i| self.managed.contains(&i))
                || self.net.link_of(endpoint.addr).is_some_and(|l| self.managed.contains(&l.index))
        };
        // Endpoints whose kind changes are replaced: removed before their address comes back.
        let mut replaced = Vec::new();
        let mut dropped = Vec::new();
        let mut flag_changes = Vec::new();
        for endpoint in current.iter().filter(|e| ours(e)) {
            match desired.iter().find(|d| d.addr == endpoint.addr) {
                None => dropped.push(endpoint),
                Some(wanted)
                    if wanted.flags.signal != endpoint.flags.signal
                        || wanted.flags.subflow != endpoint.flags.subflow
                        || wanted.flags.laminar != endpoint.flags.laminar
                        || endpoint.if_index.is_some_and(|i| i != wanted.if_index) =>
                {
                    replaced.push(endpoint)
                }
                Some(wanted) if wanted.flags != endpoint.flags => flag_changes.push((endpoint, wanted)),
                Some(_) => {}
            }
        }
        for endpoint in &replaced {
            self.remove_endpoint(endpoint, records).await;
        }
        for (endpoint, wanted) in flag_changes {
            let result = sent_at(self.pm.set_endpoint_flags(endpoint.id, wanted.flags)).await;
            let request = Request::EndpointFlags {
                id: endpoint.id,
                addr: endpoint.addr,
                flags: wanted.flags,
                previous: endpoint.flags,
            };
            records.push(PathRecord::outcome(request, result));
        }
        for wanted in &desired {
            let present = current.iter().any(|e| e.addr == wanted.addr);
            if present && !replaced.iter().any(|e| e.addr == wanted.addr) {
                continue;
            }
            let result =
                sent_at(self.pm.add_endpoint(wanted.addr, None, wanted.flags, wanted.if_index)).await;
            let iface = self.iface_name(Some(wanted.if_index));
            let request = Request::EndpointAdded { addr: wanted.addr, flags: wanted.flags, iface };
            records.push(PathRecord::outcome(request, result));
        }
        for endpoint in &dropped {
            self.remove_endpoint(endpoint, records).await;
        }
        for addr in lost {
            if !current.iter().any(|e| e.addr == *addr) {
                let result = sent_at(self.pm.del_endpoint(0, *addr)).await;
                records.push(PathRecord::outcome(Request::InitialSubflowsClosed { addr: *addr }, result));
            }
        }
        Ok(())
    }

    fn iface_name(&self, index: Option<u32>) -> Option<String> {
        index.and_then(|i| self.net.links.get(&i)).map(|l| l.name.clone())
    }

    async fn remove_endpoint(&mut self, endpoint: &pm::Endpoint, records: &mut Vec<PathRecord>) {
        let result = sent_at(self.pm.del_endpoint(endpoint.id, endpoint.addr)).await;
        let iface = self.iface_name(endpoint.if_index);
        let request = Request::EndpointRemoved { id: endpoint.id, addr: endpoint.addr, iface };
        records.push(PathRecord::outcome(request, result));
    }

    async fn on_pm_event(
        &mut self,
        event: PmEvent,
        records: &mut Vec<PathRecord>,
    ) -> Result<bool, PathError> {
        let kind = event.kind.unwrap_or(EventKind::Unknown);
        records.push(PathRecord::now(PathEvent::Pm(event.clone())));
        let Some(token) = event.token else { return Ok(false) };
        let mut act = false;
        match kind {
            EventKind::Created | EventKind::Established => {
                // Matched once, on the first event with the connection's ends.
                if self.connections.get(&token).is_none_or(|c| c.remote.is_none())
                    && let (Some(local), Some(remote)) = (event.local, event.remote)
                    && !self.config.rules.is_empty()
                {
                    let (rule, record) = self.match_rule(token, local, remote);
                    records.push(record);
                    self.connections.entry(token).or_default().rule = rule;
                }
                let connection = self.connections.entry(token).or_default();
                connection.local = event.local;
                connection.remote = event.remote;
                connection.server_side = event.server_side.unwrap_or(false);
                if kind == EventKind::Established
                    && connection.subflows.is_empty()
                    && let (Some(local), Some(remote)) = (event.local, event.remote)
                {
                    connection.subflows.push(SubflowInfo { local, remote, local_id: 0, backup: false });
                }
                act = kind == EventKind::Established;
            }
            EventKind::Closed => {
                self.connections.remove(&token);
            }
            EventKind::SubEstablished | EventKind::SubClosed | EventKind::SubPriority => {
                let (Some(local), Some(remote)) = (event.local, event.remote) else { return Ok(true) };
                let connection = self.connections.entry(token).or_default();
                let known = connection.subflows.iter().position(|s| s.local == local && s.remote == remote);
                match kind {
                    EventKind::SubEstablished => {
                        let asked = connection.pending.iter().position(|a| a.addr == local.ip());
                        let asked_backup = asked.is_some_and(|i| connection.pending[i].backup);
                        if let Some(i) = asked {
                            connection.pending.remove(i);
                        }
                        if known.is_none() {
                            let backup = asked_backup || event.backup.unwrap_or(false);
                            let local_id = event.local_id.unwrap_or(0);
                            connection.subflows.push(SubflowInfo { local, remote, local_id, backup });
                        }
                    }
                    EventKind::SubClosed => match known {
                        Some(i) => {
                            connection.subflows.remove(i);
                        }
                        // A subflow that closes before it was established failed to open.
                        None => {
                            if let Some(i) = connection.pending.iter().position(|a| a.addr == local.ip()) {
                                let failed = connection.pending.remove(i);
                                connection.failed.push(Attempt { at_ns: monotonic_ns(), ..failed });
                            }
                        }
                    },
                    _ => {
                        if let (Some(i), Some(backup)) = (known, event.backup) {
                            connection.subflows[i].backup = backup;
                        }
                    }
                }
                act = kind != EventKind::SubPriority;
            }
            _ => {}
        }
        if act && self.config.pm == PmKind::Userspace {
            self.reconcile_connection(token, records).await;
        }
        Ok(true)
    }

    /// The rule (numbered from 1) the new connection `token` falls under, and the record
    /// saying so. Its owner is looked up only if a rule names a cgroup or a process.
    fn match_rule(&self, token: u32, local: SocketAddr, remote: SocketAddr) -> (Option<usize>, PathRecord) {
        let rules = &self.config.rules;
        let lookup =
            rules.iter().any(|r| r.get_ref().needs_owner()).then(|| owner::owner(token, remote.ip()));
        let (owner, owner_error) = match lookup {
            Some(Ok(owner)) => (Some(owner), None),
            Some(Err(error)) => (None, Some(error.to_string())),
            None => (None, None),
        };
        // The hierarchy's mount is looked up only when a rule names a cgroup.
        let cgroup_id =
            |path: &str| bpf::cgroup2_root().ok().and_then(|root| owner::cgroup_id(&root, path).ok());
        let rule = rules::first_match(rules, local, remote, owner.as_ref(), cgroup_id).map(|i| i + 1);
        let mode = self.policy_of(rule).mode;
        let event =
            PathEvent::PathRule { token: hex_token(token), local, remote, rule, mode, owner, owner_error };
        (rule, PathRecord::now(event))
    }

    /// The policy of rule number `rule` (from 1), else the table's.
    fn policy_of(&self, rule: Option<usize>) -> &PathsConfig {
        rule.and_then(|r| self.rule_configs.get(r.wrapping_sub(1))).unwrap_or(&self.config)
    }

    async fn on_tick(&mut self, records: &mut Vec<PathRecord>) -> Result<bool, PathError> {
        let now = monotonic_ns();
        let pending_timeout = PENDING_TIMEOUT.as_nanos() as u64;
        let retry_after = RETRY_AFTER.as_nanos() as u64;
        let mut changed = false;
        for connection in self.connections.values_mut() {
            let (expired, pending): (Vec<Attempt>, Vec<Attempt>) =
                connection.pending.drain(..).partition(|a| now.saturating_sub(a.at_ns) > pending_timeout);
            connection.pending = pending;
            changed |= !expired.is_empty();
            connection.failed.extend(expired.into_iter().map(|a| Attempt { at_ns: now, ..a }));
            let before = connection.failed.len();
            connection.failed.retain(|a| now.saturating_sub(a.at_ns) <= retry_after);
            changed |= connection.failed.len() != before;
        }
        if changed && self.config.pm == PmKind::Userspace {
            self.reconcile_connections(records).await;
        }
        Ok(changed)
    }

    async fn reconcile_connections(&mut self, records: &mut Vec<PathRecord>) {
        let tokens: Vec<u32> = self.connections.keys().copied().collect();
        for token in tokens {
            self.reconcile_connection(token, records).await;
        }
    }

    /// Applies the policy's actions on one connection (userspace path manager).
    async fn reconcile_connection(&mut self, token: u32, records: &mut Vec<PathRecord>) {
        let Some(connection) = self.connections.get(&token) else { return };
        let actions = policy::actions(self.policy_of(connection.rule), &self.net, connection);
        let remote = connection.remote;
        let token_hex = hex_token(token);
        let mut withdrawn = BTreeSet::new();
        for action in actions {
            // A dead address is withdrawn (REMOVE_ADDR) before its subflows close, so the peer
            // drops its side of them too instead of waiting for its own timeouts.
            if let Action::Destroy { local, local_id, reason: "path down", .. } = &action
                && withdrawn.insert(*local_id)
            {
                let result = sent_at(self.pm.remove(token, *local_id)).await;
                let request =
                    Request::AddressWithdrawn { token: token_hex.clone(), addr: local.ip(), id: *local_id };
                records.push(PathRecord::outcome(request, result));
            }
            let result = match &action {
                Action::Destroy { local, remote, .. } => {
                    sent_at(self.pm.destroy_subflow(token, *local, *remote)).await
                }
                Action::Create { local, if_index, backup } => {
                    let Some(remote) = remote else { continue };
                    let local = LocalAddr {
                        addr: *local,
                        id: self.ids.id(*local),
                        backup: *backup,
                        if_index: Some(*if_index),
                    };
                    sent_at(self.pm.create_subflow(token, local, remote)).await
                }
                Action::SetBackup { local, remote, backup } => {
                    sent_at(self.pm.set_subflow_backup(token, *local, *remote, *backup)).await
                }
                Action::Announce { addr, if_index } => {
                    let local = LocalAddr {
                        addr: *addr,
                        id: self.ids.id(*addr),
                        backup: false,
                        if_index: Some(*if_index),
                    };
                    sent_at(self.pm.announce(token, local)).await
                }
                Action::Withdraw { addr } => sent_at(self.pm.remove(token, self.ids.id(*addr))).await,
            };
            let ok = result.1.is_ok();
            let request = Request::Action { token: token_hex.clone(), action: action.clone() };
            records.push(PathRecord::outcome(request, result));
            let Some(connection) = self.connections.get_mut(&token) else { return };
            let now = monotonic_ns();
            match action {
                Action::Destroy { local, remote, .. } => {
                    connection.subflows.retain(|s| !(s.local == local && s.remote == remote))
                }
                Action::Create { local, backup, .. } => {
                    let attempt = Attempt { addr: local, backup, at_ns: now };
                    if ok { connection.pending.push(attempt) } else { connection.failed.push(attempt) }
                }
                Action::SetBackup { local, remote, backup } if ok => {
                    for subflow in
                        connection.subflows.iter_mut().filter(|s| s.local == local && s.remote == remote)
                    {
                        subflow.backup = backup;
                    }
                }
                Action::Announce { addr, .. } if ok => connection.announced.push(addr),
                Action::Withdraw { addr } => connection.announced.retain(|a| *a != addr),
                _ => {}
            }
        }
    }

    fn write_state(&self) -> Result<(), PathError> {
        let connections = self
            .connections
            .iter()
            .map(|(token, connection)| ConnectionState {
                token: hex_token(*token),
                connection: connection.clone(),
            })
            .collect();
        let state = PathState {
            updated_ns: monotonic_ns(),
            policy: Policy::new(&self.config),
            primary: self.primary.clone(),
            connections,
        };
        state.write(&self.state_path)
    }
}

/// Sends a request; returns when it was sent, and its result.
async fn sent_at(request: impl Future<Output = Result<(), PmError>>) -> (u64, Result<(), PmError>) {
    let sent = monotonic_ns();
    (sent, request.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ids_are_stable_and_distinct() {
        let mut ids = AddressIds::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!((ids.id(a), ids.id(b), ids.id(a)), (1, 2, 1));
    }
}
