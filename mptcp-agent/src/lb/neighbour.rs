//! Where a backend is on the link: its interface, its MAC (given, or from the neighbour table)
//! and the MAC the balancer sends from, over rtnetlink.

use std::net::{IpAddr, SocketAddr};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::{
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute},
};

use super::*;

/// Where a backend's frames go: out of `ifindex`, from `own_mac` to `mac`.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub ifindex: u32,
    pub own_mac: [u8; 6],
    pub mac: [u8; 6],
}

impl Link {
    /// The backend's link: its interface from the kernel, its MAC from the configuration or the
    /// neighbour table.
    pub(super) async fn resolve(backend: &BackendConfig) -> Result<Self, SteeringError> {
        // A given MAC is used as it is: the backend need not answer ARP (nor be up yet).
        let given = backend.mac.as_deref().and_then(parse_mac);
        let (ifindex, own_mac, mac) = resolve(&backend.interface, backend.address, given).await?;
        Ok(Self { ifindex, own_mac, mac })
    }
}

/// The interface index and MAC of `iface`, and the MAC of `neighbour` on it: `given`, else from
/// the neighbour table (probed with a UDP datagram when the table lacks it).
async fn resolve(
    iface: &str,
    neighbour: IpAddr,
    given: Option<[u8; 6]>,
) -> Result<(u32, [u8; 6], [u8; 6]), SteeringError> {
    let netlink = |e: rtnetlink::Error| SteeringError::Netlink(e.to_string());
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| SteeringError::Netlink(e.to_string()))?;
    tokio::spawn(connection);
    let link = handle
        .link()
        .get()
        .match_name(iface.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(|_| SteeringError::Config(format!("interface {iface} does not exist")))?
        .ok_or_else(|| SteeringError::Config(format!("interface {iface} does not exist")))?;
    let own_mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| SteeringError::Config(format!("interface {iface} has no MAC address")))?;
    let index = link.header.index;
    if let Some(mac) = given {
        return Ok((index, own_mac, mac));
    }
    for attempt in 0..20 {
        let mut neighbours = handle.neighbours().get().execute();
        while let Some(entry) = neighbours.try_next().await.map_err(netlink)? {
            let found = entry.header.ifindex == index
                && entry.attributes.iter().any(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        IpAddr::V4(*v4) == neighbour
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        IpAddr::V6(*v6) == neighbour
                    }
                    _ => false,
                });
            let mac = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                _ => None,
            });
            if let (true, Some(mac)) = (found, mac) {
                return Ok((index, own_mac, mac));
            }
        }
        if attempt == 0 {
            // Any datagram makes the kernel resolve the neighbour (discard port).
            let socket = std::net::UdpSocket::bind(SocketAddr::new(
                if neighbour.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) },
                0,
            ))
            .map_err(|e| SteeringError::Netlink(e.to_string()))?;
            let _ = socket.send_to(&[0], SocketAddr::new(neighbour, 9));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(SteeringError::Config(format!(
        "no neighbour entry for {neighbour} on {iface}: give its `mac` in the configuration"
    )))
}
