//! The connection and subflow tables: typed access to the maps, and the views operators read
//! (`conns`, `subflows`, `replay`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use mptcp_common::maps::{
    CONFIG_MAP, CONNECTION_CHECKS_MAP, CONNECTIONS_MAP, Connection, ConnectionChecks, DataplaneConfig,
    FlowKey, HALF_OPEN_SUBFLOWS_MAP, HMAC_VERDICTS_MAP, SUBFLOWS_MAP, Subflow, connection_flags,
    direction_flags, fallback_reason, hmac_verdict, subflow_kind, subflow_state,
};
use serde::Serialize;

use crate::bpf::{LoaderError, maps};

/// Why a table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the object")]
    Missing(&'static str),
    #[error(transparent)]
    Pinned(#[from] LoaderError),
}

pub fn map_error(name: &'static str) -> impl Fn(MapError) -> TableError {
    move |source| TableError::Map { name, source }
}

/// The maps the agent reads and writes, from pins or from a freshly loaded object.
pub struct Tables {
    pub subflows: HashMap<MapData, FlowKey, Subflow>,
    /// Subflows whose handshake has not completed (see [`HALF_OPEN_SUBFLOWS_MAP`]).
    pub half_open_subflows: HashMap<MapData, FlowKey, Subflow>,
    pub connections: HashMap<MapData, u32, Connection>,
    pub verdicts: HashMap<MapData, FlowKey, u8>,
    pub checks: HashMap<MapData, u32, ConnectionChecks>,
    pub config: Array<MapData, DataplaneConfig>,
}

impl Tables {
    /// Builds the tables from a map opener (pinned maps, or maps taken from an `Ebpf`).
    pub fn open(mut open: impl FnMut(&'static str) -> Result<Map, TableError>) -> Result<Self, TableError> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            open: &mut impl FnMut(&'static str) -> Result<Map, TableError>,
            name: &'static str,
        ) -> Result<T, TableError> {
            let map = open(name)?;
            T::try_from(map).map_err(|source| TableError::Map { name, source })
        }
        Ok(Self {
            subflows: typed(&mut open, SUBFLOWS_MAP)?,
            half_open_subflows: typed(&mut open, HALF_OPEN_SUBFLOWS_MAP)?,
            connections: typed(&mut open, CONNECTIONS_MAP)?,
            verdicts: typed(&mut open, HMAC_VERDICTS_MAP)?,
            checks: typed(&mut open, CONNECTION_CHECKS_MAP)?,
            config: typed(&mut open, CONFIG_MAP)?,
        })
    }

    pub fn write_config(&mut self, config: &DataplaneConfig) -> Result<(), TableError> {
        self.config.set(0, config, 0).map_err(|source| TableError::Map { name: CONFIG_MAP, source })
    }

    /// One subflow, established or half-open.
    pub fn subflow(&self, key: &FlowKey) -> Result<Option<Subflow>, TableError> {
        match maps::lookup(&self.subflows, key).map_err(map_error(SUBFLOWS_MAP))? {
            Some(subflow) => Ok(Some(subflow)),
            None => maps::lookup(&self.half_open_subflows, key).map_err(map_error(HALF_OPEN_SUBFLOWS_MAP)),
        }
    }

    /// Every subflow, half-open ones included, with the agent's verdict applied (the programs
    /// copy it on the next packet).
    pub fn subflows(&self) -> Result<Vec<(FlowKey, Subflow)>, TableError> {
        let mut subflows = maps::entries(&self.subflows).map_err(map_error(SUBFLOWS_MAP))?;
        subflows.extend(maps::entries(&self.half_open_subflows).map_err(map_error(HALF_OPEN_SUBFLOWS_MAP))?);
        for (key, subflow) in &mut subflows {
            if subflow.hmac == hmac_verdict::PENDING
                && let Some(verdict) =
                    maps::lookup(&self.verdicts, key).map_err(map_error(HMAC_VERDICTS_MAP))?
            {
                subflow.hmac = verdict;
            }
        }
        Ok(subflows)
    }

    pub fn connections(&self) -> Result<Vec<(u32, Connection)>, TableError> {
        maps::entries(&self.connections).map_err(map_error(CONNECTIONS_MAP))
    }

    /// The agent's checks of a connection; all unchecked when it has none yet.
    pub fn checks(&self, token: u32) -> Result<ConnectionChecks, TableError> {
        Ok(maps::lookup(&self.checks, &token).map_err(map_error(CONNECTION_CHECKS_MAP))?.unwrap_or_default())
    }
}

/// An address of a key or event as the maps store it (IPv4-mapped for IPv4).
pub fn ip(family: u8, bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// The (client, server) ends of a subflow: the client sent its SYN.
pub fn endpoints(key: &FlowKey, subflow: &Subflow) -> (SocketAddr, SocketAddr) {
    let a = SocketAddr::new(ip(key.family, key.addr_a), key.port_a);
    let b = SocketAddr::new(ip(key.family, key.addr_b), key.port_b);
    if subflow.client_is_b == 0 { (a, b) } else { (b, a) }
}

pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        subflow_kind::INITIAL => "initial",
        subflow_kind::JOIN => "join",
        _ => "unknown",
    }
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        subflow_state::SYN_SENT => "syn-sent",
        subflow_state::SYN_RECEIVED => "syn-received",
        subflow_state::ESTABLISHED => "established",
        subflow_state::CLOSING => "closing",
        subflow_state::CLOSED => "closed",
        _ => "seen",
    }
}

