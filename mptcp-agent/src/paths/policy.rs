//! What the policy asks for, given the interfaces as they stand: the in-kernel path manager's
//! endpoints, and per connection the userspace path manager's subflows and announcements. Pure
//! functions of the configuration and the network state; the path manager applies the result.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::{
    pm::EndpointFlags,
    rtnl::{Link, NetState},
};
use crate::config::{InterfaceConfig, PathMode, PathsConfig, Role};

/// Opens subflows (or, on a server, is announced): the interfaces a mode chooses among.
fn is_candidate(interface: &InterfaceConfig) -> bool {
    matches!(interface.role, Role::Subflow | Role::Backup)
}

fn link<'n>(interface: &InterfaceConfig, net: &'n NetState) -> Option<&'n Link> {
    net.link_named(interface.name())
}

fn usable(interface: &InterfaceConfig, net: &NetState) -> bool {
    link(interface, net).is_some_and(Link::usable)
}

/// The interface that carries the traffic in backup and single-path modes: the first usable
/// `subflow` interface in file order, else the first usable `backup` one.
pub fn primary<'c>(config: &'c PathsConfig, net: &NetState) -> Option<&'c InterfaceConfig> {
    let usable_with = |role| config.interfaces.iter().find(|i| i.role == role && usable(i, net));
    usable_with(Role::Subflow).or_else(|| usable_with(Role::Backup))
}

/// Usable addresses of an interface, oldest first; without make-before-break only the newest
/// per family, so a new address replaces the old one at once.
fn addresses(config: &PathsConfig, link: &Link, net: &NetState) -> Vec<IpAddr> {
    let all: Vec<IpAddr> = net.addresses_of(link.index).filter(|a| a.usable()).map(|a| a.addr).collect();
    if config.make_before_break {
        return all;
    }
    all.iter()
        .enumerate()
        .filter(|(i, addr)| !all[i + 1..].iter().any(|later| later.is_ipv4() == addr.is_ipv4()))
        .map(|(_, addr)| *addr)
        .collect()
}

/// How an interface takes part, given the mode and which interface is primary: `None` when
/// it has no part right now, else whether its paths are backups.
fn participation(config: &PathsConfig, interface: &InterfaceConfig, is_primary: bool) -> Option<bool> {
    match (interface.role, config.mode) {
        (Role::Ignore, _) => None,
        (Role::Signal | Role::Laminar, _) => Some(false),
        (_, PathMode::Full) => Some(interface.role == Role::Backup),
        (_, PathMode::Backup) => Some(!is_primary),
        (_, PathMode::SinglePath) => is_primary.then_some(false),
    }
}

/// An endpoint the in-kernel path manager should have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredEndpoint {
    pub addr: IpAddr,
    pub if_index: u32,
    pub flags: EndpointFlags,
}

/// The in-kernel path manager's endpoints the policy asks for, in file order.
pub fn endpoints(config: &PathsConfig, net: &NetState) -> Vec<DesiredEndpoint> {
    let primary = primary(config, net).map(InterfaceConfig::name);
    let mut desired = Vec::new();
    for interface in &config.interfaces {
        let Some(link) = link(interface, net).filter(|l| l.usable()) else { continue };
        let Some(backup) = participation(config, interface, primary == Some(interface.name())) else {
            continue;
        };
        // A laminar endpoint only answers the peer's announcements, on a server too.
        let laminar = interface.role == Role::Laminar;
        let announces = (config.server && !laminar) || interface.role == Role::Signal;
        let flags = EndpointFlags {
            signal: announces,
            subflow: !announces && !laminar,
            backup,
            fullmesh: !announces && !laminar && config.fullmesh(),
            implicit: false,
            laminar,
        };
        desired.extend(addresses(config, link, net).into_iter().map(|addr| DesiredEndpoint {
            addr,
            if_index: link.index,
            flags,
        }));
    }
    desired
}

/// A subflow of a connection as the path manager knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubflowInfo {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The local address's ID in the connection (0: the initial subflow's address).
    pub local_id: u8,
    pub backup: bool,
}

/// A subflow asked for from a local address, or one that failed, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub addr: IpAddr,
    /// Asked for as a backup: the kernel's events carry the peer's backup bit, not this one.
    pub backup: bool,
    pub at_ns: u64,
}

