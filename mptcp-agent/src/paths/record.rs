//! Path events as the daemon's event log records them: `time_ns`, `kind` and the event's own
//! fields, one typed variant per shape.

use std::net::{IpAddr, SocketAddr};

use serde::{Serialize, Serializer};

use super::{
    monotonic_ns,
    owner::Owner,
    pm::{EndpointFlags, EventKind, Limits, PmError, PmEvent},
    policy::Action,
    state::Policy,
    sysctl::SwitchChange,
};
use crate::config::{PathMode, PmKind};

/// One line of the event log.
#[derive(Debug, Clone)]
pub struct PathRecord {
    pub time_ns: u64,
    pub event: PathEvent,
}

/// What happened; the record's `kind` comes from the variant ([`PathEvent::kind`]).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PathEvent {
    PmTypeSet {
        pm: PmKind,
    },
    LimitsSet(Limits),
    SysctlSet(SwitchChange),
    PathsStarted {
        policy: Policy,
    },
    PathPrimary {
        iface: Option<String>,
        previous: Option<String>,
    },
    PathLink {
        #[serde(skip)]
        up: bool,
        iface: Option<String>,
        index: u32,
    },
    PathAddressAdded {
        iface: Option<String>,
        addr: IpAddr,
        prefix_len: u8,
        usable: bool,
    },
    PathAddressRemoved {
        iface: Option<String>,
        addr: IpAddr,
    },
    /// The `[[paths.rule]]` a new connection falls under, and who owns it.
    PathRule {
        token: String,
        local: SocketAddr,
        remote: SocketAddr,
        /// Numbered from 1; none: the table's own policy.
        rule: Option<usize>,
        mode: PathMode,
        #[serde(skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
        /// Why the owner is unknown, when a rule needed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        owner_error: Option<String>,
    },
    /// An event of the kernel's path manager.
    Pm(PmEvent),
    /// A request the kernel carried out, and how long it took to answer.
    Done {
        #[serde(flatten)]
        request: Request,
        took_us: u64,
    },
    /// A request the kernel refused.
    PathError {
        op: &'static str,
        error: String,
        request: Request,
        took_us: u64,
    },
}

/// A request to the kernel's path manager.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Request {
    EndpointFlags {
        id: u8,
        addr: IpAddr,
        flags: EndpointFlags,
        previous: EndpointFlags,
    },
    EndpointAdded {
        addr: IpAddr,
        flags: EndpointFlags,
        iface: Option<String>,
    },
    EndpointRemoved {
        id: u8,
        addr: IpAddr,
        iface: Option<String>,
    },
    /// Closes the subflows of an address that had no endpoint (ID 0).
    InitialSubflowsClosed {
        addr: IpAddr,
    },
    /// Withdraws a dead address before its subflows close.
    AddressWithdrawn {
        token: String,
        addr: IpAddr,
        id: u8,
    },
    /// One of the userspace path manager's actions on a connection.
    Action {
        token: String,
        #[serde(flatten)]
        action: Action,
    },
}

impl PathEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PmTypeSet { .. } => "pm_type_set",
            Self::LimitsSet(_) => "limits_set",
            Self::SysctlSet(_) => "sysctl_set",
            Self::PathsStarted { .. } => "paths_started",
            Self::PathPrimary { .. } => "path_primary",
            Self::PathLink { up: true, .. } => "path_link_up",
            Self::PathLink { up: false, .. } => "path_link_down",
            Self::PathAddressAdded { .. } => "path_address_added",
            Self::PathAddressRemoved { .. } => "path_address_removed",
            Self::PathRule { .. } => "path_rule",
            Self::Pm(event) => event.kind.unwrap_or(EventKind::Unknown).log_name(),
            Self::Done { request, .. } => request.kind(),
            Self::PathError { .. } => "path_error",
        }
    }
}

impl Request {
    /// The record's kind when the request succeeds.
    fn kind(&self) -> &'static str {
        match self {
            Self::EndpointFlags { .. } => "endpoint_flags",
            Self::EndpointAdded { .. } => "endpoint_added",
            Self::EndpointRemoved { .. } => "endpoint_removed",
            Self::InitialSubflowsClosed { .. } => "initial_subflows_closed",
            Self::AddressWithdrawn { .. } | Self::Action { action: Action::Withdraw { .. }, .. } => {
                "address_withdrawn"
            }
            Self::Action { action: Action::Destroy { .. }, .. } => "subflow_destroyed",
            Self::Action { action: Action::Create { .. }, .. } => "subflow_created",
            Self::Action { action: Action::SetBackup { .. }, .. } => "subflow_priority",
            Self::Action { action: Action::Announce { .. }, .. } => "address_announced",
        }
    }

    /// The operation a failure names.
    fn op(&self) -> &'static str {
        match self {
            Self::EndpointFlags { .. } | Self::Action { action: Action::SetBackup { .. }, .. } => "set-flags",
            Self::EndpointAdded { .. } => "add-addr",
            Self::EndpointRemoved { .. } => "del-addr",
            Self::InitialSubflowsClosed { .. } => "del-addr id 0",
            Self::AddressWithdrawn { .. } | Self::Action { action: Action::Withdraw { .. }, .. } => "remove",
            Self::Action { action: Action::Destroy { .. }, .. } => "subflow-destroy",
            Self::Action { action: Action::Create { .. }, .. } => "subflow-create",
            Self::Action { action: Action::Announce { .. }, .. } => "announce",
        }
    }
}

