//! The token-steering load balancer: configuration, loading and attaching its XDP program,
//! filling its maps (VIPs, backends, Maglev tables), runtime backend changes and statistics.
//! Its state lives in pinned maps under `/sys/fs/bpf/mptcp/INSTANCE/`, so every command reads
//! and changes the running balancer without a daemon.

pub mod backend_host;
pub mod config;
pub mod control;
pub mod maglev;
pub mod maps;
pub mod neighbour;
pub mod stats;
pub mod sync;

pub use backend_host::*;
pub use config::*;
pub use control::*;
pub use maps::*;
pub use neighbour::*;
pub use stats::*;

use aya::maps::MapError;

use crate::bpf::LoaderError;

#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("reading {path}")]
    ReadConfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The TOML error is the whole message (it names the line): shown, not chained.
    #[error("{path}: {error}")]
    ParseConfig { path: String, error: toml::de::Error },
    #[error("configuration: {0}")]
    Config(String),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("no balancer runs as instance {0}: start one with `mptcp-agent lb --config FILE`")]
    NotRunning(String),
    #[error("a balancer already runs as instance {0}; stop it with `mptcp-agent lb stop`")]
    AlreadyRunning(String),
    #[error("no backend named {0}")]
    NoSuchBackend(String),
    #[error("setting up the backend host: {what}")]
    Host {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("this host has no loopback interface `lo`")]
    NoLoopback,
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> SteeringError {
    move |source| SteeringError::Map { name, source }
}