/// A connection as the userspace path manager sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// The initial subflow's ends.
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub server_side: bool,
    /// Established subflows, the initial one included.
    pub subflows: Vec<SubflowInfo>,
    /// Subflows asked for and not established yet.
    pub pending: Vec<Attempt>,
    /// Local addresses that failed to open a subflow recently: not tried again for a while.
    pub failed: Vec<Attempt>,
    /// Local addresses announced to the peer.
    pub announced: Vec<IpAddr>,
    /// The `[[paths.rule]]` whose policy applies, numbered from 1; none: the table's own.
    #[serde(default)]
    pub rule: Option<usize>,
}

/// What the userspace path manager should do on one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
// Serialized as its fields alone: the kind of its record names the action.
#[serde(untagged)]
pub enum Action {
    /// Close a subflow (its interface went down, or it is surplus once the wanted ones are up).
    Destroy { local: SocketAddr, remote: SocketAddr, local_id: u8, reason: &'static str },
    /// Open a subflow from `local` to the connection's remote end.
    Create { local: IpAddr, if_index: u32, backup: bool },
    /// Change a subflow's priority (MP_PRIO).
    SetBackup { local: SocketAddr, remote: SocketAddr, backup: bool },
    /// Announce a local address (ADD_ADDR).
    Announce { addr: IpAddr, if_index: u32 },
    /// Withdraw an announced address (REMOVE_ADDR).
    Withdraw { addr: IpAddr },
}

/// A path the policy wants subflows on, for one connection.
struct Target {
    index: u32,
    local: IpAddr,
    count: usize,
    backup: bool,
}

/// The userspace path manager's actions on `connection`, given the policy and the interfaces.
pub fn actions(config: &PathsConfig, net: &NetState, connection: &ConnectionInfo) -> Vec<Action> {
    let Some(remote) = connection.remote else { return Vec::new() };
    let mut actions = Vec::new();
    let primary = primary(config, net).map(InterfaceConfig::name);
    let same_family = |addr: &IpAddr| addr.is_ipv4() == remote.ip().is_ipv4();
    let managed =
        |index: u32| config.interfaces.iter().any(|i| link(i, net).is_some_and(|l| l.index == index));

    // Subflows whose address is gone or whose interface is down carry nothing: they close, so
    // the kernel sends their unacknowledged data again on the others at once. Last, once what
    // replaces them is promoted or asked for: data sent again goes to an active path.
    let mut live: Vec<(&SubflowInfo, u32)> = Vec::new();
    let mut dead = Vec::new();
    for subflow in &connection.subflows {
        match net.link_of(subflow.local.ip()) {
            Some(link) if link.usable() => live.push((subflow, link.index)),
            Some(link) if !managed(link.index) => {}
            _ => dead.push(Action::Destroy {
                local: subflow.local,
                remote: subflow.remote,
                local_id: subflow.local_id,
                reason: "path down",
            }),
        }
    }

    // Announcements: addresses of signal interfaces, or of every taking part on a server.
    let mut announce: Vec<(IpAddr, u32)> = Vec::new();
    for interface in &config.interfaces {
        let Some(link) = link(interface, net).filter(|l| l.usable()) else { continue };
        let signals = interface.role == Role::Signal || (config.server && is_candidate(interface));
        if signals && participation(config, interface, primary == Some(interface.name())).is_some() {
            let own = connection.local.map(|l| l.ip());
            announce.extend(
                addresses(config, link, net)
                    .into_iter()
                    .filter(|a| same_family(a) && Some(*a) != own)
                    .map(|a| (a, link.index)),
            );
        }
    }
    for (addr, if_index) in &announce {
        if !connection.announced.contains(addr) {
            actions.push(Action::Announce { addr: *addr, if_index: *if_index });
        }
    }
    for addr in &connection.announced {
        if !announce.iter().any(|(a, _)| a == addr) {
            actions.push(Action::Withdraw { addr: *addr });
        }
    }
    if connection.server_side || config.server {
        actions.extend(dead);
        return actions;
    }

    // Subflows: per interface taking part, how many and with which priority.
    let mut targets = Vec::new();
    for interface in config.interfaces.iter().filter(|i| is_candidate(i)) {
        let Some(link) = link(interface, net).filter(|l| l.usable()) else { continue };
        let is_primary = primary == Some(interface.name());
        let Some(backup) = participation(config, interface, is_primary) else { continue };
        // The newest address of the connection's family.
        let Some(local) = addresses(config, link, net).into_iter().rev().find(same_family) else { continue };
        let count = if backup { 1 } else { usize::from(config.ndiffports()) };
        targets.push(Target { index: link.index, local, count, backup });
    }
    let limit = usize::from(config.max_subflows()) + 1;
    let mut total = live.len() + connection.pending.len();
    let mut all_up = true;
    for target in &targets {
        let on_path: Vec<&SubflowInfo> =
            live.iter().filter(|(_, i)| *i == target.index).map(|(s, _)| *s).collect();
        for subflow in on_path.iter().filter(|s| s.backup != target.backup) {
            actions.push(Action::SetBackup {
                local: subflow.local,
                remote: subflow.remote,
                backup: target.backup,
            });
        }
        let pending = connection.pending.iter().filter(|a| a.addr == target.local).count();
        let missing = target.count.saturating_sub(on_path.len() + pending);
        all_up &= on_path.len() >= target.count;
        if connection.failed.iter().any(|a| a.addr == target.local) {
            continue;
        }
        for _ in 0..missing {
            if total >= limit {
                break;
            }
            total += 1;
            actions.push(Action::Create {
                local: target.local,
                if_index: target.index,
                backup: target.backup,
            });
        }
    }
    // Surplus subflows on interfaces taking no part (single-path after the primary came back)
    // or beyond a path's count close only once every wanted subflow is up: make before break.
    if all_up {
        for interface in config.interfaces.iter().filter(|i| is_candidate(i)) {
            let Some(index) = link(interface, net).map(|l| l.index) else { continue };
            let wanted = targets.iter().find(|t| t.index == index).map_or(0, |t| t.count);
            // The oldest stay: the initial subflow keeps the connection's addresses.
            for (subflow, _) in live.iter().filter(|(_, i)| *i == index).skip(wanted) {
                actions.push(Action::Destroy {
                    local: subflow.local,
                    remote: subflow.remote,
                    local_id: subflow.local_id,
                    reason: "surplus",
                });
            }
        }
    }
    actions.extend(dead);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::AgentConfig,
        paths::rtnl::{Address, NetEvent},
    };

