//! The agent's configuration file (TOML); every key optional, unknown keys rejected by name.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
};

use mptcp_common::maps::{DataplaneConfig, admission};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{bpf::XdpAttachMode, cc::Algorithm};

/// Join admission policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// Observe only.
    #[default]
    Allow,
    /// Drop MP_JOIN SYNs whose token matches no tracked connection.
    KnownToken,
    /// As known-token, and drop every packet of a subflow that failed its HMAC check.
    Verified,
}

impl Admission {
    pub fn code(self) -> u32 {
        match self {
            Admission::Allow => admission::ALLOW,
            Admission::KnownToken => admission::KNOWN_TOKEN,
            Admission::Verified => admission::VERIFIED,
        }
    }
}

/// `mptcp-agent run --config FILE`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// The interfaces to attach; `run --iface` replaces the list. What a service unit runs
    /// with, since its command line is the same for every host.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub admission: Admission,
    /// MP_JOIN SYNs per second accepted from one source address; absent or 0: no limit.
    #[serde(default)]
    pub join_rate_per_sec: u32,
    /// Joins a source may send at once before the rate applies.
    #[serde(default)]
    pub join_burst: Option<u32>,
    #[serde(default)]
    pub xdp_mode: Option<XdpModeName>,
    /// Coupled congestion control of the MPTCP subflows of this host's sockets; absent: off.
    #[serde(default)]
    pub cc: Option<Algorithm>,
    /// The cgroup v2 directory whose sockets `cc` applies to (default: the hierarchy's root).
    #[serde(default)]
    pub cc_cgroup: Option<PathBuf>,
    /// `[paths]`: path management; absent, the daemon leaves paths to the kernel's settings.
    #[serde(default)]
    pub paths: Option<Spanned<PathsConfig>>,
    /// Where to serve Prometheus metrics (`ADDR:PORT`, `[IPV6]:PORT`, `PORT` on loopback); absent:
    /// no endpoint.
    #[serde(default)]
    pub metrics: Option<ListenAddr>,
    /// Per-connection series for at most this many connections (0: none).
    #[serde(default)]
    pub metrics_connections: usize,
}

/// A metrics address that is none of the forms [`ListenAddr`] takes.
#[derive(Debug, thiserror::Error)]
#[error("bad metrics address {0:?}: expected ADDR:PORT, [IPV6]:PORT or PORT")]
pub struct BadAddress(pub String);

/// Where a metrics endpoint listens: `ADDR:PORT`, `[IPV6]:PORT`, or a bare `PORT` on 127.0.0.1 (the
/// metrics are not published beyond the host unless an address says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = BadAddress;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(port) = text.parse::<u16>() {
            return Ok(Self(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
        }
        text.parse::<SocketAddr>().map(Self).map_err(|_| BadAddress(text.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Which of the kernel's path managers runs the connections (`net.mptcp.pm_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PmKind {
    /// The in-kernel path manager, driven through its endpoints, flags and limits.
    #[default]
    Kernel,
    /// The userspace path manager: the agent opens, closes and prioritises subflows and
    /// announces addresses per connection.
    Userspace,
}

/// How the interfaces that open subflows share the traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathMode {
    /// Every usable path carries traffic.
    #[default]
    Full,
    /// The first usable interface (in file order) carries the traffic; the others have backup
    /// subflows, opened but idle until it fails.
    Backup,
    /// Only the first usable interface has subflows; the next one is opened when it fails.
    SinglePath,
}

/// What an interface is used for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Opens subflows (on a server: its addresses are announced).
    #[default]
    Subflow,
    /// Its addresses are announced to peers (ADD_ADDR).
    Signal,
    /// Opens backup subflows: used only when no other path is usable.
    Backup,
    /// Never used for MPTCP paths.
    Ignore,
    /// In-kernel path manager, Linux 6.18: answers an address the peer announces with one
    /// subflow from this interface's address, instead of from the address routing picks; opens
    /// none to the peer's initial address.
    Laminar,
}

/// `[[paths.interface]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InterfaceConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub role: Role,
}

impl InterfaceConfig {
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }
}

/// The largest subflow and ADD_ADDR limits the kernel accepts (MPTCP_PM_ADDR_MAX).
pub const MAX_PM_LIMIT: u8 = 8;

/// The smallest `paths.send-buffer-max`: the kernel's default initial send buffer
/// (`net.ipv4.tcp_wmem`'s middle value).
pub const MIN_SEND_BUFFER_MAX: u32 = 16384;

