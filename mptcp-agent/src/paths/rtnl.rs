//! Links, addresses and routes over rtnetlink (`rtnetlink` and `netlink-packet-route`): a dump
//! at start, then RTM_NEWLINK/DELLINK/NEWADDR/DELADDR as they happen.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use serde::Serialize;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Has carrier (IFF_LOWER_UP).
    pub carrier: bool,
    pub loopback: bool,
}

impl Link {
    /// Can carry subflows: up with carrier.
    pub fn usable(&self) -> bool {
        self.up && self.carrier
    }

    fn from_message(message: &LinkMessage) -> Self {
        let flags = message.header.flags;
        let name = message
            .attributes
            .iter()
            .find_map(|attr| match attr {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })
            // The kernel sends IFLA_IFNAME with every link.
            .unwrap_or_default();
        Self {
            index: message.header.index,
            name,
            up: flags.contains(LinkFlags::Up),
            carrier: flags.contains(LinkFlags::LowerUp),
            loopback: flags.contains(LinkFlags::Loopback),
        }
    }
}

/// An address of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// IPv6 duplicate address detection has not finished (or failed): not usable yet.
    pub tentative: bool,
    /// Preferred lifetime over (`preferred_lft 0`, an old SLAAC or privacy address): the kernel
    /// keeps it, the agent withdraws its endpoint so no new subflow uses it (the in-kernel path
    /// manager then also closes the subflows on it, by REMOVE_ADDR).
    pub deprecated: bool,
}

impl Address {
    /// Worth an endpoint or a subflow: not loopback, link-local, still tentative or deprecated.
    pub fn usable(&self) -> bool {
        let link_local = match self.addr {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        !self.tentative
            && !self.deprecated
            && !self.addr.is_loopback()
            && !link_local
            && !self.addr.is_unspecified()
    }

    fn from_message(message: &AddressMessage) -> Option<Self> {
        let mut addr = None;
        let mut flags = AddressFlags::from_bits_truncate(u32::from(message.header.flags.bits()));
        for attr in &message.attributes {
            match attr {
                // IFA_LOCAL is the local end on point-to-point links; IFA_ADDRESS otherwise.
                AddressAttribute::Local(local) => addr = Some(*local),
                AddressAttribute::Address(address) if addr.is_none() => addr = Some(*address),
                AddressAttribute::Flags(all) => flags = *all,
                _ => {}
            }
        }
        let header_flags = AddressHeaderFlags::from_bits_truncate(flags.bits() as u8);
        let tentative = flags.contains(AddressFlags::Tentative)
            || flags.contains(AddressFlags::Dadfailed)
            || header_flags.contains(AddressHeaderFlags::Tentative);
        let deprecated =
            flags.contains(AddressFlags::Deprecated) || header_flags.contains(AddressHeaderFlags::Deprecated);
        Some(Self {
            index: message.header.index,
            addr: addr?,
            prefix_len: message.header.prefix_len,
            tentative,
            deprecated,
        })
    }
}

/// The routes through one interface, in short.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteSummary {
    pub routes: usize,
    /// Tables holding a default route through the interface.
    pub default_route_tables: Vec<u32>,
}

/// A change rtnetlink reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    Link(Link),
    LinkGone(u32),
    AddressAdded(Address),
    AddressGone(Address),
}

/// What the agent knows of the namespace's links and addresses; addresses keep the order they
/// appeared in.
#[derive(Debug, Clone, Default)]
pub struct NetState {
    pub links: BTreeMap<u32, Link>,
    pub addresses: Vec<Address>,
}

impl NetState {
    /// Applies a change; returns whether anything changed.
    pub fn apply(&mut self, event: &NetEvent) -> bool {
        match event {
            NetEvent::Link(link) => self.links.insert(link.index, link.clone()).as_ref() != Some(link),
            NetEvent::LinkGone(index) => {
                self.addresses.retain(|a| a.index != *index);
                self.links.remove(index).is_some()
            }
            NetEvent::AddressAdded(address) => {
                match self.addresses.iter_mut().find(|a| a.index == address.index && a.addr == address.addr) {
                    Some(known) if known == address => false,
                    Some(known) => {
                        *known = address.clone();
                        true
                    }
                    None => {
                        self.addresses.push(address.clone());
                        true
                    }
                }
            }
            NetEvent::AddressGone(address) => {
                let before = self.addresses.len();
                self.addresses.retain(|a| !(a.index == address.index && a.addr == address.addr));
                self.addresses.len() != before
            }
        }
    }