    const WLAN: u32 = 2;
    const WWAN: u32 = 3;

    fn config(extra: &str, wwan_role: &str) -> PathsConfig {
        let text = format!(
            "[paths]\n{extra}\n[[paths.interface]]\nname = \"wlan0\"\n\n[[paths.interface]]\nname = \"wwan0\"\nrole = \"{wwan_role}\"\n"
        );
        AgentConfig::parse(&text).unwrap().paths().unwrap().clone()
    }

    fn net(wlan_up: bool, wwan_up: bool) -> NetState {
        let mut net = NetState::default();
        for (index, name, up, addr) in
            [(WLAN, "wlan0", wlan_up, "192.0.2.1"), (WWAN, "wwan0", wwan_up, "198.51.100.1")]
        {
            net.apply(&NetEvent::Link(Link { index, name: name.into(), up, carrier: up, loopback: false }));
            net.apply(&NetEvent::AddressAdded(Address {
                index,
                addr: addr.parse().unwrap(),
                prefix_len: 24,
                tentative: false,
                deprecated: false,
            }));
        }
        net
    }

    fn summary(endpoints: &[DesiredEndpoint]) -> Vec<(String, Vec<&'static str>)> {
        endpoints.iter().map(|e| (e.addr.to_string(), e.flags.names())).collect()
    }

    #[test]
    fn full_mode_makes_every_usable_interface_a_subflow_endpoint() {
        let config = config("", "subflow");
        assert_eq!(
            summary(&endpoints(&config, &net(true, true))),
            [("192.0.2.1".into(), vec!["subflow"]), ("198.51.100.1".into(), vec!["subflow"])]
        );
        assert_eq!(
            summary(&endpoints(&config, &net(false, true))),
            [("198.51.100.1".into(), vec!["subflow"])]
        );
        let backup_role = self::config("", "backup");
        assert_eq!(summary(&endpoints(&backup_role, &net(true, true)))[1].1, ["subflow", "backup"]);
        let fullmesh = self::config("fullmesh = true", "subflow");
        assert_eq!(summary(&endpoints(&fullmesh, &net(true, true)))[0].1, ["subflow", "fullmesh"]);
    }