pub fn hmac_name(verdict: u8) -> &'static str {
    match verdict {
        hmac_verdict::VERIFIED => "verified",
        hmac_verdict::FAILED => "failed",
        hmac_verdict::PENDING => "pending",
        _ => "unknown",
    }
}

pub fn fallback_name(reason: u8) -> Option<&'static str> {
    match reason {
        fallback_reason::NONE => None,
        fallback_reason::NO_MP_CAPABLE_REPLY => Some("no-mp-capable-reply"),
        fallback_reason::OPTIONS_VANISHED => Some("options-vanished"),
        fallback_reason::INFINITE_MAPPING => Some("infinite-mapping"),
        fallback_reason::MP_FAIL => Some("mp-fail"),
        _ => Some("other"),
    }
}

/// Integers operators read in hex: shown as `0x` and every digit of the width, compared and
/// joined as the integer, read back from the same text.
macro_rules! hex_integer {
    ($(#[$meta:meta])* $name:ident($int:ty), $digits:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $int);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:#0width$x}", self.0, width = $digits + 2)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.strip_prefix("0x")
                    .and_then(|digits| <$int>::from_str_radix(digits, 16).ok())
                    .map($name)
                    .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a 0x-prefixed hex integer")))
            }
        }
    };
}

hex_integer!(
    /// A 32-bit MPTCP token (or nonce).
    Token(u32),
    8
);
hex_integer!(
    /// A 64-bit MPTCP key or IDSN.
    Hex64(u64),
    16
);

impl Token {
    /// `-` where no token is known, for tables.
    pub fn or_dash(token: Option<Self>) -> String {
        token.map_or_else(|| "-".to_owned(), |token| token.to_string())
    }
}

/// What one side of a subflow sent, for the views.
#[derive(Debug, Serialize)]
pub struct DirectionView {
    pub packets: u64,
    pub bytes: u64,
    pub data_ack: u64,
    pub last_mapping: Option<MappingView>,
    pub addr_id: u8,
    pub backup: bool,
    pub fin: bool,
    pub data_fin: bool,
    pub rst: bool,
}

#[derive(Debug, Serialize)]
pub struct MappingView {
    pub dsn: u64,
    pub subflow_seq: u32,
    pub len: u16,
}

