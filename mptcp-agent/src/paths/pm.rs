//! The kernel's MPTCP path manager over generic netlink (family `mptcp_pm`, the uapi in
//! `include/uapi/linux/mptcp_pm.h`): endpoints, limits and flags of the in-kernel path manager,
//! per-connection commands of the userspace one, and the `mptcp_pm_events` multicast group.
//!
//! Listing endpoints and reading limits go through the `mptcp-pm` crate, which covers exactly
//! those two; the other commands and the events are messages of this module built on
//! `netlink-packet-generic`, reusing that crate's typed address attributes.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use genetlink::{GenetlinkError, GenetlinkHandle, message::RawGenlMessage};
use mptcp_pm::{
    MptcpPathManagerAddressAttr as AddrAttr, MptcpPathManagerAddressAttrFlag as AddrFlag,
    MptcpPathManagerAttr, MptcpPathManagerError, MptcpPathManagerHandle, MptcpPathManagerLimitsAttr,
};
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorMessage, NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload, Nla, NlasIterator, Parseable, ParseableParametrized, emit_u32, parse_u8, parse_u16_be,
    parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::AsyncSocket as _;
use serde::Serialize;

const FAMILY_NAME: &str = "mptcp_pm";
const EVENTS_GROUP: &str = "mptcp_pm_events";
const FAMILY_VERSION: u8 = 1;

/// `MPTCP_PM_CMD_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    AddAddr = 1,
    DelAddr = 2,
    SetLimits = 5,
    SetFlags = 7,
    Announce = 8,
    Remove = 9,
    SubflowCreate = 10,
    SubflowDestroy = 11,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Self::AddAddr => "add-addr",
            Self::DelAddr => "del-addr",
            Self::SetLimits => "set-limits",
            Self::SetFlags => "set-flags",
            Self::Announce => "announce",
            Self::Remove => "remove",
            Self::SubflowCreate => "subflow-create",
            Self::SubflowDestroy => "subflow-destroy",
        }
    }
}

/// `MPTCP_PM_ATTR_*`
mod attr {
    pub const ADDR: u16 = 1;
    pub const RCV_ADD_ADDRS: u16 = 2;
    pub const SUBFLOWS: u16 = 3;
    pub const TOKEN: u16 = 4;
    pub const LOC_ID: u16 = 5;
    pub const ADDR_REMOTE: u16 = 6;
}

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// One attribute of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PmAttr {
    /// A local address (nested `MPTCP_PM_ADDR_ATTR_*`).
    Addr(Vec<AddrAttr>),
    RcvAddAddrs(u32),
    Subflows(u32),
    Token(u32),
    LocId(u8),
    /// The remote address of a subflow (nested).
    AddrRemote(Vec<AddrAttr>),
    Other(DefaultNla),
}

impl Nla for PmAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Addr(nested) | Self::AddrRemote(nested) => nested.as_slice().buffer_len(),
            Self::RcvAddAddrs(_) | Self::Subflows(_) | Self::Token(_) => 4,
            Self::LocId(_) => 1,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Addr(_) => attr::ADDR | NLA_F_NESTED,
            Self::RcvAddAddrs(_) => attr::RCV_ADD_ADDRS,
            Self::Subflows(_) => attr::SUBFLOWS,
            Self::Token(_) => attr::TOKEN,
            Self::LocId(_) => attr::LOC_ID,
            Self::AddrRemote(_) => attr::ADDR_REMOTE | NLA_F_NESTED,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Addr(nested) | Self::AddrRemote(nested) => nested.as_slice().emit(buffer),
            // The buffer is exactly value_len() long, so these cannot fail.
            Self::RcvAddAddrs(value) | Self::Subflows(value) | Self::Token(value) => {
                let _ = emit_u32(buffer, *value);
            }
            Self::LocId(id) => {
                if let Some(byte) = buffer.first_mut() {
                    *byte = *id;
                }
            }
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

/// A command message of the `mptcp_pm` family. Do-commands are answered by an ACK only, so
/// parsing keeps attributes opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmMessage {
    command: u8,
    attrs: Vec<PmAttr>,
}