    #[test]
    fn backup_mode_promotes_the_next_interface_when_the_primary_fails() {
        let config = config("mode = \"backup\"", "subflow");
        assert_eq!(primary(&config, &net(true, true)).map(InterfaceConfig::name), Some("wlan0"));
        assert_eq!(
            summary(&endpoints(&config, &net(true, true))),
            [("192.0.2.1".into(), vec!["subflow"]), ("198.51.100.1".into(), vec!["subflow", "backup"])]
        );
        assert_eq!(primary(&config, &net(false, true)).map(InterfaceConfig::name), Some("wwan0"));
        assert_eq!(
            summary(&endpoints(&config, &net(false, true))),
            [("198.51.100.1".into(), vec!["subflow"])]
        );
        // A `subflow` interface is preferred to a `backup` one wherever it is in the file.
        let roles = self::config("mode = \"backup\"", "backup");
        assert_eq!(primary(&roles, &net(true, true)).map(InterfaceConfig::name), Some("wlan0"));
    }

    #[test]
    fn single_path_mode_opens_the_second_path_only_after_the_first_fails() {
        let config = config("mode = \"single-path\"", "subflow");
        assert_eq!(summary(&endpoints(&config, &net(true, true))), [("192.0.2.1".into(), vec!["subflow"])]);
        assert_eq!(
            summary(&endpoints(&config, &net(false, true))),
            [("198.51.100.1".into(), vec!["subflow"])]
        );
        assert!(endpoints(&config, &net(false, false)).is_empty());
    }

    #[test]
    fn a_server_announces_and_ignored_interfaces_stay_out() {
        let config = config("server = true", "ignore");
        assert_eq!(summary(&endpoints(&config, &net(true, true))), [("192.0.2.1".into(), vec!["signal"])]);
        let signal = self::config("", "signal");
        assert_eq!(summary(&endpoints(&signal, &net(true, true)))[1].1, ["signal"]);
    }

    #[test]
    fn a_laminar_interface_gets_a_laminar_endpoint_in_every_mode_and_on_a_server() {
        for keys in ["", "mode = \"backup\"", "mode = \"single-path\"", "fullmesh = true"] {
            let config = config(keys, "laminar");
            assert_eq!(
                summary(&endpoints(&config, &net(true, true)))[1],
                ("198.51.100.1".into(), vec!["laminar"])
            );
            // It never becomes the primary: it opens no subflow to the peer's initial address.
            assert_eq!(primary(&config, &net(false, true)), None, "{keys}");
        }
        let server = config("server = true", "laminar");
        assert_eq!(
            summary(&endpoints(&server, &net(true, true))),
            [("192.0.2.1".into(), vec!["signal"]), ("198.51.100.1".into(), vec!["laminar"])]
        );
        assert!(endpoints(&config("", "laminar"), &net(true, false)).len() == 1, "down: no endpoint");
    }

    #[test]
    fn make_before_break_keeps_the_old_address_until_it_goes() {
        let mut state = net(true, true);
        state.apply(&NetEvent::AddressAdded(Address {
            index: WWAN,
            addr: "198.51.100.7".parse().unwrap(),
            prefix_len: 24,
            tentative: false,
            deprecated: false,
        }));
        let both = summary(&endpoints(&config("", "subflow"), &state));
        assert_eq!(
            both.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
            ["192.0.2.1", "198.51.100.1", "198.51.100.7"]
        );
        let newest = summary(&endpoints(&config("make-before-break = false", "subflow"), &state));
        assert_eq!(newest.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(), ["192.0.2.1", "198.51.100.7"]);
    }

    fn connection(subflows: &[(&str, bool)]) -> ConnectionInfo {
        let remote: SocketAddr = "203.0.113.2:443".parse().unwrap();
        let subflows: Vec<SubflowInfo> = subflows
            .iter()
            .enumerate()
            .map(|(i, (local, backup))| SubflowInfo {
                local: SocketAddr::new(local.parse().unwrap(), 40000 + i as u16),
                remote,
                local_id: i as u8,
                backup: *backup,
            })
            .collect();
        ConnectionInfo {
            local: subflows.first().map(|s| s.local),
            remote: Some(remote),
            subflows,
            ..ConnectionInfo::default()
        }
    }