/// One subflow as `mptcp-agent subflows` shows it.
#[derive(Debug, Serialize)]
pub struct SubflowView {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub kind: &'static str,
    pub state: &'static str,
    pub connection_token: Option<Token>,
    pub join_token: Option<Token>,
    pub server_initiated: bool,
    pub backup: bool,
    pub hmac: &'static str,
    pub fallback: Option<&'static str>,
    pub c2s: DirectionView,
    pub s2c: DirectionView,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

fn direction_view(d: &mptcp_common::maps::SubflowDirection) -> DirectionView {
    let has = |flag| d.flags & flag != 0;
    DirectionView {
        packets: d.packets,
        bytes: d.bytes,
        data_ack: d.data_ack,
        last_mapping: (d.map_len != 0 || d.map_dsn != 0).then_some(MappingView {
            dsn: d.map_dsn,
            subflow_seq: d.map_ssn,
            len: d.map_len,
        }),
        addr_id: d.addr_id,
        backup: has(direction_flags::BACKUP),
        fin: has(direction_flags::FIN),
        data_fin: has(direction_flags::DATA_FIN),
        rst: has(direction_flags::RST),
    }
}

impl SubflowView {
    pub fn new(key: &FlowKey, subflow: &Subflow) -> Self {
        let (client, server) = endpoints(key, subflow);
        let backup_flags = subflow.dir[0].flags | subflow.dir[1].flags;
        Self {
            client,
            server,
            kind: kind_name(subflow.kind),
            state: state_name(subflow.state),
            connection_token: (subflow.conn_token != 0).then_some(Token(subflow.conn_token)),
            join_token: (subflow.kind == subflow_kind::JOIN).then_some(Token(subflow.join_token)),
            server_initiated: subflow.server_initiated != 0,
            backup: backup_flags & direction_flags::BACKUP != 0,
            hmac: hmac_name(subflow.hmac),
            fallback: fallback_name(subflow.fallback),
            c2s: direction_view(&subflow.dir[0]),
            s2c: direction_view(&subflow.dir[1]),
            first_seen_ns: subflow.first_seen_ns,
            last_seen_ns: subflow.last_seen_ns,
        }
    }
}

/// One connection as `mptcp-agent conns` shows it.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub server_token: Token,
    pub client_token: Option<Token>,
    pub client_key: Option<Hex64>,
    pub server_key: Option<Hex64>,
    pub client_idsn: Option<Hex64>,
    pub server_idsn: Option<Hex64>,
    pub version: u8,
    pub subflows: u32,
    pub fallback: Option<&'static str>,
    pub data_bytes: DataBytes,
    pub data_ack: DataBytes,
    /// Mappings that went back in data sequence on their subflow.
    pub reinjections: u64,
    /// Bytes mapped more than once: every subflow's mapped bytes beyond the data's span.
    pub reinjected_bytes: DataBytes,
    pub data_fin: DataFin,
    pub fastclose: bool,
    pub tcprst: bool,
    pub checksum: bool,
    pub agent_checks: ChecksView,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct DataBytes {
    pub c2s: u64,
    pub s2c: u64,
}

#[derive(Debug, Serialize)]
pub struct DataFin {
    pub c2s: bool,
    pub s2c: bool,
}

impl ConnectionView {
    /// `last_seen_ns` is the latest of the connection's subflows'.
    pub fn new(connection: &Connection, checks: ConnectionChecks, last_seen_ns: u64) -> Self {
        let has = |flag| connection.flags & flag != 0;
        let client = has(connection_flags::CLIENT_KEY);
        let server = has(connection_flags::SERVER_KEY);
        Self {
            server_token: Token(connection.server_token),
            client_token: client.then_some(Token(connection.client_token)),
            client_key: client.then_some(Hex64(connection.client_key)),
            server_key: server.then_some(Hex64(connection.server_key)),
            client_idsn: client.then_some(Hex64(connection.client_idsn)),
            server_idsn: server.then_some(Hex64(connection.server_idsn)),
            version: connection.version,
            subflows: connection.subflows,
            fallback: fallback_name(connection.fallback),
            data_bytes: DataBytes { c2s: connection.data_bytes[0], s2c: connection.data_bytes[1] },
            data_ack: DataBytes { c2s: connection.data_ack[0], s2c: connection.data_ack[1] },
            reinjections: connection.reinjections,
            reinjected_bytes: DataBytes {
                c2s: connection.mapped_bytes[0].saturating_sub(connection.data_bytes[0]),
                s2c: connection.mapped_bytes[1].saturating_sub(connection.data_bytes[1]),
            },
            data_fin: DataFin {
                c2s: has(connection_flags::DATA_FIN_C2S),
                s2c: has(connection_flags::DATA_FIN_S2C),
            },
            fastclose: has(connection_flags::FASTCLOSE),
            tcprst: has(connection_flags::TCPRST),
            checksum: has(connection_flags::CHECKSUM),
            agent_checks: checks.into(),
            first_seen_ns: connection.first_seen_ns,
            last_seen_ns,
        }
    }
}

/// The agent's own checks of a connection.
#[derive(Debug, Serialize)]
pub struct ChecksView {
    pub keys_matched: u32,
    pub keys_mismatched: u32,
    pub add_addr_verified: u32,
    pub add_addr_failed: u32,
}

impl From<ConnectionChecks> for ChecksView {
    fn from(c: ConnectionChecks) -> Self {
        Self {
            keys_matched: c.keys_matched,
            keys_mismatched: c.keys_mismatched,
            add_addr_verified: c.add_addr_verified,
            add_addr_failed: c.add_addr_failed,
        }
    }
}

/// A connection with the agent's checks and its subflows.
pub struct TrackedConnection {
    pub connection: Connection,
    pub checks: ConnectionChecks,
    pub subflows: Vec<(FlowKey, Subflow)>,
}

impl TrackedConnection {
    pub fn view(&self) -> ConnectionView {
        let last = self.subflows.iter().map(|(_, s)| s.last_seen_ns).max().unwrap_or(0);
        ConnectionView::new(&self.connection, self.checks, last)
    }
}

/// Connections, each with its subflows, and the subflows no connection claims.
pub struct Snapshot {
    pub connections: Vec<TrackedConnection>,
    pub orphans: Vec<(FlowKey, Subflow)>,
}

impl Snapshot {
    pub fn read(tables: &Tables) -> Result<Self, TableError> {
        let mut subflows = tables.subflows()?;
        subflows.sort_by_key(|(_, subflow)| subflow.first_seen_ns);
        let mut connections: Vec<TrackedConnection> = tables
            .connections()?
            .into_iter()
            .map(|(token, connection)| {
                Ok(TrackedConnection { connection, checks: tables.checks(token)?, subflows: Vec::new() })
            })
            .collect::<Result<_, TableError>>()?;
        connections.sort_by_key(|tracked| tracked.connection.first_seen_ns);
        let mut orphans = Vec::new();
        for (key, subflow) in subflows {
            match connections.iter_mut().find(|t| t.connection.server_token == subflow.conn_token) {
                Some(tracked) if subflow.conn_token != 0 => tracked.subflows.push((key, subflow)),
                _ => orphans.push((key, subflow)),
            }
        }
        Ok(Self { connections, orphans })
    }

    pub fn connection_views(&self) -> Vec<ConnectionView> {
        self.connections.iter().map(TrackedConnection::view).collect()
    }
}