impl PathRecord {
    pub fn now(event: PathEvent) -> Self {
        Self { time_ns: monotonic_ns(), event }
    }

    /// The record of a request: timed when it was sent, with how long the kernel took to answer
    /// (`took_us`: removing an endpoint waits for an RCU grace period, after its subflows closed),
    /// and `path_error` naming the operation when the kernel refused it.
    pub fn outcome(request: Request, (sent, result): (u64, Result<(), PmError>)) -> Self {
        let took_us = monotonic_ns().saturating_sub(sent) / 1_000;
        let event = match result {
            Ok(()) => PathEvent::Done { request, took_us },
            // Logged (rate-limited) and counted by whoever runs the manager, and in the record.
            Err(error) => {
                PathEvent::PathError { op: request.op(), error: error.to_string(), request, took_us }
            }
        };
        Self { time_ns: sent, event }
    }
}

impl Serialize for PathRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Line<'r> {
            time_ns: u64,
            kind: &'static str,
            #[serde(flatten)]
            event: &'r PathEvent,
        }
        Line { time_ns: self.time_ns, kind: self.event.kind(), event: &self.event }.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn line(event: PathEvent) -> Value {
        serde_json::to_value(PathRecord { time_ns: 5, event }).unwrap()
    }

    #[test]
    fn records_keep_the_log_s_shapes() {
        assert_eq!(
            line(PathEvent::PathLink { up: false, iface: Some("eth0".into()), index: 3 }),
            json!({"time_ns": 5, "kind": "path_link_down", "iface": "eth0", "index": 3})
        );
        let change = SwitchChange {
            name: "net.mptcp.allow_join_initial_addr_port",
            value: "0".into(),
            previous: "1".into(),
        };
        assert_eq!(
            line(PathEvent::SysctlSet(change)),
            json!({"time_ns": 5, "kind": "sysctl_set", "name": "net.mptcp.allow_join_initial_addr_port",
                   "value": "0", "previous": "1"})
        );
        assert_eq!(
            line(PathEvent::LimitsSet(Limits { subflows: 8, add_addr_accepted: 2 })),
            json!({"time_ns": 5, "kind": "limits_set", "subflows": 8, "add_addr_accepted": 2})
        );
        let action = Action::Create { local: "192.0.2.1".parse().unwrap(), if_index: 4, backup: true };
        let request = Request::Action { token: "0x00000001".into(), action };
        assert_eq!(
            line(PathEvent::Done { request: request.clone(), took_us: 9 }),
            json!({"time_ns": 5, "kind": "subflow_created", "token": "0x00000001", "local": "192.0.2.1",
                   "if_index": 4, "backup": true, "took_us": 9})
        );
        assert_eq!(
            line(PathEvent::PathError { op: request.op(), error: "no".into(), request, took_us: 9 }),
            json!({"time_ns": 5, "kind": "path_error", "op": "subflow-create", "error": "no", "took_us": 9,
                   "request": {"token": "0x00000001", "local": "192.0.2.1", "if_index": 4, "backup": true}})
        );
        let flags = EndpointFlags { subflow: true, backup: true, ..EndpointFlags::default() };
        let request = Request::EndpointFlags {
            id: 2,
            addr: "192.0.2.1".parse().unwrap(),
            flags,
            previous: EndpointFlags { backup: false, ..flags },
        };
        assert_eq!(
            line(PathEvent::Done { request, took_us: 1 }),
            json!({"time_ns": 5, "kind": "endpoint_flags", "id": 2, "addr": "192.0.2.1",
                   "flags": ["subflow", "backup"], "previous": ["subflow"], "took_us": 1})
        );
    }

    #[test]
    fn pm_events_show_hex_tokens_and_only_the_attributes_they_have() {
        let event = PmEvent {
            kind: Some(EventKind::SubEstablished),
            token: Some(0xabcd),
            local_id: Some(1),
            local: Some("192.0.2.1:40000".parse().unwrap()),
            ..PmEvent::default()
        };
        assert_eq!(
            line(PathEvent::Pm(event)),
            json!({"time_ns": 5, "kind": "pm_sub_established", "token": "0x0000abcd", "local_id": 1,
                   "local": "192.0.2.1:40000"})
        );
    }
}
