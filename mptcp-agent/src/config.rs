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
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
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
}