/// `[paths]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PathsConfig {
    #[serde(default)]
    pub pm: PmKind,
    #[serde(default)]
    pub mode: PathMode,
    /// A server: the addresses of its interfaces are announced and it opens no subflows.
    #[serde(default)]
    pub server: bool,
    /// In-kernel path manager: subflow endpoints open a subflow to every address the peer has.
    #[serde(default)]
    fullmesh: Option<Spanned<bool>>,
    /// Subflows per address pair (userspace path manager).
    #[serde(default)]
    ndiffports: Option<Spanned<u8>>,
    /// Additional subflows per connection (the kernel's `subflows` limit).
    #[serde(default)]
    max_subflows: Option<Spanned<u8>>,
    /// ADD_ADDRs accepted per connection (the kernel's `add_addr_accepted` limit).
    #[serde(default)]
    add_addr_accepted: Option<Spanned<u8>>,
    /// On an address change, the new address's subflows come up before the old address's go;
    /// `false`: an interface keeps one address, the newest, and the old one's subflows close at
    /// once.
    #[serde(default = "yes")]
    pub make_before_break: bool,
    /// `net.mptcp.allow_join_initial_addr_port = 0`: the MP_CAPABLE SYN-ACKs of connections
    /// this host accepts set the C flag (RFC 8684 3.1), so peers join only the addresses it
    /// announces. Absent: the switch is left as it is.
    #[serde(default)]
    pub deny_join_initial: Option<bool>,
    /// The largest send buffer a TCP socket (so an MPTCP subflow) may grow to, in bytes: the
    /// maximum of `net.ipv4.tcp_wmem`. After a path breaks, the kernel resends everything not yet
    /// acknowledged at the data level on the surviving subflow, behind what that subflow holds:
    /// bounded buffers bound the stall. Absent: the sysctl is left as it is.
    #[serde(default)]
    send_buffer_max: Option<Spanned<u32>>,
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    /// Per-application policies (userspace path manager); the first that matches a connection
    /// applies, the table's own `mode` and interfaces to the others.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RuleConfig>>,
}

/// Ports a rule matches: one (`5201`) or a range (`"5200-5299"`, both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| {
            p.trim().parse::<u16>().map_err(|_| format!("{text:?} is not a port or a range FIRST-LAST"))
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => (port(text)?, port(text)?),
        };
        if first > last {
            return Err(format!("{text:?}: the range ends before it starts"));
        }
        Ok(Self { first, last })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortRange;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port (5201) or a range (\"5200-5299\")")
            }

            fn visit_i64<E: serde::de::Error>(self, port: i64) -> Result<PortRange, E> {
                let port = u16::try_from(port).map_err(|_| E::custom(format!("{port} is not a port")))?;
                Ok(PortRange { first: port, last: port })
            }

            fn visit_u64<E: serde::de::Error>(self, port: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(port).unwrap_or(-1))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<PortRange, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `[[paths.rule]]`: which connections (all the given keys match), and the mode and interfaces
/// they get.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleConfig {
    /// The peer's port.
    #[serde(default)]
    pub dport: Option<PortRange>,
    /// The local port (on a server: the one it listens on).
    #[serde(default)]
    pub sport: Option<PortRange>,
    /// The owning socket's cgroup v2, as a path under the hierarchy's mount (`/app.slice/a`).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The owning process's name (`comm`, at most 15 bytes).
    #[serde(default)]
    pub process: Option<Spanned<String>>,
    pub mode: PathMode,
    /// Names of `[[paths.interface]]` entries, in order of preference.
    pub interfaces: Spanned<Vec<Spanned<String>>>,
}

impl RuleConfig {
    /// Whether matching needs the socket's owner (sock_diag and /proc), not the event alone.
    pub fn needs_owner(&self) -> bool {
        self.cgroup.is_some() || self.process.is_some()
    }
}

fn yes() -> bool {
    true
}

/// A value the file's syntax allows but the agent cannot use, with where it is.
#[derive(Debug)]
struct Invalid {
    span: Range<usize>,
    key: &'static str,
    message: String,
}

impl PathsConfig {
    pub fn fullmesh(&self) -> bool {
        self.fullmesh.as_ref().is_some_and(|f| *f.get_ref())
    }

    pub fn ndiffports(&self) -> u8 {
        self.ndiffports.as_ref().map_or(1, |n| *n.get_ref())
    }