impl GenlFamily for PmMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.command
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for PmMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for PmMessage {
    fn parse_with_param(buffer: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buffer)
            .map(|nla| DefaultNla::parse(&nla?).map(PmAttr::Other))
            .collect::<Result<_, _>>()?;
        Ok(Self { command: header.cmd, attrs })
    }
}

/// `MPTCP_EVENT_*`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Established,
    Closed,
    Announced,
    Removed,
    SubEstablished,
    SubClosed,
    SubPriority,
    ListenerCreated,
    ListenerClosed,
    Unknown,
}

impl EventKind {
    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Created,
            2 => Self::Established,
            3 => Self::Closed,
            6 => Self::Announced,
            7 => Self::Removed,
            10 => Self::SubEstablished,
            11 => Self::SubClosed,
            13 => Self::SubPriority,
            15 => Self::ListenerCreated,
            16 => Self::ListenerClosed,
            _ => Self::Unknown,
        }
    }

    /// The name in the agent's event log.
    pub fn log_name(self) -> &'static str {
        match self {
            Self::Created => "pm_created",
            Self::Established => "pm_established",
            Self::Closed => "pm_closed",
            Self::Announced => "pm_announced",
            Self::Removed => "pm_removed",
            Self::SubEstablished => "pm_sub_established",
            Self::SubClosed => "pm_sub_closed",
            Self::SubPriority => "pm_sub_priority",
            Self::ListenerCreated => "pm_listener_created",
            Self::ListenerClosed => "pm_listener_closed",
            Self::Unknown => "pm_unknown",
        }
    }
}

/// One path manager event (`mptcp_event_attr`); attributes the event lacks are `None`, and
/// left out of its record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PmEvent {
    #[serde(skip)]
    pub kind: Option<EventKind>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "hex_token")]
    pub token: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<u8>,
    /// saddr:sport (for ANNOUNCED, the kernel leaves it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    /// daddr:dport; for ANNOUNCED, the announced address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_side: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_reason: Option<u32>,
}

/// Tokens show in hex, as `ss -M` and the dataplane's tables show them.
fn hex_token<S: serde::Serializer>(token: &Option<u32>, serializer: S) -> Result<S::Ok, S::Error> {
    token.map(super::hex_token).serialize(serializer)
}

/// `mptcp_event_attr` numbers.
mod event_attr {
    pub const TOKEN: u16 = 1;
    pub const LOC_ID: u16 = 3;
    pub const REM_ID: u16 = 4;
    pub const SADDR4: u16 = 5;
    pub const SADDR6: u16 = 6;
    pub const DADDR4: u16 = 7;
    pub const DADDR6: u16 = 8;
    pub const SPORT: u16 = 9;
    pub const DPORT: u16 = 10;
    pub const BACKUP: u16 = 11;
    pub const ERROR: u16 = 12;
    pub const IF_IDX: u16 = 15;
    pub const RESET_REASON: u16 = 16;
    pub const SERVER_SIDE: u16 = 18;
}

/// An event message of the family: the generic header's command is the event type, and the
/// attributes are the event attribute set (not the command one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PmEventMessage(PmEvent);

impl GenlFamily for PmEventMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        0
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

fn ipv4(value: &[u8]) -> Result<Ipv4Addr, DecodeError> {
    <[u8; 4]>::try_from(value).map(Ipv4Addr::from).map_err(|_| DecodeError::from("bad IPv4 address length"))
}

fn ipv6(value: &[u8]) -> Result<Ipv6Addr, DecodeError> {
    <[u8; 16]>::try_from(value).map(Ipv6Addr::from).map_err(|_| DecodeError::from("bad IPv6 address length"))
}

