//! The agent's configuration file (TOML); every key optional, unknown keys rejected by name.

use std::path::{Path, PathBuf};

use mptcp_common::maps::{DataplaneConfig, admission};
use serde::Deserialize;

use crate::{congestion::Algorithm, loader::XdpAttachMode};

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
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
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
            "admission = \"verified\"\njoin-rate-per-sec = 20\njoin-burst = 5\nxdp-mode = \"skb\"\n",
        )
        .unwrap();
        assert_eq!(config.admission, Admission::Verified);
        assert_eq!(config.dataplane().join_burst, 5);
        assert_eq!(config.xdp_mode, Some(XdpModeName::Skb));
        assert_eq!(AgentConfig::parse("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let error = AgentConfig::parse("\n\njoin-rate = 5\n").unwrap_err().to_string();
        assert!(error.contains("join-rate") && error.contains("line 3"), "{error}");
        let error = AgentConfig::parse("admission = \"sometimes\"\n").unwrap_err().to_string();
        assert!(error.contains("sometimes") && error.contains("line 1"), "{error}");
    }
}