    pub fn max_subflows(&self) -> u8 {
        self.max_subflows.as_ref().map_or(MAX_PM_LIMIT, |n| *n.get_ref())
    }

    pub fn add_addr_accepted(&self) -> u8 {
        self.add_addr_accepted.as_ref().map_or(MAX_PM_LIMIT, |n| *n.get_ref())
    }

    pub fn send_buffer_max(&self) -> Option<u32> {
        self.send_buffer_max.as_ref().map(|n| *n.get_ref())
    }

    fn validate(&self, table: Range<usize>) -> Result<(), Invalid> {
        if self.interfaces.is_empty() {
            return Err(Invalid {
                span: table,
                key: "paths.interface",
                message: "name at least one interface ([[paths.interface]] with name = \"...\")".into(),
            });
        }
        let mut names = BTreeSet::new();
        for interface in &self.interfaces {
            let name = interface.name();
            let span = interface.name.span();
            if interface.role == Role::Laminar && self.pm != PmKind::Kernel {
                let message = format!(
                    "interface {name}: role = \"laminar\" is an in-kernel path manager endpoint flag; it \
                     needs pm = \"kernel\" (the userspace path manager opens no subflow to announced \
                     addresses)"
                );
                return Err(Invalid { span, key: "paths.interface.role", message });
            }
            let key = "paths.interface.name";
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', '\0'])
                || name.chars().any(char::is_whitespace)
            {
                return Err(Invalid { span, key, message: format!("{name:?} is not an interface name") });
            }
            if !names.insert(name) {
                return Err(Invalid { span, key, message: format!("interface {name} is listed twice") });
            }
        }
        for (value, key) in
            [(&self.max_subflows, "paths.max-subflows"), (&self.add_addr_accepted, "paths.add-addr-accepted")]
        {
            if let Some(value) = value.as_ref().filter(|v| *v.get_ref() > MAX_PM_LIMIT) {
                return Err(Invalid {
                    span: value.span(),
                    key,
                    message: format!("{} is above the kernel's maximum of {MAX_PM_LIMIT}", value.get_ref()),
                });
            }
        }
        if let Some(max) = self.send_buffer_max.as_ref().filter(|m| *m.get_ref() < MIN_SEND_BUFFER_MAX) {
            return Err(Invalid {
                span: max.span(),
                key: "paths.send-buffer-max",
                message: format!(
                    "{} bytes is below {MIN_SEND_BUFFER_MAX}, the kernel's default initial send buffer",
                    max.get_ref()
                ),
            });
        }
        if let Some(ndiffports) = &self.ndiffports {
            let n = *ndiffports.get_ref();
            let problem = if n == 0 || n > MAX_PM_LIMIT + 1 {
                Some(format!("{n} is not between 1 and {}", MAX_PM_LIMIT + 1))
            } else if n > 1 && self.pm != PmKind::Userspace {
                Some(format!(
                    "{n} subflows over one address pair need pm = \"userspace\": the in-kernel path manager \
                     opens one subflow per endpoint and remote address"
                ))
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(Invalid { span: ndiffports.span(), key: "paths.ndiffports", message });
            }
        }
        self.validate_rules()?;
        if let Some(fullmesh) = self.fullmesh.as_ref().filter(|f| *f.get_ref()) {
            let problem = if self.pm != PmKind::Kernel {
                Some("fullmesh is an in-kernel path manager flag; it needs pm = \"kernel\"")
            } else if self.server {
                Some("a server announces its addresses (signal), which the kernel refuses with fullmesh")
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(Invalid {
                    span: fullmesh.span(),
                    key: "paths.fullmesh",
                    message: message.into(),
                });
            }
        }
        Ok(())
    }
}

