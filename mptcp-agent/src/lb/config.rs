//! `lb.toml`: VIPs, backends and how joins are steered, checked key by key.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use mptcp_common::lb::{MAX_BACKENDS, MAX_VIPS, steering, unknown_token};
use serde::{Deserialize, Serialize};

use super::*;

/// How VIPs steer joins (`steering = "token" | "hash-only"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Steering {
    /// Each MP_JOIN SYN to the backend owning its token.
    Token,
    /// 5-tuple hashing for every SYN, as other L4 balancers do: the baseline.
    HashOnly,
}

impl Steering {
    pub(super) fn code(self) -> u32 {
        match self {
            Steering::Token => steering::TOKEN,
            Steering::HashOnly => steering::HASH_ONLY,
        }
    }
}

/// `lb.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LbConfig {
    /// Client-facing interfaces, where the XDP program runs.
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: Option<crate::config::XdpModeName>,
    #[serde(rename = "vip")]
    pub vips: Vec<VipConfig>,
    #[serde(rename = "backend")]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub joins: JoinsConfig,
    /// Token and flow synchronisation with the other instances behind the same routers.
    #[serde(default)]
    pub sync: Option<SyncConfig>,
}

/// `[joins]`: how tokens are learned and what a join naming an unknown token gets.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JoinsConfig {
    /// Tokens learned per second from one source (an IPv4 address, an IPv6 /64); 0: no limit.
    #[serde(default = "default_learn_rate")]
    pub learn_rate: u32,
    #[serde(default = "default_learn_burst")]
    pub learn_burst: u32,
    #[serde(default)]
    pub unknown_token: UnknownToken,
}

impl Default for JoinsConfig {
    fn default() -> Self {
        Self {
            learn_rate: default_learn_rate(),
            learn_burst: default_learn_burst(),
            unknown_token: UnknownToken::default(),
        }
    }
}

/// A client opening 100 MPTCP connections a second from one address is far beyond any real
/// client behind one address but a NAT; one forging third ACKs learns at most this many tokens.
fn default_learn_rate() -> u32 {
    100
}

fn default_learn_burst() -> u32 {
    200
}

/// `unknown-token = "hash" | "retry-once"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownToken {
    /// Placed by the Maglev table, as a balancer without the token would.
    #[default]
    Hash,
    /// The first SYN dropped, so the retransmission finds the token a peer synced meanwhile.
    RetryOnce,
}

impl UnknownToken {
    pub(super) fn code(self) -> u32 {
        match self {
            UnknownToken::Hash => unknown_token::HASH,
            UnknownToken::RetryOnce => unknown_token::RETRY_ONCE,
        }
    }
}

/// `[sync]`: this instance's sync endpoint, its peers and the shared key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyncConfig {
    /// This instance's name among its peers (default: the host name).
    #[serde(default)]
    pub name: Option<String>,
    /// `ADDR:PORT` the sync daemon receives on.
    pub listen: SocketAddr,
    /// The other instances' `listen` addresses.
    pub peers: Vec<SocketAddr>,
    /// A file holding the shared key (at least 32 bytes; only its owner may read it).
    pub key_file: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VipConfig {
    /// `ADDR:PORT` or `[ADDR]:PORT`.
    pub address: SocketAddr,
    #[serde(default = "default_steering")]
    pub steering: Steering,
    /// Names of the backends serving this VIP.
    pub backends: Vec<String>,
}

fn default_steering() -> Steering {
    Steering::Token
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendConfig {
    pub name: String,
    pub address: IpAddr,
    /// The balancer's interface towards the backend.
    pub interface: String,
    /// The backend's MAC; resolved from the neighbour table when absent.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Addresses of the backend's own that it announces (ADD_ADDR) and clients join instead
    /// of the VIP: every instance forwards them to it from this file alone.
    #[serde(default)]
    pub join_addresses: Vec<IpAddr>,
    /// The port clients join on (default: the first VIP's it serves). The backend's kernel
    /// listens there for joins itself, whatever address the service binds.
    #[serde(default)]
    pub join_port: Option<u16>,
}

fn default_weight() -> u32 {
    1
}

impl LbConfig {
    pub fn load(path: &Path) -> Result<Self, SteeringError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| SteeringError::ReadConfig { path: display.clone(), source })?;
        Self::parse(&text, &display)
    }

    /// Parses and checks the text of `lb.toml`; `path` names it in errors.
    pub(crate) fn parse(text: &str, path: &str) -> Result<Self, SteeringError> {
        let config: Self = toml::from_str(text)
            .map_err(|error| SteeringError::ParseConfig { path: path.to_owned(), error })?;
        config.validate()?;
        Ok(config)
    }

    pub(super) fn validate(&self) -> Result<(), SteeringError> {
        let bad = |what: String| Err(SteeringError::Config(what));
        if self.interfaces.is_empty() {
            return bad("`interfaces` lists no interface".into());
        }
        if self.vips.is_empty() || self.vips.len() > MAX_VIPS {
            return bad(format!("between 1 and {MAX_VIPS} `[[vip]]` entries are needed"));
        }
        if self.backends.len() > MAX_BACKENDS {
            return bad(format!("at most {MAX_BACKENDS} `[[backend]]` entries"));
        }
        for backend in &self.backends {
            backend.validate()?;
            if self.backends.iter().filter(|b| b.name == backend.name).count() > 1 {
                return bad(format!("backend {} is defined twice", backend.name));
            }
        }
        for backend in &self.backends {
            for addr in &backend.join_addresses {
                let owners = self.backends.iter().filter(|b| b.join_addresses.contains(addr)).count();
                if owners > 1 || backend.join_addresses.iter().filter(|a| *a == addr).count() > 1 {
                    return bad(format!("join address {addr} is listed twice"));
                }
                if self.vips.iter().any(|vip| vip.address.ip() == *addr) {
                    return bad(format!("join address {addr} is a VIP"));
                }
            }
        }
        if self.joins.learn_rate > 0 && self.joins.learn_burst == 0 {
            return bad("[joins] `learn-burst` must be at least 1 when `learn-rate` is set".into());
        }
        if let Some(sync) = &self.sync {
            if sync.peers.is_empty() {
                return bad("[sync] `peers` lists no peer".into());
            }
            if sync.peers.contains(&sync.listen) {
                return bad(format!("[sync] `peers` lists this instance's own `listen` {}", sync.listen));
            }
        }
        for vip in &self.vips {
            if self.vips.iter().filter(|v| v.address == vip.address).count() > 1 {
                return bad(format!("vip {} is defined twice", vip.address));
            }
            for name in &vip.backends {
                if !self.backends.iter().any(|b| &b.name == name) {
                    return bad(format!("vip {}: no backend named {name}", vip.address));
                }
            }
        }
        Ok(())
    }
}