impl ParseableParametrized<[u8], GenlHeader> for PmEventMessage {
    fn parse_with_param(buffer: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut event = PmEvent { kind: Some(EventKind::from_code(header.cmd)), ..PmEvent::default() };
        let (mut saddr, mut daddr, mut sport, mut dport) = (None, None, 0, 0);
        for nla in NlasIterator::new(buffer) {
            let nla = nla?;
            let value = nla.value();
            match nla.kind() {
                event_attr::TOKEN => event.token = Some(parse_u32(value)?),
                event_attr::LOC_ID => event.local_id = Some(parse_u8(value)?),
                event_attr::REM_ID => event.remote_id = Some(parse_u8(value)?),
                event_attr::SADDR4 => saddr = Some(IpAddr::V4(ipv4(value)?)),
                event_attr::SADDR6 => saddr = Some(IpAddr::V6(ipv6(value)?)),
                event_attr::DADDR4 => daddr = Some(IpAddr::V4(ipv4(value)?)),
                event_attr::DADDR6 => daddr = Some(IpAddr::V6(ipv6(value)?)),
                event_attr::SPORT => sport = parse_u16_be(value)?,
                event_attr::DPORT => dport = parse_u16_be(value)?,
                event_attr::BACKUP => event.backup = Some(parse_u8(value)? != 0),
                event_attr::ERROR => event.error = Some(parse_u8(value)?),
                event_attr::IF_IDX => event.if_index = Some(parse_u32(value)?),
                event_attr::RESET_REASON => event.reset_reason = Some(parse_u32(value)?),
                event_attr::SERVER_SIDE => event.server_side = Some(parse_u8(value)? != 0),
                _ => {}
            }
        }
        event.local = saddr.map(|ip| SocketAddr::new(ip, sport));
        event.remote = daddr.map(|ip| SocketAddr::new(ip, dport));
        Ok(Self(event))
    }
}

/// Endpoint flags (`MPTCP_PM_ADDR_FLAG_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointFlags {
    pub signal: bool,
    pub subflow: bool,
    pub backup: bool,
    pub fullmesh: bool,
    /// Created by the kernel for an address a peer joined, not configured.
    pub implicit: bool,
    /// Linux 6.18: answers an address the peer announces with a subflow from this endpoint,
    /// once per endpoint, instead of from the address routing picks.
    pub laminar: bool,
}

/// `MPTCP_PM_ADDR_FLAG_LAMINAR` (include/uapi/linux/mptcp.h, Linux 6.18), which the `mptcp-pm`
/// crate knows only as one of the bits it collects in `Other`.
const FLAG_LAMINAR: u32 = 1 << 5;

impl EndpointFlags {
    fn from_attr(flags: &[AddrFlag]) -> Self {
        let has = |flag: AddrFlag| flags.contains(&flag);
        Self {
            signal: has(AddrFlag::Signal),
            subflow: has(AddrFlag::Subflow),
            backup: has(AddrFlag::Backup),
            fullmesh: has(AddrFlag::Fullmesh),
            implicit: has(AddrFlag::Implicit),
            laminar: flags.iter().any(|f| matches!(f, AddrFlag::Other(bits) if bits & FLAG_LAMINAR != 0)),
        }
    }

    fn to_attr(self) -> Vec<AddrFlag> {
        [
            (self.signal, AddrFlag::Signal),
            (self.subflow, AddrFlag::Subflow),
            (self.backup, AddrFlag::Backup),
            (self.fullmesh, AddrFlag::Fullmesh),
            (self.implicit, AddrFlag::Implicit),
            (self.laminar, AddrFlag::Other(FLAG_LAMINAR)),
        ]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect()
    }

    /// The names `ip mptcp endpoint` prints, in its order.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.signal, "signal"),
            (self.subflow, "subflow"),
            (self.backup, "backup"),
            (self.fullmesh, "fullmesh"),
            (self.implicit, "implicit"),
            (self.laminar, "laminar"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

impl Serialize for EndpointFlags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(serializer)
    }
}

/// An endpoint of the in-kernel path manager (`ip mptcp endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub id: u8,
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub flags: EndpointFlags,
    pub if_index: Option<u32>,
}