    pub fn link_named(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|link| link.name == name)
    }

    /// Addresses of interface `index`, oldest first.
    pub fn addresses_of(&self, index: u32) -> impl Iterator<Item = &Address> {
        self.addresses.iter().filter(move |a| a.index == index)
    }

    /// The interface an address belongs to.
    pub fn link_of(&self, addr: IpAddr) -> Option<&Link> {
        let index = self.addresses.iter().find(|a| a.addr == addr)?.index;
        self.links.get(&index)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("opening an rtnetlink socket")]
    Socket(#[source] io::Error),
    #[error("rtnetlink {what}: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// An rtnetlink socket for dumps, optionally subscribed to link and address changes.
pub struct Rtnl {
    handle: Handle,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>,
}

impl Rtnl {
    /// Connects; with `follow`, joins the link and address groups first, so no change between
    /// the dump and the first event is missed. Must run inside a tokio runtime.
    pub fn connect(follow: bool) -> Result<Self, RtnlError> {
        let groups: &[MulticastGroup] = if follow {
            &[MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr]
        } else {
            &[]
        };
        let (connection, handle, messages) =
            rtnetlink::new_multicast_connection(groups).map_err(RtnlError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle, messages })
    }

    pub async fn links(&self) -> Result<Vec<Link>, RtnlError> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| RtnlError::Request { what: "link dump", source })?;
        Ok(messages.iter().map(Link::from_message).collect())
    }

    /// Adds `addr/prefix` to interface `index`, usable at once (an IPv6 address skips
    /// duplicate address detection: until it ends, nothing can bind it); an address already
    /// there is left alone.
    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), RtnlError> {
        let mut request = self.handle.address().add(index, addr, prefix);
        request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        match request.execute().await {
            Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -libc::EEXIST => Ok(()),
            result => result.map_err(|source| RtnlError::Request { what: "address add", source }),
        }
    }

    pub async fn addresses(&self) -> Result<Vec<Address>, RtnlError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| RtnlError::Request { what: "address dump", source })?;
        // A message without IFA_LOCAL or IFA_ADDRESS carries no address to follow.
        Ok(messages.iter().filter_map(Address::from_message).collect())
    }

    /// Routes per output interface, over every table but `local`, IPv4 and IPv6.
    pub async fn routes(&self) -> Result<BTreeMap<u32, RouteSummary>, RtnlError> {
        const LOCAL_TABLE: u32 = 255;
        let mut summaries: BTreeMap<u32, RouteSummary> = BTreeMap::new();
        for request in
            [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()]
        {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .map_err(|source| RtnlError::Request { what: "route dump", source })?;
            for route in routes {
                let mut oif = None;
                let mut table = u32::from(route.header.table);
                let mut has_destination = false;
                for attr in &route.attributes {
                    match attr {
                        RouteAttribute::Oif(index) => oif = Some(*index),
                        RouteAttribute::Table(id) => table = *id,
                        RouteAttribute::Destination(RouteAddress::Inet(_) | RouteAddress::Inet6(_)) => {
                            has_destination = route.header.destination_prefix_length > 0
                        }
                        _ => {}
                    }
                }
                let Some(oif) = oif else { continue };
                if table == LOCAL_TABLE {
                    continue;
                }
                let summary = summaries.entry(oif).or_default();
                summary.routes += 1;
                if !has_destination && !summary.default_route_tables.contains(&table) {
                    summary.default_route_tables.push(table);
                }
            }
        }
        Ok(summaries)
    }

    /// The current links and addresses.
    pub async fn snapshot(&self) -> Result<NetState, RtnlError> {
        let links = self.links().await?.into_iter().map(|link| (link.index, link)).collect();
        Ok(NetState { links, addresses: self.addresses().await? })
    }

    /// The next link or address change; `None` once the socket is gone.
    pub async fn next_event(&mut self) -> Option<NetEvent> {
        loop {
            let (message, _) = self.messages.next().await?;
            let NetlinkPayload::InnerMessage(message) = message.payload else { continue };
            let event = match message {
                RouteNetlinkMessage::NewLink(link) => Some(NetEvent::Link(Link::from_message(&link))),
                RouteNetlinkMessage::DelLink(link) => Some(NetEvent::LinkGone(link.header.index)),
                RouteNetlinkMessage::NewAddress(address) => {
                    Address::from_message(&address).map(NetEvent::AddressAdded)
                }
                RouteNetlinkMessage::DelAddress(address) => {
                    Address::from_message(&address).map(NetEvent::AddressGone)
                }
                _ => None,
            };
            if event.is_some() {
                return event;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, up: bool) -> Link {
        Link { index, name: format!("eth{index}"), up, carrier: up, loopback: false }
    }

    fn address(index: u32, addr: &str) -> Address {
        Address { index, addr: addr.parse().unwrap(), prefix_len: 24, tentative: false, deprecated: false }
    }

    #[test]
    fn state_follows_events_and_reports_changes() {
        let mut net = NetState::default();
        assert!(net.apply(&NetEvent::Link(link(2, true))));
        assert!(!net.apply(&NetEvent::Link(link(2, true))), "same state again is no change");
        assert!(net.apply(&NetEvent::AddressAdded(address(2, "192.0.2.1"))));
        assert!(net.apply(&NetEvent::AddressAdded(address(2, "192.0.2.9"))));
        assert!(!net.apply(&NetEvent::AddressAdded(address(2, "192.0.2.1"))));
        let order: Vec<String> = net.addresses_of(2).map(|a| a.addr.to_string()).collect();
        assert_eq!(order, ["192.0.2.1", "192.0.2.9"], "oldest first");
        assert_eq!(net.link_of("192.0.2.9".parse().unwrap()).map(|l| l.index), Some(2));
        assert!(net.apply(&NetEvent::Link(link(2, false))));
        assert!(!net.links[&2].usable());
        assert!(net.apply(&NetEvent::AddressGone(address(2, "192.0.2.1"))));
        assert!(!net.apply(&NetEvent::AddressGone(address(2, "192.0.2.1"))));
        assert!(net.apply(&NetEvent::LinkGone(2)));
        assert_eq!(net.addresses.len(), 0, "a removed link takes its addresses");
    }

    #[test]
    fn only_routable_settled_addresses_are_usable() {
        assert!(address(2, "198.51.100.1").usable());
        assert!(!address(2, "169.254.1.1").usable());
        assert!(!address(2, "fe80::1").usable());
        assert!(!address(1, "127.0.0.1").usable());
        assert!(!Address { tentative: true, ..address(2, "2001:db8::1") }.usable());
        assert!(!Address { deprecated: true, ..address(2, "2001:db8::1") }.usable());
    }
}