impl BackendConfig {
    pub(super) fn validate(&self) -> Result<(), SteeringError> {
        let bad = |what: String| Err(SteeringError::Config(format!("backend {:?}: {what}", self.name)));
        if self.name.is_empty() || self.name.len() > 15 {
            return bad("`name` must have 1 to 15 bytes".into());
        }
        if self.weight == 0 || self.weight > 1000 {
            return bad(format!("`weight` {} is not within 1..=1000", self.weight));
        }
        if let Some(mac) = &self.mac
            && parse_mac(mac).is_none()
        {
            return bad(format!("`mac` {mac:?} is not six hex bytes separated by colons"));
        }
        for family in [true, false] {
            if self.join_addresses.iter().filter(|a| a.is_ipv4() == family).count() > 1 {
                return bad("`join-addresses` holds at most one IPv4 and one IPv6 address".into());
            }
        }
        Ok(())
    }
}

pub(super) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interfaces = ["eth0"]

[[vip]]
address = "203.0.113.200:80"
backends = ["b1", "b2"]

[[vip]]
address = "[2001:db8:ff::10]:443"
steering = "hash-only"
backends = ["b2"]

[[backend]]
name = "b1"
address = "203.0.113.1"
interface = "eth1"
mac = "02:00:00:00:00:01"

[[backend]]
name = "b2"
address = "2001:db8:3::1"
interface = "eth1"
weight = 3
join-addresses = ["203.0.113.130", "2001:db8:ff:1::2"]

[joins]
unknown-token = "retry-once"

[sync]
listen = "198.51.100.9:7946"
peers = ["198.51.100.10:7946"]
key-file = "/etc/mptcp-agent/lb-sync.key"
"#;

    fn error(text: &str) -> String {
        match LbConfig::parse(text, "lb.toml") {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(error) => format!("{error}"),
        }
    }

    #[test]
    fn a_full_configuration_parses_with_defaults() {
        let config = LbConfig::parse(GOOD, "lb.toml").expect("valid");
        assert_eq!(config.vips[0].steering, Steering::Token);
        assert_eq!(config.vips[1].steering, Steering::HashOnly);
        assert_eq!(config.backends[0].weight, 1);
        assert_eq!(
            parse_mac(config.backends[0].mac.as_deref().unwrap_or_default()),
            Some([2, 0, 0, 0, 0, 1])
        );
        assert_eq!(vip_key(config.vips[1].address).family, 6);
        assert_eq!(config.joins.learn_rate, 100);
        assert_eq!(config.joins.unknown_token, UnknownToken::RetryOnce);
        assert_eq!(config.backends[1].join_addresses.len(), 2);
        assert_eq!(config.sync.as_ref().map(|s| s.peers.len()), Some(1));
        assert_eq!(vip_address(&vip_key(config.vips[0].address)), config.vips[0].address);
    }

    #[test]
    fn bad_configurations_name_what_is_wrong() {
        assert!(error(&GOOD.replace("weight = 3", "wieght = 3")).contains("wieght"));
        assert!(error(&GOOD.replace("weight = 3", "weight = 0")).contains("`weight` 0"));
        assert!(error(&GOOD.replace("\"b1\", \"b2\"]", "\"b1\", \"b9\"]")).contains("no backend named b9"));
        assert!(error(&GOOD.replace("02:00:00:00:00:01", "02:00:00:00:01")).contains("`mac`"));
        assert!(error(&GOOD.replace("name = \"b2\"", "name = \"b1\"")).contains("defined twice"));
        assert!(
            error(&GOOD.replace("[2001:db8:ff::10]:443", "203.0.113.200:80"))
                .contains("vip 203.0.113.200:80 is defined twice")
        );
        assert!(error(&GOOD.replace("interfaces = [\"eth0\"]", "interfaces = []")).contains("`interfaces`"));
        assert!(error(&GOOD.replace("\"203.0.113.130\"", "\"203.0.113.200\"")).contains("is a VIP"));
        assert!(
            error(&GOOD.replace("\"203.0.113.130\"", "\"203.0.113.130\", \"203.0.113.131\""))
                .contains("at most one IPv4")
        );
        assert!(
            error(&GOOD.replace("peers = [\"198.51.100.10:7946\"]", "peers = [\"198.51.100.9:7946\"]"))
                .contains("own `listen`")
        );
        assert!(error(&GOOD.replace("retry-once", "retry")).contains("retry"));
        assert!(
            error(&GOOD.replace("name = \"b1\"", "name = \"a-very-long-backend-name\""))
                .contains("1 to 15 bytes")
        );
    }
}