/// Per-connection limits of the in-kernel path manager (`ip mptcp limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Additional subflows per connection.
    pub subflows: u32,
    /// ADD_ADDRs accepted per connection.
    pub add_addr_accepted: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PmError {
    #[error(
        "the kernel has no `{FAMILY_NAME}` generic netlink family: it lacks MPTCP path management \
         (CONFIG_MPTCP, Linux >= 5.7; the userspace path manager needs >= 5.19)"
    )]
    FamilyMissing,
    #[error("the `{FAMILY_NAME}` family has no `{EVENTS_GROUP}` multicast group")]
    NoEventsGroup,
    #[error("missing privileges: {op} on the MPTCP path manager needs CAP_NET_ADMIN")]
    Permission { op: &'static str },
    #[error("the kernel refused {op}: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("generic netlink: {0}")]
    Netlink(String),
    #[error("opening a generic netlink socket")]
    Socket(#[source] io::Error),
}

impl PmError {
    fn from_errno(op: &'static str, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::EPERM) {
            Self::Permission { op }
        } else {
            Self::Kernel { op, source }
        }
    }

    fn from_message(op: &'static str, message: &ErrorMessage) -> Self {
        Self::from_errno(op, message.to_io())
    }

    fn from_crate(op: &'static str, error: MptcpPathManagerError) -> Self {
        match error {
            MptcpPathManagerError::NetlinkError(message) => Self::from_message(op, &message),
            other => Self::Netlink(other.to_string()),
        }
    }
}

fn family_of(ip: IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// The nested attributes of an address: family, address and, where given, id, port, flags and
/// interface.
fn address_attrs(
    ip: IpAddr,
    id: Option<u8>,
    port: Option<u16>,
    flags: Option<EndpointFlags>,
    if_index: Option<u32>,
) -> Vec<AddrAttr> {
    let mut attrs = vec![
        AddrAttr::Family(family_of(ip)),
        match ip {
            IpAddr::V4(v4) => AddrAttr::Addr4(v4),
            IpAddr::V6(v6) => AddrAttr::Addr6(v6),
        },
    ];
    attrs.extend(id.map(AddrAttr::Id));
    attrs.extend(port.filter(|&p| p != 0).map(AddrAttr::Port));
    attrs.extend(flags.map(|f| AddrAttr::Flags(f.to_attr())));
    // Interface indexes are positive C ints: they always fit.
    attrs.extend(if_index.and_then(|i| i32::try_from(i).ok()).map(AddrAttr::IfIndex));
    attrs
}

/// A subflow's local end for the userspace path manager: address, its ID in the connection,
/// and whether the subflow is a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr {
    pub addr: IpAddr,
    pub id: u8,
    pub backup: bool,
    pub if_index: Option<u32>,
}

/// The family's ID and multicast groups; `FamilyMissing` when the kernel has no such family.
async fn resolve<F: GenlFamily>(handle: &GenetlinkHandle) -> Result<genetlink::resolver::Family, PmError> {
    handle.resolve_family::<F>().await.map_err(|error| match error {
        GenetlinkError::NetlinkError(io) if io.raw_os_error() == Some(libc::ENOENT) => PmError::FamilyMissing,
        other => PmError::Netlink(other.to_string()),
    })
}

/// Requests to the `mptcp_pm` family, one socket, answers awaited.
pub struct PmClient {
    handle: MptcpPathManagerHandle,
    events_group: u32,
}

/// The `mptcp_pm_events` multicast group, on a socket of its own.
pub struct PmEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RawGenlMessage>, netlink_sys::SocketAddr)>,
}

impl PmEvents {
    /// The next event; `None` once the socket is gone. Messages that do not decode are skipped
    /// with a warning.
    pub async fn next(&mut self) -> Option<PmEvent> {
        loop {
            let (message, _) = self.messages.next().await?;
            let NetlinkPayload::InnerMessage(raw) = message.payload else { continue };
            match raw.parse_into_genlmsg::<PmEventMessage>() {
                Ok(genl) => return Some(genl.payload.0),
                Err(error) => log::warn!("undecodable MPTCP path manager event: {error}"),
            }
        }
    }
}