impl PathsConfig {
    fn validate_rules(&self) -> Result<(), Invalid> {
        let Some(first) = self.rules.first() else { return Ok(()) };
        if self.pm != PmKind::Userspace {
            return Err(Invalid {
                span: first.span(),
                key: "paths.rule",
                message: "rules choose subflows per connection, which needs pm = \"userspace\"".into(),
            });
        }
        for rule in &self.rules {
            let span = rule.span();
            let rule = rule.get_ref();
            if rule.dport.is_none() && rule.sport.is_none() && !rule.needs_owner() {
                return Err(Invalid {
                    span,
                    key: "paths.rule",
                    message: "a rule needs at least one of dport, sport, cgroup, process".into(),
                });
            }
            if let Some(process) =
                rule.process.as_ref().filter(|p| p.get_ref().is_empty() || p.get_ref().len() > 15)
            {
                return Err(Invalid {
                    span: process.span(),
                    key: "paths.rule.process",
                    message: format!(
                        "{:?} cannot be a process name (comm: 1 to 15 bytes)",
                        process.get_ref()
                    ),
                });
            }
            if rule.interfaces.get_ref().is_empty() {
                return Err(Invalid {
                    span: rule.interfaces.span(),
                    key: "paths.rule.interfaces",
                    message: "name at least one of the [[paths.interface]] entries".into(),
                });
            }
            let mut names = BTreeSet::new();
            for name in rule.interfaces.get_ref() {
                let problem = if !self.interfaces.iter().any(|i| i.name() == name.get_ref()) {
                    format!("{} is not a [[paths.interface]] name", name.get_ref())
                } else if !names.insert(name.get_ref()) {
                    format!("interface {} is listed twice", name.get_ref())
                } else {
                    continue;
                };
                return Err(Invalid { span: name.span(), key: "paths.rule.interfaces", message: problem });
            }
        }
        Ok(())
    }

    /// The policy of the connections rule `index` matches: its mode and its interfaces, in its
    /// order, with their roles; the table's other keys.
    pub fn for_rule(&self, index: usize) -> Option<Self> {
        let rule = self.rules.get(index)?.get_ref();
        let interfaces = rule
            .interfaces
            .get_ref()
            .iter()
            .filter_map(|name| self.interfaces.iter().find(|i| i.name() == name.get_ref()).cloned())
            .collect();
        Some(Self { mode: rule.mode, interfaces, rules: Vec::new(), ..self.clone() })
    }
}

/// `xdp-mode` in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpModeName {
    Auto,
    Skb,
    Native,
}

impl From<XdpModeName> for XdpAttachMode {
    fn from(mode: XdpModeName) -> Self {
        match mode {
            XdpModeName::Auto => XdpAttachMode::Auto,
            XdpModeName::Skb => XdpAttachMode::Skb,
            XdpModeName::Native => XdpAttachMode::Native,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TOML error is the whole message (it names the line): shown, not chained.
    #[error("{}{error}", in_file(path))]
    Parse { path: Option<String>, error: toml::de::Error },
    #[error("{}{key} (line {line}): {message}", in_file(path))]
    Invalid { path: Option<String>, key: &'static str, line: usize, message: String },
}

fn in_file(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default()
}

impl ConfigError {
    fn in_file(mut self, file: &Path) -> Self {
        if let Self::Parse { path, .. } | Self::Invalid { path, .. } = &mut self {
            *path = Some(file.display().to_string());
        }
        self
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |before| before.matches('\n').count()) + 1
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|error| error.in_file(path))
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|error| ConfigError::Parse { path: None, error })?;
        if let Some(paths) = &config.paths {
            paths.get_ref().validate(paths.span()).map_err(|invalid| ConfigError::Invalid {
                path: None,
                key: invalid.key,
                line: line_of(text, invalid.span.start),
                message: invalid.message,
            })?;
        }
        Ok(config)
    }

    /// The `[paths]` table, if any.
    pub fn paths(&self) -> Option<&PathsConfig> {
        self.paths.as_ref().map(Spanned::get_ref)
    }

