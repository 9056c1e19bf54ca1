//! `lb backend-setup`: what a backend host behind the balancer needs, from the same `lb.toml`.
//!
//! The VIPs it serves go on loopback, answered on the wire by the balancer only (ARP:
//! `arp_ignore = 1`, `arp_announce = 2`): direct server return. With join addressing, its join
//! addresses go on loopback too, each announced to clients by a `signal` endpoint with the join
//! port, and `net.mptcp.allow_join_initial_addr_port = 0` makes the kernel set the C flag in its
//! MP_CAPABLE SYN-ACK (RFC 8684 section 3.1): clients then join the announced address, never the
//! VIP, and every balancer instance forwards that address to this backend from configuration
//! alone. The endpoint carries a port because the kernel then listens for joins there itself: a
//! service bound to the VIP alone would not accept a join to another address.

use std::net::IpAddr;

use super::*;
use crate::paths::{
    pm::{EndpointFlags, Limits, PmClient},
    rtnl::Rtnl,
    set_sysctl,
};

/// What `lb backend-setup` puts in place on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHost {
    pub name: String,
    pub vips: Vec<IpAddr>,
    pub join_addresses: Vec<IpAddr>,
    pub join_port: u16,
}

/// Joins accepted per connection at least: one per client path to the join address.
const MIN_SUBFLOWS: u32 = 2;

impl BackendHost {
    /// Backend `name` of `config`.
    pub fn from_config(config: &LbConfig, name: &str) -> Result<Self, SteeringError> {
        let backend = config
            .backends
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| SteeringError::NoSuchBackend(name.to_owned()))?;
        let served: Vec<&VipConfig> =
            config.vips.iter().filter(|v| v.backends.contains(&backend.name)).collect();
        let join_port = backend
            .join_port
            .or_else(|| served.first().map(|v| v.address.port()))
            .ok_or_else(|| SteeringError::Config(format!("backend {name} serves no VIP")))?;
        let mut vips: Vec<IpAddr> = served.iter().map(|v| v.address.ip()).collect();
        vips.dedup();
        Ok(Self { name: name.to_owned(), vips, join_addresses: backend.join_addresses.clone(), join_port })
    }

    /// Puts it in place in the caller's network namespace; returns what changed (nothing when
    /// run again).
    pub async fn set_up(&self) -> Result<Vec<String>, SteeringError> {
        let mut changes = Vec::new();
        let mut sysctl = |name: &str, value: &str| -> Result<(), SteeringError> {
            if set_sysctl(name, value).map_err(host_error("a sysctl"))? {
                changes.push(format!("{name} = {value}"));
            }
            Ok(())
        };
        sysctl("net.mptcp.enabled", "1")?;
        if self.vips.iter().chain(&self.join_addresses).any(IpAddr::is_ipv4) {
            sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
            sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        }
        if !self.join_addresses.is_empty() {
            sysctl("net.mptcp.allow_join_initial_addr_port", "0")?;
        }
        let rtnl = Rtnl::connect(false).map_err(host_error("rtnetlink"))?;
        let links = rtnl.links().await.map_err(host_error("listing interfaces"))?;
        let loopback = links.into_iter().find(|link| link.name == "lo").ok_or(SteeringError::NoLoopback)?;
        let addresses = rtnl.addresses().await.map_err(host_error("listing addresses"))?;
        let present: Vec<IpAddr> = addresses.iter().map(|a| a.addr).collect();
        for addr in self.vips.iter().chain(&self.join_addresses) {
            if !present.contains(addr) {
                rtnl.add_address(loopback.index, *addr, if addr.is_ipv4() { 32 } else { 128 })
                    .await
                    .map_err(host_error("adding an address to lo"))?;
                changes.push(format!("{addr} on lo"));
            }
        }
        if self.join_addresses.is_empty() {
            return Ok(changes);
        }
        let mut pm = PmClient::connect().await.map_err(host_error("MPTCP path manager"))?;
        let endpoints = pm.endpoints().await.map_err(host_error("listing MPTCP endpoints"))?;
        for addr in &self.join_addresses {
            match endpoints.iter().find(|e| e.addr == *addr) {
                Some(e) if e.flags.signal && e.port == Some(self.join_port) => {}
                Some(e) => {
                    return Err(SteeringError::Config(format!(
                        "MPTCP endpoint {} ({addr}) exists without `signal port {}`: delete it first",
                        e.id, self.join_port
                    )));
                }
                None => {
                    let flags = EndpointFlags { signal: true, ..EndpointFlags::default() };
                    pm.add_endpoint(*addr, Some(self.join_port), flags, loopback.index)
                        .await
                        .map_err(host_error("adding a signal endpoint"))?;
                    changes.push(format!("endpoint {addr} signal port {}", self.join_port));
                }
            }
        }
        let limits = pm.limits().await.map_err(host_error("reading MPTCP limits"))?;
        if limits.subflows < MIN_SUBFLOWS {
            let raised = Limits { subflows: MIN_SUBFLOWS, ..limits };
            pm.set_limits(raised).await.map_err(host_error("setting MPTCP limits"))?;
            changes.push(format!("limits subflows {MIN_SUBFLOWS}"));
        }
        Ok(changes)
    }
}

fn host_error<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl Fn(E) -> SteeringError {
    move |source| SteeringError::Host { what, source: Box::new(source) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_gets_its_vips_join_addresses_and_the_first_vips_port() {
        let text = r#"
interfaces = ["eth0"]
[[vip]]
address = "203.0.113.200:80"
backends = ["b1", "b2"]
[[vip]]
address = "[2001:db8:ff::10]:443"
backends = ["b1"]
[[backend]]
name = "b1"
address = "203.0.113.1"
interface = "eth1"
join-addresses = ["203.0.113.129", "2001:db8:ff:1::1"]
[[backend]]
name = "b2"
address = "203.0.113.2"
interface = "eth1"
join-port = 8080
"#;
        let config = LbConfig::parse(text, "lb.toml").expect("valid");
        let b1 = BackendHost::from_config(&config, "b1").expect("b1");
        assert_eq!(b1.vips, ["203.0.113.200".parse::<IpAddr>().unwrap(), "2001:db8:ff::10".parse().unwrap()]);
        assert_eq!(b1.join_addresses.len(), 2);
        assert_eq!(b1.join_port, 80);
        assert_eq!(BackendHost::from_config(&config, "b2").expect("b2").join_port, 8080);
        assert!(matches!(BackendHost::from_config(&config, "b9"), Err(SteeringError::NoSuchBackend(_))));
    }
}