impl PmClient {
    /// Connects and resolves the family; must run inside a tokio runtime (the socket is driven
    /// by a spawned task).
    pub async fn connect() -> Result<Self, PmError> {
        let (connection, handle, _) = mptcp_pm::new_connection().map_err(PmError::Socket)?;
        tokio::spawn(connection);
        let family = resolve::<PmMessage>(&handle.handle).await?;
        let events_group = *family.multicast_groups.get(EVENTS_GROUP).ok_or(PmError::NoEventsGroup)?;
        Ok(Self { handle, events_group })
    }

    /// Subscribes to the path manager's events on a new socket.
    pub fn subscribe(&self) -> Result<PmEvents, PmError> {
        let (mut connection, _, messages) = genetlink::new_connection().map_err(PmError::Socket)?;
        let socket = connection.socket_mut().socket_mut();
        // An unbound socket has port ID 0, the kernel's own, and the kernel skips the sender's
        // port when it broadcasts: bind first.
        socket.bind_auto().map_err(PmError::Socket)?;
        socket.add_membership(self.events_group).map_err(PmError::Socket)?;
        tokio::spawn(connection);
        Ok(PmEvents { messages })
    }

    /// Sends a do-command and waits for the kernel's ACK.
    async fn execute(&mut self, command: Command, attrs: Vec<PmAttr>) -> Result<(), PmError> {
        let op = command.name();
        let mut message =
            NetlinkMessage::from(GenlMessage::from_payload(PmMessage { command: command as u8, attrs }));
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut replies = self.handle.handle.request(message).await.map_err(|error| match error {
            GenetlinkError::NetlinkError(io) => PmError::from_errno(op, io),
            other => PmError::Netlink(other.to_string()),
        })?;
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|error| PmError::Netlink(error.to_string()))?;
            if let NetlinkPayload::Error(message) = reply.payload {
                return match message.code {
                    None => Ok(()),
                    Some(_) => Err(PmError::from_message(op, &message)),
                };
            }
        }
        Ok(())
    }

    /// Every endpoint of the in-kernel path manager.
    pub async fn endpoints(&mut self) -> Result<Vec<Endpoint>, PmError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .await
            .try_collect()
            .await
            .map_err(|error| PmError::from_crate("get-addr", error))?;
        // The kernel sends each endpoint with its address: a reply without one describes none.
        Ok(messages.iter().filter_map(|message| endpoint(&message.payload.nlas)).collect())
    }

    pub async fn limits(&mut self) -> Result<Limits, PmError> {
        let messages: Vec<_> = self
            .handle
            .limits()
            .get()
            .execute()
            .await
            .try_collect()
            .await
            .map_err(|error| PmError::from_crate("get-limits", error))?;
        let mut limits = Limits::default();
        for nla in messages.iter().flat_map(|message| &message.payload.nlas) {
            match nla {
                MptcpPathManagerAttr::Limits(MptcpPathManagerLimitsAttr::Subflows(n)) => limits.subflows = *n,
                MptcpPathManagerAttr::Limits(MptcpPathManagerLimitsAttr::RcvAddAddrs(n)) => {
                    limits.add_addr_accepted = *n
                }
                _ => {}
            }
        }
        Ok(limits)
    }

    pub async fn set_limits(&mut self, limits: Limits) -> Result<(), PmError> {
        self.execute(
            Command::SetLimits,
            vec![PmAttr::RcvAddAddrs(limits.add_addr_accepted), PmAttr::Subflows(limits.subflows)],
        )
        .await
    }

    /// Adds an endpoint; the kernel picks its ID. With a port, a `signal` endpoint gets a
    /// listener of the kernel's own for joins to that address and port.
    pub async fn add_endpoint(
        &mut self,
        addr: IpAddr,
        port: Option<u16>,
        flags: EndpointFlags,
        if_index: u32,
    ) -> Result<(), PmError> {
        self.execute(
            Command::AddAddr,
            vec![PmAttr::Addr(address_attrs(addr, None, port, Some(flags), Some(if_index)))],
        )
        .await
    }

    /// Deletes the endpoint `id`: the kernel closes the subflows using it and sends REMOVE_ADDR.
    /// ID 0 with an address closes the subflows that use `addr` as the initial one's address.
    pub async fn del_endpoint(&mut self, id: u8, addr: IpAddr) -> Result<(), PmError> {
        self.execute(Command::DelAddr, vec![PmAttr::Addr(address_attrs(addr, Some(id), None, None, None))])
            .await
    }

    /// Sets the backup and fullmesh flags of endpoint `id`; a backup change sends MP_PRIO on every
    /// subflow using it.
    pub async fn set_endpoint_flags(&mut self, id: u8, flags: EndpointFlags) -> Result<(), PmError> {
        let nested = vec![AddrAttr::Id(id), AddrAttr::Flags(flags.to_attr())];
        self.execute(Command::SetFlags, vec![PmAttr::Addr(nested)]).await
    }

    /// Userspace path manager: announces `local` (ADD_ADDR) on connection `token`.
    pub async fn announce(&mut self, token: u32, local: LocalAddr) -> Result<(), PmError> {
        let flags = EndpointFlags { signal: true, backup: local.backup, ..EndpointFlags::default() };
        let addr = address_attrs(local.addr, Some(local.id), None, Some(flags), local.if_index);
        self.execute(Command::Announce, vec![PmAttr::Token(token), PmAttr::Addr(addr)]).await
    }

    /// Userspace path manager: withdraws address `id` (REMOVE_ADDR) from connection `token`.
    pub async fn remove(&mut self, token: u32, id: u8) -> Result<(), PmError> {
        self.execute(Command::Remove, vec![PmAttr::Token(token), PmAttr::LocId(id)]).await
    }

    /// Userspace path manager: opens a subflow of `token` from `local` to `remote`.
    pub async fn create_subflow(
        &mut self,
        token: u32,
        local: LocalAddr,
        remote: SocketAddr,
    ) -> Result<(), PmError> {
        let flags = EndpointFlags { subflow: true, backup: local.backup, ..EndpointFlags::default() };
        let local = address_attrs(local.addr, Some(local.id), None, Some(flags), local.if_index);
        let remote = address_attrs(remote.ip(), None, Some(remote.port()), None, None);
        self.execute(
            Command::SubflowCreate,
            vec![PmAttr::Token(token), PmAttr::Addr(local), PmAttr::AddrRemote(remote)],
        )
        .await
    }

    /// Userspace path manager: closes the subflow of `token` between `local` and `remote`; the
    /// data it had in flight is sent again on the others at once.
    pub async fn destroy_subflow(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(), PmError> {
        let local = address_attrs(local.ip(), None, Some(local.port()), None, None);
        let remote = address_attrs(remote.ip(), None, Some(remote.port()), None, None);
        self.execute(
            Command::SubflowDestroy,
            vec![PmAttr::Token(token), PmAttr::Addr(local), PmAttr::AddrRemote(remote)],
        )
        .await
    }

    /// Userspace path manager: sets the backup priority of one subflow (MP_PRIO).
    pub async fn set_subflow_backup(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> Result<(), PmError> {
        let flags = EndpointFlags { backup, ..EndpointFlags::default() };
        let local = address_attrs(local.ip(), None, Some(local.port()), Some(flags), None);
        let remote = address_attrs(remote.ip(), None, Some(remote.port()), None, None);
        self.execute(
            Command::SetFlags,
            vec![PmAttr::Token(token), PmAttr::Addr(local), PmAttr::AddrRemote(remote)],
        )
        .await
    }
}

/// An endpoint from one GET_ADDR reply's (flattened) address attributes.
fn endpoint(nlas: &[MptcpPathManagerAttr]) -> Option<Endpoint> {
    let mut endpoint = Endpoint {
        id: 0,
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: None,
        flags: EndpointFlags::default(),
        if_index: None,
    };
    let mut has_addr = false;
    for nla in nlas {
        let MptcpPathManagerAttr::Address(attr) = nla else { continue };
        match attr {
            AddrAttr::Id(id) => endpoint.id = *id,
            AddrAttr::Addr4(v4) => (endpoint.addr, has_addr) = (IpAddr::V4(*v4), true),
            AddrAttr::Addr6(v6) => (endpoint.addr, has_addr) = (IpAddr::V6(*v6), true),
            AddrAttr::Port(port) => endpoint.port = (*port != 0).then_some(*port),
            AddrAttr::Flags(flags) => endpoint.flags = EndpointFlags::from_attr(flags),
            // 0 (or below): the endpoint has no interface.
            AddrAttr::IfIndex(index) => endpoint.if_index = u32::try_from(*index).ok().filter(|&i| i != 0),
            _ => {}
        }
    }
    has_addr.then_some(endpoint)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NlaBuffer;

    use super::*;

    /// Attribute kinds (without the nested flag) and values, as the kernel would read them.
    fn decode_attrs(buffer: &[u8]) -> Vec<(u16, Vec<u8>)> {
        NlasIterator::new(buffer)
            .filter_map(Result::ok)
            .map(|nla: NlaBuffer<&[u8]>| (nla.kind(), nla.value().to_vec()))
            .collect()
    }

    fn emit(message: &PmMessage) -> Vec<u8> {
        let mut buffer = vec![0; message.buffer_len()];
        message.emit(&mut buffer);
        buffer
    }

    #[test]
    fn subflow_create_nests_both_addresses_as_the_kernel_expects() {
        let local =
            LocalAddr { addr: "198.51.100.1".parse().unwrap(), id: 3, backup: true, if_index: Some(7) };
        let remote: SocketAddr = "192.0.2.2:5201".parse().unwrap();
        let flags = EndpointFlags { subflow: true, backup: local.backup, ..EndpointFlags::default() };
        let message = PmMessage {
            command: Command::SubflowCreate as u8,
            attrs: vec![
                PmAttr::Token(0xdead_beef),
                PmAttr::Addr(address_attrs(local.addr, Some(local.id), None, Some(flags), local.if_index)),
                PmAttr::AddrRemote(address_attrs(remote.ip(), None, Some(remote.port()), None, None)),
            ],
        };
        let attrs = decode_attrs(&emit(&message));
        assert_eq!(attrs[0], (attr::TOKEN, 0xdead_beef_u32.to_ne_bytes().to_vec()));
        assert_eq!(attrs[1].0, attr::ADDR, "nested flag is not part of the kind");
        let local_attrs = decode_attrs(&attrs[1].1);
        assert!(local_attrs.contains(&(1, AF_INET.to_ne_bytes().to_vec())), "family");
        assert!(local_attrs.contains(&(2, vec![3])), "id");
        assert!(local_attrs.contains(&(3, vec![198, 51, 100, 1])), "addr4 in network order");
        // subflow (1 << 1) | backup (1 << 2)
        assert!(local_attrs.contains(&(6, 6u32.to_ne_bytes().to_vec())), "flags {local_attrs:?}");
        assert!(local_attrs.contains(&(7, 7i32.to_ne_bytes().to_vec())), "ifindex");
        let remote_attrs = decode_attrs(&attrs[2].1);
        assert_eq!(attrs[2].0, attr::ADDR_REMOTE);
        // The port attribute is in host order; the kernel converts it.
        assert!(remote_attrs.contains(&(5, 5201u16.to_ne_bytes().to_vec())), "port");
        // The token attribute takes 8 bytes; the address attribute's type follows its length.
        let raw = emit(&message);
        assert_eq!(u16::from_ne_bytes([raw[10], raw[11]]), attr::ADDR | NLA_F_NESTED);
    }

    #[test]
    fn events_decode_addresses_ports_and_flags() {
        let mut buffer = Vec::new();
        let mut push = |kind: u16, value: &[u8]| {
            let nla = DefaultNla::new(kind, value.to_vec());
            let start = buffer.len();
            buffer.resize(start + nla.buffer_len(), 0);
            nla.emit(&mut buffer[start..]);
        };
        push(event_attr::TOKEN, &0x1234_5678u32.to_ne_bytes());
        push(event_attr::LOC_ID, &[2]);
        push(event_attr::REM_ID, &[0]);
        push(event_attr::SADDR4, &[198, 51, 100, 1]);
        push(event_attr::DADDR4, &[192, 0, 2, 2]);
        // Ports are big-endian on the wire of this family.
        push(event_attr::SPORT, &40000u16.to_be_bytes());
        push(event_attr::DPORT, &5201u16.to_be_bytes());
        push(event_attr::BACKUP, &[1]);
        push(event_attr::IF_IDX, &9u32.to_ne_bytes());
        let header = GenlHeader { cmd: 10, version: 1 };
        let event = PmEventMessage::parse_with_param(&buffer, header).unwrap().0;
        assert_eq!(event.kind, Some(EventKind::SubEstablished));
        assert_eq!(event.token, Some(0x1234_5678));
        assert_eq!(event.local, Some("198.51.100.1:40000".parse().unwrap()));
        assert_eq!(event.remote, Some("192.0.2.2:5201".parse().unwrap()));
        assert_eq!(
            (event.local_id, event.remote_id, event.backup, event.if_index),
            (Some(2), Some(0), Some(true), Some(9))
        );
        let header = GenlHeader { cmd: 15, version: 1 };
        assert_eq!(
            PmEventMessage::parse_with_param(&[], header).unwrap().0.kind,
            Some(EventKind::ListenerCreated)
        );
    }

    #[test]
    fn endpoint_flags_round_trip_through_the_crate_flags() {
        let flags = EndpointFlags { signal: true, backup: true, ..EndpointFlags::default() };
        assert_eq!(EndpointFlags::from_attr(&flags.to_attr()), flags);
        assert_eq!(flags.names(), ["signal", "backup"]);
    }

    #[test]
    fn the_laminar_flag_is_bit_5_on_the_wire_and_reads_back() {
        let laminar = EndpointFlags { laminar: true, ..EndpointFlags::default() };
        let attrs = address_attrs("198.51.100.1".parse().unwrap(), None, None, Some(laminar), Some(7));
        let nested = PmMessage { command: Command::AddAddr as u8, attrs: vec![PmAttr::Addr(attrs)] };
        let endpoint_attrs = decode_attrs(&decode_attrs(&emit(&nested))[0].1);
        assert!(endpoint_attrs.contains(&(6, 32u32.to_ne_bytes().to_vec())), "flags {endpoint_attrs:?}");
        assert_eq!(EndpointFlags::from_attr(&laminar.to_attr()), laminar);
        // The crate folds every bit it does not know into one `Other`.
        let both = EndpointFlags::from_attr(&[AddrFlag::Subflow, AddrFlag::Other(FLAG_LAMINAR | 1 << 7)]);
        assert_eq!(both.names(), ["subflow", "laminar"]);
    }

    /// A family no kernel has.
    #[derive(Debug)]
    struct NoSuchFamily;

    impl GenlFamily for NoSuchFamily {
        fn family_name() -> &'static str {
            "mptcp_pm_nosuch"
        }

        fn command(&self) -> u8 {
            0
        }

        fn version(&self) -> u8 {
            1
        }
    }

    #[test]
    fn a_missing_family_is_named_and_the_real_one_resolves() {
        // The generic netlink controller answers any user, so this needs no privileges.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (connection, handle, _) = genetlink::new_connection().unwrap();
            tokio::spawn(connection);
            let missing = resolve::<NoSuchFamily>(&handle).await;
            assert!(matches!(missing, Err(PmError::FamilyMissing)), "{missing:?}");
            assert!(missing.unwrap_err().to_string().contains("has no `mptcp_pm` generic netlink family"));
            let family = resolve::<PmMessage>(&handle).await.unwrap();
            assert!(family.multicast_groups.contains_key(EVENTS_GROUP), "{family:?}");
        });
    }
}