    fn creates(actions: &[Action]) -> Vec<(String, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { local, backup, .. } => Some((local.to_string(), *backup)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn userspace_full_mode_opens_a_subflow_per_path_and_ndiffports_per_pair() {
        let config = config("pm = \"userspace\"\nndiffports = 3", "subflow");
        let actions = actions(&config, &net(true, true), &connection(&[("192.0.2.1", false)]));
        let wlan = ("192.0.2.1".to_owned(), false);
        let wwan = ("198.51.100.1".to_owned(), false);
        // Three per address pair: two more beside the initial one, three over the second path.
        assert_eq!(creates(&actions), [wlan.clone(), wlan, wwan.clone(), wwan.clone(), wwan]);
    }

    #[test]
    fn userspace_subflows_stop_at_max_subflows_and_pending_ones_count() {
        let config = config("pm = \"userspace\"\nndiffports = 4\nmax-subflows = 2", "subflow");
        let mut conn = connection(&[("192.0.2.1", false)]);
        assert_eq!(creates(&actions(&config, &net(true, true), &conn)).len(), 2);
        let attempt = Attempt { addr: "192.0.2.1".parse().unwrap(), backup: false, at_ns: 0 };
        conn.pending = vec![attempt, attempt];
        assert!(creates(&actions(&config, &net(true, true), &conn)).is_empty());
    }

    #[test]
    fn userspace_failover_destroys_the_dead_subflow_and_promotes_or_opens_another() {
        let backup = config("pm = \"userspace\"\nmode = \"backup\"", "subflow");
        let conn = connection(&[("192.0.2.1", false), ("198.51.100.1", true)]);
        assert!(actions(&backup, &net(true, true), &conn).is_empty(), "as the policy says already");
        let failed = actions(&backup, &net(false, true), &conn);
        assert_eq!(
            failed,
            [
                Action::SetBackup {
                    local: conn.subflows[1].local,
                    remote: conn.subflows[1].remote,
                    backup: false
                },
                Action::Destroy {
                    local: conn.subflows[0].local,
                    remote: conn.subflows[0].remote,
                    local_id: 0,
                    reason: "path down"
                },
            ],
            "promoted first, so the data sent again goes to an active subflow"
        );
        let single = config("pm = \"userspace\"\nmode = \"single-path\"", "subflow");
        let conn = connection(&[("192.0.2.1", false)]);
        assert!(actions(&single, &net(true, true), &conn).is_empty(), "no second path while the first works");
        let failed = actions(&single, &net(false, true), &conn);
        assert_eq!(creates(&failed), [("198.51.100.1".into(), false)]);
        assert!(matches!(failed[1], Action::Destroy { reason: "path down", .. }), "{failed:?}");
    }

    #[test]
    fn single_path_moves_back_to_the_primary_only_once_it_is_up() {
        let config = config("pm = \"userspace\"\nmode = \"single-path\"", "subflow");
        let mut conn = connection(&[("198.51.100.1", false)]);
        // The primary is back: open it first, close the interim path only after.
        let back = actions(&config, &net(true, true), &conn);
        assert_eq!(creates(&back), [("192.0.2.1".into(), false)]);
        assert!(!back.iter().any(|a| matches!(a, Action::Destroy { .. })));
        conn.subflows.push(SubflowInfo {
            local: "192.0.2.1:41000".parse().unwrap(),
            remote: conn.remote.unwrap(),
            local_id: 1,
            backup: false,
        });
        let up = actions(&config, &net(true, true), &conn);
        assert_eq!(
            up,
            [Action::Destroy {
                local: conn.subflows[0].local,
                remote: conn.subflows[0].remote,
                local_id: 0,
                reason: "surplus"
            }]
        );
    }

    #[test]
    fn userspace_server_announces_its_other_addresses_and_withdraws_lost_ones() {
        let config = config("pm = \"userspace\"\nserver = true", "subflow");
        let mut conn = connection(&[("192.0.2.1", false)]);
        conn.server_side = true;
        let announce = actions(&config, &net(true, true), &conn);
        assert_eq!(announce, [Action::Announce { addr: "198.51.100.1".parse().unwrap(), if_index: WWAN }]);
        conn.announced.push("198.51.100.1".parse().unwrap());
        assert!(actions(&config, &net(true, true), &conn).is_empty());
        assert_eq!(
            actions(&config, &net(true, false), &conn),
            [Action::Withdraw { addr: "198.51.100.1".parse().unwrap() }]
        );
    }
}