    /// What the programs read from the CONFIG map.
    pub fn dataplane(&self) -> DataplaneConfig {
        DataplaneConfig {
            admission: self.admission.code(),
            join_rate_per_sec: self.join_rate_per_sec,
            join_burst: self.join_burst.unwrap_or(self.join_rate_per_sec.max(1)),
            cc_algorithm: self.cc.map_or(mptcp_common::cc::algorithm::NONE, Algorithm::code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let config = AgentConfig::parse(
            "interfaces = [\"eth0\", \"wwan0\"]\nadmission = \"verified\"\njoin-rate-per-sec = 20\n\
             join-burst = 5\nxdp-mode = \"skb\"\n",
        )
        .unwrap();
        assert_eq!(config.interfaces, ["eth0", "wwan0"]);
        assert_eq!(config.admission, Admission::Verified);
        assert_eq!(config.dataplane().join_burst, 5);
        assert_eq!(config.xdp_mode, Some(XdpModeName::Skb));
        assert_eq!(AgentConfig::parse("").unwrap(), AgentConfig::default());
        let config = AgentConfig::parse("metrics = \"9464\"\nmetrics-connections = 10\n").unwrap();
        assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.metrics_connections, 10);
    }

    #[test]
    fn a_port_alone_listens_on_loopback() {
        assert_eq!("9464".parse::<ListenAddr>().unwrap().0, "127.0.0.1:9464".parse().unwrap());
        assert_eq!("0.0.0.0:80".parse::<ListenAddr>().unwrap().0, "0.0.0.0:80".parse().unwrap());
        assert_eq!(
            "[2001:db8::1]:9464".parse::<ListenAddr>().unwrap().0,
            "[2001:db8::1]:9464".parse().unwrap()
        );
    }

    #[test]
    fn a_bad_address_is_named() {
        for bad in ["localhost:9464", "2001:db8::1:9464", "192.0.2.1", "70000", ""] {
            let error = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let error = AgentConfig::parse("\n\njoin-rate = 5\n").unwrap_err().to_string();
        assert!(error.contains("join-rate") && error.contains("line 3"), "{error}");
        let error = AgentConfig::parse("admission = \"sometimes\"\n").unwrap_err().to_string();
        assert!(error.contains("sometimes") && error.contains("line 1"), "{error}");
        let error = AgentConfig::parse("\nmetrics = \"nowhere:80\"\n").unwrap_err().to_string();
        assert!(error.contains("\"nowhere:80\"") && error.contains("line 2"), "{error}");
    }

    const PATHS: &str = "\
[paths]
pm = \"userspace\"
mode = \"backup\"
ndiffports = 2
max-subflows = 4
make-before-break = false

[[paths.interface]]
name = \"wlan0\"

[[paths.interface]]
name = \"wwan0\"
role = \"backup\"
";

    #[test]
    fn parses_the_paths_table() {
        let config = AgentConfig::parse(PATHS).unwrap();
        let paths = config.paths().unwrap();
        assert_eq!((paths.pm, paths.mode, paths.server), (PmKind::Userspace, PathMode::Backup, false));
        assert_eq!(
            (paths.ndiffports(), paths.max_subflows(), paths.add_addr_accepted()),
            (2, 4, MAX_PM_LIMIT)
        );
        assert!(!paths.make_before_break && !paths.fullmesh());
        let names: Vec<(&str, Role)> = paths.interfaces.iter().map(|i| (i.name(), i.role)).collect();
        assert_eq!(names, [("wlan0", Role::Subflow), ("wwan0", Role::Backup)]);
        let defaults = AgentConfig::parse("[paths]\n[[paths.interface]]\nname = \"eth0\"\n").unwrap();
        let defaults = defaults.paths().unwrap();
        assert_eq!((defaults.pm, defaults.mode, defaults.ndiffports()), (PmKind::Kernel, PathMode::Full, 1));
        assert!(defaults.make_before_break);
    }

    /// The error of `text` mentions `key` and `line N`.
    fn assert_error(text: &str, key: &str, line: usize) {
        let error = AgentConfig::parse(text).unwrap_err().to_string();
        assert!(error.contains(key) && error.contains(&format!("line {line}")), "{error}");
    }

    #[test]
    fn path_errors_name_the_key_and_line() {
        assert_error(&PATHS.replace("mode = \"backup\"", "mode = \"sometimes\""), "sometimes", 3);
        assert_error(&PATHS.replace("role = \"backup\"", "role = \"spare\""), "spare", 13);
        assert_error(&PATHS.replace("max-subflows = 4", "max-subflow = 4"), "max-subflow", 5);
        assert_error(&PATHS.replace("max-subflows = 4", "max-subflows = 9"), "paths.max-subflows", 5);
        assert_error(&PATHS.replace("ndiffports = 2", "ndiffports = 0"), "paths.ndiffports", 4);
        assert_error(&PATHS.replace("pm = \"userspace\"", "pm = \"kernel\""), "paths.ndiffports", 4);
        assert_error(&PATHS.replace("wwan0", "wlan0"), "listed twice", 12);
        assert_error(&PATHS.replace("wwan0", "a very long name"), "paths.interface.name", 12);
        let fullmesh =
            PATHS.replace("make-before-break = false", "make-before-break = false\nfullmesh = true");
        assert_error(&fullmesh, "paths.fullmesh", 7);
        let server = fullmesh.replace("ndiffports = 2", "server = true").replace("userspace", "kernel");
        assert_error(&server, "paths.fullmesh", 7);
        assert_error("\n[paths]\nmode = \"full\"\n", "paths.interface", 2);
    }

    #[test]
    fn laminar_interfaces_and_deny_join_initial() {
        let text = PATHS.replace("role = \"backup\"", "role = \"laminar\"").replace("userspace", "kernel");
        let text = text.replace("ndiffports = 2\n", "deny-join-initial = true\n");
        let config = AgentConfig::parse(&text).unwrap();
        let paths = config.paths().unwrap();
        assert_eq!(paths.interfaces[1].role, Role::Laminar);
        assert_eq!(paths.deny_join_initial, Some(true));
        assert_eq!(AgentConfig::parse(PATHS).unwrap().paths().unwrap().deny_join_initial, None);
        // The userspace path manager never answers an announcement from an endpoint.
        let userspace = PATHS.replace("role = \"backup\"", "role = \"laminar\"");
        assert_error(&userspace, "paths.interface.role", 12);
        let error = AgentConfig::parse(&userspace).unwrap_err().to_string();
        assert!(error.contains("wwan0") && error.contains("pm = \"kernel\""), "{error}");
        assert_error(
            &text.replace("deny-join-initial = true", "deny-join-initial = 0"),
            "deny-join-initial",
            4,
        );
    }

    #[test]
    fn send_buffer_max_is_bytes_and_at_least_the_initial_buffer() {
        let with = |value: &str| PATHS.replace("max-subflows = 4\n", &format!("send-buffer-max = {value}\n"));
        let config = AgentConfig::parse(&with("131072")).unwrap();
        assert_eq!(config.paths().unwrap().send_buffer_max(), Some(131072));
        assert_eq!(AgentConfig::parse(PATHS).unwrap().paths().unwrap().send_buffer_max(), None);
        assert_error(&with("4096"), "paths.send-buffer-max", 5);
        assert_error(&with("\"128KiB\""), "send-buffer-max", 5);
    }

    const RULE: &str = "
[[paths.rule]]
dport = \"5200-5299\"
mode = \"full\"
interfaces = [\"wwan0\", \"wlan0\"]
";

    #[test]
    fn a_rule_gets_its_mode_and_its_interfaces_in_its_order() {
        let config = AgentConfig::parse(&format!("{PATHS}{RULE}")).unwrap();
        let paths = config.paths().unwrap();
        let rule = paths.rules[0].get_ref();
        assert_eq!(rule.dport, Some(PortRange { first: 5200, last: 5299 }));
        assert!(rule.dport.unwrap().contains(5299) && !rule.dport.unwrap().contains(5300));
        let policy = paths.for_rule(0).unwrap();
        assert_eq!(policy.mode, PathMode::Full);
        let names: Vec<(&str, Role)> = policy.interfaces.iter().map(|i| (i.name(), i.role)).collect();
        assert_eq!(names, [("wwan0", Role::Backup), ("wlan0", Role::Subflow)]);
        assert!(policy.rules.is_empty() && policy.ndiffports() == paths.ndiffports());
        assert_eq!(paths.for_rule(1), None);
        let single =
            AgentConfig::parse(&format!("{PATHS}{}", RULE.replace("\"5200-5299\"", "5201"))).unwrap();
        assert_eq!(
            single.paths().unwrap().rules[0].get_ref().dport,
            Some(PortRange { first: 5201, last: 5201 })
        );
    }

    #[test]
    fn rule_errors_name_the_key_and_line() {
        let with = |rule: &str| format!("{PATHS}{rule}");
        assert_error(&with(&RULE.replace("wwan0\", ", "eth9\", ")), "eth9 is not a [[paths.interface]]", 18);
        assert_error(&with(&RULE.replace("\"wlan0\"", "\"wwan0\"")), "listed twice", 18);
        assert_error(&with(&RULE.replace("[\"wwan0\", \"wlan0\"]", "[]")), "paths.rule.interfaces", 18);
        assert_error(&with(&RULE.replace("dport = \"5200-5299\"\n", "")), "at least one of dport", 15);
        assert_error(&with(&RULE.replace("5200-5299", "5300-5200")), "ends before it starts", 16);
        assert_error(&with(&RULE.replace("\"5200-5299\"", "70000")), "70000 is not a port", 16);
        assert_error(&with(&RULE.replace("dport", "port")), "port", 16);
        assert_error(
            &with(&RULE.replace("dport = \"5200-5299\"", "process = \"a-process-name-too-long\"")),
            "paths.rule.process",
            16,
        );
        let kernel =
            with(RULE).replace("pm = \"userspace\"", "pm = \"kernel\"").replace("ndiffports = 2\n", "");
        assert_error(&kernel, "needs pm = \"userspace\"", 14);
    }
}
