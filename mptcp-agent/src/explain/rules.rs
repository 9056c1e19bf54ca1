//! The rule: from the evidence, one verdict per connection, with the evidence it rests on and
//! the fix. Pure: the gathering is in `super`.

use serde::Serialize;

use super::{BalancerEvidence, DataplaneConnection, HostEvidence, KernelConnection};

/// Why a connection has the subflows it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The connection fell back to plain TCP: no subflow can join it.
    Fallback,
    /// `ip mptcp limits` allows 0 additional subflows.
    SubflowLimitZero,
    /// A join's HMAC did not verify (kernel MIB or the dataplane's verdict).
    HmacFailure,
    /// The dataplane's admission dropped joins (unknown token or rate limit).
    AdmissionDrop,
    /// Joins reached a backend that does not own their token: a balancer steering by hash.
    HashOnlyBalancer,
    /// The server forbids joins to its initial address and port (MP_CAPABLE C flag).
    ServerCFlag,
    /// This client has no MPTCP endpoint although it has another address.
    NoEndpoint,
    /// This client has endpoints, none with the `subflow` flag.
    EndpointNotSubflow,
    /// The peer announced an address but this host accepts no ADD_ADDR.
    AddAddrAcceptedLimitZero,
    /// No subflow endpoint here, no other address, and the peer announced nothing.
    PeerAnnouncedNothing,
    /// This server saw no join and announces nothing: the client opened no subflow.
    PeerOpenedNothing,
    /// The userspace path manager (`net.mptcp.pm_type = 1`) opened no subflow.
    UserspacePathManager,
    /// The connection has the additional subflows its endpoints and limits give it.
    AllPathsInUse,
    /// No additional subflow, and no rule matched the evidence.
    Unexplained,
}

/// One verdict: its cause, the evidence lines it rests on, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub cause: Cause,
    pub evidence: Vec<String>,
    pub fix: String,
}

fn verdict(cause: Cause, evidence: Vec<String>, fix: impl Into<String>) -> Verdict {
    Verdict { cause, evidence, fix: fix.into() }
}

fn mib_line(name: &str, value: u64) -> String {
    format!("MPTcpExt{name} = {value} (this namespace's total)")
}

/// The dataplane's view of the connection: the kernel's token is this end's, so it is either
/// the connection's server or client token.
fn tracked<'e>(host: &'e HostEvidence, connection: &KernelConnection) -> Option<&'e DataplaneConnection> {
    host.dataplane.as_ref()?.connections.iter().find(|tracked| {
        tracked.server_token == connection.token || tracked.client_token == Some(connection.token)
    })
}

/// The verdict on one connection of this host.
pub fn explain_connection(host: &HostEvidence, connection: &KernelConnection) -> Verdict {
    let mib = |name: &str| host.mib.as_ref().and_then(|mib| mib.get(name).copied()).unwrap_or(0);
    let shape = format!(
        "ss -M: {} additional subflow(s), subflows_max {}, add_addr_accepted {} of max {}, \
         add_addr_signal {}; this host is the {}",
        connection.subflows,
        connection.subflows_max,
        connection.add_addr_accepted,
        connection.add_addr_accepted_max,
        connection.add_addr_signal,
        if connection.server_side { "server" } else { "client" },
    );
    let tracked = tracked(host, connection);

    if connection.fallback {
        return verdict(
            Cause::Fallback,
            vec![format!("ss -M: the connection is flagged `fallback` (plain TCP)"), shape],
            "something on the path removed MPTCP options (`mptcp-agent conns` shows the fallback \
             reason the dataplane saw); joins need an MPTCP connection",
        );
    }

    // A failed HMAC is named whatever else the connection has: it is an attack or a broken
    // middlebox, and with `--admission verified` its subflow is dropped.
    if let Some(tracked) = tracked.filter(|t| t.joins_failed > 0) {
        let mut evidence = vec![
            format!(
                "dataplane: {} join(s) of this connection failed the HMAC check, {} verified",
                tracked.joins_failed, tracked.joins_verified
            ),
            shape,
        ];
        let dropped = host.dataplane.as_ref().map_or(0, |d| d.packets_dropped_hmac);
        evidence.push(format!("dataplane: {dropped} packet(s) dropped for a failed HMAC"));
        return verdict(
            Cause::HmacFailure,
            evidence,
            "a join with a wrong HMAC is forged or rewritten on the way: find its source with \
             `mptcp-agent subflows` (hmac failed); `--admission verified` drops such subflows",
        );
    }
    let hmac_failures = mib("MPJoinAckHMacFailure") + mib("MPJoinSynAckHMacFailure");
    if connection.subflows == 0 && hmac_failures > 0 {
        return verdict(
            Cause::HmacFailure,
            vec![
                mib_line("MPJoinAckHMacFailure", mib("MPJoinAckHMacFailure")),
                mib_line("MPJoinSynAckHMacFailure", mib("MPJoinSynAckHMacFailure")),
                shape,
            ],
            "joins arrived with a wrong HMAC: forged, or keys rewritten by a middlebox; \
             `--admission verified` drops such subflows",
        );
    }

    if connection.subflows == 0 && host.switches.as_ref().is_some_and(|s| s.pm_type == Some(1)) {
        return verdict(
            Cause::UserspacePathManager,
            vec![
                "net.mptcp.pm_type = 1: a userspace path manager opens subflows, not the kernel's \
                 endpoints and limits"
                    .to_owned(),
                shape,
            ],
            "the userspace path manager (mptcpd, or `mptcp-agent run` with `pm = \"userspace\"`) \
             opened none: see `mptcp-agent paths` and its log",
        );
    }

    if connection.subflows_max == 0 {
        let mut evidence = vec![shape];
        if let Some(limits) = host.limits {
            evidence.push(format!(
                "ip mptcp limits: subflows {} add_addr_accepted {}",
                limits.subflows, limits.add_addr_accepted
            ));
        }
        return verdict(
            Cause::SubflowLimitZero,
            evidence,
            "the subflow limit is 0: raise it with `ip mptcp limits set subflows 2` (new connections \
             take the new limit)",
        );
    }

    if connection.subflows > 0 {
        let mut evidence = vec![shape];
        if let Some(tracked) = tracked {
            evidence.push(format!(
                "dataplane: {} join subflow(s) tracked, {} verified",
                tracked.joins, tracked.joins_verified
            ));
        }
        let fix = if connection.subflows >= connection.subflows_max {
            "none needed; the subflow limit is reached: raise `ip mptcp limits set subflows N` \
             for more"
        } else {
            "none needed: every path the endpoints and announcements give is in use"
        };
        return verdict(Cause::AllPathsInUse, evidence, fix);
    }

    // No additional subflow from here on.
    if let Some(dataplane) = &host.dataplane {
        let unknown = dataplane.joins_dropped_unknown_token;
        let rate = dataplane.joins_dropped_rate_limit;
        if unknown + rate > 0 {
            let fix = if rate > 0 {
                "the join rate limit drops joins: raise `--join-rate`/`--join-burst` \
                 (join-rate-per-sec, join-burst) or set it to 0"
            } else {
                "`--admission known-token` drops joins whose token it does not track: use \
                 `--admission allow`, or attach the dataplane before connections open"
            };
            return verdict(
                Cause::AdmissionDrop,
                vec![
                    format!(
                        "dataplane admission {}: {rate} join SYN(s) dropped by the rate limit \
                         ({}/s), {unknown} for an unknown token, {} admitted",
                        dataplane.admission, dataplane.join_rate_per_sec, dataplane.joins_admitted
                    ),
                    shape,
                ],
                fix,
            );
        }
    }

    if tracked.is_some_and(|t| t.server_no_join_to_source) {
        return verdict(
            Cause::ServerCFlag,
            vec![
                "dataplane: the server's MP_CAPABLE SYN-ACK carried the C flag: no join to its \
                 initial address and port"
                    .to_owned(),
                shape,
            ],
            "on the server: `sysctl -w net.mptcp.allow_join_initial_addr_port=1`, or a `signal` \
             endpoint there so clients learn an address they may join",
        );
    }
    if connection.server_side {
        return explain_server(host, connection, shape, &mib);
    }
    explain_client(host, connection, shape, &mib)
}

fn explain_server(
    host: &HostEvidence,
    connection: &KernelConnection,
    shape: String,
    mib: &dyn Fn(&str) -> u64,
) -> Verdict {
    let no_token = mib("MPJoinNoTokenFound");
    if no_token > 0 {
        return verdict(
            Cause::HashOnlyBalancer,
            vec![
                mib_line("MPJoinNoTokenFound", no_token),
                "joins arrived here with tokens of no connection on this host: another backend owns \
                 them"
                    .to_owned(),
                shape,
            ],
            "a balancer in front sends joins by hash: set `steering = \"token\"` on its VIP, or give \
             each backend join addresses (`join-addresses` in lb.toml)",
        );
    }
    let signal_endpoints = host.endpoints.as_ref().map(|e| e.iter().filter(|e| e.flags.signal).count());
    if let Some(switches) = &host.switches
        && switches.allow_join_initial_addr_port == Some(false)
    {
        return verdict(
            Cause::ServerCFlag,
            vec![
                "net.mptcp.allow_join_initial_addr_port = 0: this server's MP_CAPABLE sets the C \
                 flag, so clients must not join its initial address and port"
                    .to_owned(),
                format!(
                    "signal endpoints here: {}",
                    signal_endpoints.map_or("unknown".to_owned(), |n| n.to_string())
                ),
                shape,
            ],
            "`sysctl -w net.mptcp.allow_join_initial_addr_port=1`, or announce another address with \
             `ip mptcp endpoint add ADDR dev IF signal`",
        );
    }
    let mut evidence = vec![mib_line("MPJoinSynRx", mib("MPJoinSynRx")), shape];
    match signal_endpoints {
        Some(0) => evidence.push("no signal endpoint here: this server announces nothing".to_owned()),
        Some(n) => evidence.push(format!("{n} signal endpoint(s) here")),
        None => {}
    }
    if signal_endpoints == Some(0) || connection.add_addr_signal == 0 {
        return verdict(
            Cause::PeerOpenedNothing,
            evidence,
            "the client opened no subflow: on the client `ip mptcp endpoint add ADDR dev IF subflow`, \
             or announce an address from here with `ip mptcp endpoint add ADDR dev IF signal`",
        );
    }
    verdict(
        Cause::Unexplained,
        evidence,
        "this server announced an address and no join came: run `mptcp-agent explain` on the client",
    )
}

fn explain_client(
    host: &HostEvidence,
    connection: &KernelConnection,
    mut shape: String,
    mib: &dyn Fn(&str) -> u64,
) -> Verdict {
    let announced = mib("AddAddr");
    let Some(endpoints) = &host.endpoints else {
        return verdict(
            Cause::Unexplained,
            vec![shape, "the path manager's endpoints could not be read".to_owned()],
            "run it with CAP_NET_ADMIN in the connection's namespace",
        );
    };
    let subflow_endpoints: Vec<_> = endpoints.iter().filter(|e| e.flags.subflow).collect();
    if subflow_endpoints.is_empty() && connection.add_addr_accepted_max == 0 && announced > 0 {
        return verdict(
            Cause::AddAddrAcceptedLimitZero,
            vec![mib_line("AddAddr", announced), mib_line("AddAddrDrop", mib("AddAddrDrop")), shape],
            "the peer announced addresses but the limit accepts none: \
             `ip mptcp limits set add_addr_accepted 2`",
        );
    }
    if !subflow_endpoints.is_empty() {
        let tx = mib("MPJoinSynTx");
        let names: Vec<String> =
            subflow_endpoints.iter().map(|e| format!("{} (id {})", e.addr, e.id)).collect();
        shape = format!("{shape}; subflow endpoint(s): {}", names.join(", "));
        if tx == 0 && connection.add_addr_accepted == 0 {
            return verdict(
                Cause::ServerCFlag,
                vec![
                    shape,
                    mib_line("MPJoinSynTx", tx),
                    "the kernel sent no join although it has a subflow endpoint and the limit allows \
                     one: it skips the server's initial address only when the server's MP_CAPABLE \
                     carried the C flag"
                        .to_owned(),
                ],
                "on the server: `sysctl -w net.mptcp.allow_join_initial_addr_port=1`, or a `signal` \
                 endpoint there so this client learns an address it may join",
            );
        }
        let errors = ["MPJoinSynTxCreatSkErr", "MPJoinSynTxBindErr", "MPJoinSynTxConnectErr"];
        let mut evidence = vec![shape, mib_line("MPJoinSynTx", tx)];
        evidence.extend(errors.iter().map(|name| mib_line(name, mib(name))));
        return verdict(
            Cause::Unexplained,
            evidence,
            "joins were sent and none is established: run `mptcp-agent explain` on the server (or \
             the balancer) to see what happened to them",
        );
    }
    let others: Vec<_> = host
        .addresses
        .iter()
        .flatten()
        .filter(|addr| **addr != connection.local.ip() && addr.is_ipv4() == connection.local.is_ipv4())
        .collect();
    if !endpoints.is_empty() {
        let listed: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{} id {} [{}]", e.addr, e.id, e.flags.names().join(",")))
            .collect();
        return verdict(
            Cause::EndpointNotSubflow,
            vec![format!("endpoints: {}; none has the `subflow` flag", listed.join("; ")), shape],
            "a client opens subflows only from `subflow` endpoints: `ip mptcp endpoint delete id N` \
             then `ip mptcp endpoint add ADDR dev IF subflow`",
        );
    }
    if let Some(addr) = others.first() {
        return verdict(
            Cause::NoEndpoint,
            vec![
                format!("no MPTCP endpoint here, although {addr} is another address of this host"),
                mib_line("AddAddr", announced),
                shape,
            ],
            format!("add it as a subflow endpoint: `ip mptcp endpoint add {addr} dev IF subflow`"),
        );
    }
    verdict(
        Cause::PeerAnnouncedNothing,
        vec![
            "no subflow endpoint and no other address here".to_owned(),
            mib_line("AddAddr", announced),
            shape,
        ],
        "only the server can add paths: announce its other address with \
         `ip mptcp endpoint add ADDR dev IF signal` on the server",
    )
}

/// The verdict on a balancer running here, when it explains missing subflows.
pub fn explain_balancer(balancer: &BalancerEvidence) -> Option<Verdict> {
    (!balancer.hash_only_vips.is_empty() && balancer.joins_hashed > 0).then(|| {
        let vips: Vec<String> = balancer.hash_only_vips.iter().map(ToString::to_string).collect();
        verdict(
            Cause::HashOnlyBalancer,
            vec![
                format!("lb {}: VIP(s) {} steer by hash only", balancer.instance, vips.join(", ")),
                format!(
                    "lb {}: {} MP_JOIN SYN(s) hashed like new flows, {} steered by token",
                    balancer.instance, balancer.joins_hashed, balancer.joins_steered_by_token
                ),
            ],
            "joins hashed to another backend are refused there (MPJoinNoTokenFound): set \
             `steering = \"token\"` on the VIP, or give backends join addresses",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        explain::{DataplaneEvidence, Switches},
        paths::pm::{Endpoint, EndpointFlags, Limits},
    };

    fn connection(server_side: bool, subflows: u32) -> KernelConnection {
        KernelConnection {
            token: 0x1234,
            local: "192.0.2.1:40000".parse().unwrap(),
            remote: "192.0.2.2:5000".parse().unwrap(),
            server_side,
            subflows,
            subflows_max: 8,
            add_addr_signal: 0,
            add_addr_accepted: 0,
            add_addr_accepted_max: 8,
            fallback: false,
        }
    }

    fn endpoint(flags: EndpointFlags) -> Endpoint {
        Endpoint { id: 1, addr: "198.51.100.1".parse().unwrap(), port: None, flags, if_index: None }
    }

    fn subflow_endpoint() -> Endpoint {
        endpoint(EndpointFlags { subflow: true, ..EndpointFlags::default() })
    }

    fn host(endpoints: Vec<Endpoint>, mib: &[(&str, u64)]) -> HostEvidence {
        HostEvidence {
            switches: Some(Switches {
                enabled: Some(true),
                pm_type: Some(0),
                allow_join_initial_addr_port: Some(true),
            }),
            limits: Some(Limits { subflows: 8, add_addr_accepted: 8 }),
            endpoints: Some(endpoints),
            addresses: Some(vec!["192.0.2.1".parse().unwrap(), "198.51.100.1".parse().unwrap()]),
            mib: Some(
                mib.iter().map(|(name, value)| ((*name).to_owned(), *value)).collect::<BTreeMap<_, _>>(),
            ),
            ..HostEvidence::default()
        }
    }

    #[test]
    fn a_joined_connection_uses_all_paths() {
        let v =
            explain_connection(&host(vec![subflow_endpoint()], &[("MPJoinSynTx", 1)]), &connection(false, 1));
        assert_eq!(v.cause, Cause::AllPathsInUse);
    }

    #[test]
    fn subflow_limit_zero_names_the_limit() {
        let mut c = connection(false, 0);
        c.subflows_max = 0;
        let v = explain_connection(&host(vec![subflow_endpoint()], &[]), &c);
        assert_eq!(v.cause, Cause::SubflowLimitZero);
        assert!(v.fix.contains("ip mptcp limits set subflows"));
    }

    #[test]
    fn a_dual_homed_client_without_endpoint() {
        let v = explain_connection(&host(vec![], &[]), &connection(false, 0));
        assert_eq!(v.cause, Cause::NoEndpoint);
        assert!(v.fix.contains("198.51.100.1") && v.fix.contains("subflow"), "{}", v.fix);
    }

    #[test]
    fn an_endpoint_without_the_subflow_flag() {
        let signal = endpoint(EndpointFlags { signal: true, ..EndpointFlags::default() });
        let v = explain_connection(&host(vec![signal], &[]), &connection(false, 0));
        assert_eq!(v.cause, Cause::EndpointNotSubflow);
        assert!(v.fix.contains("subflow"));
    }

    #[test]
    fn a_single_homed_client_whose_peer_announced_nothing() {
        let mut h = host(vec![], &[("AddAddr", 0)]);
        h.addresses = Some(vec!["192.0.2.1".parse().unwrap()]);
        let v = explain_connection(&h, &connection(false, 0));
        assert_eq!(v.cause, Cause::PeerAnnouncedNothing);
        assert!(v.fix.contains("signal"));
    }

    #[test]
    fn an_announcement_refused_by_the_add_addr_limit() {
        let mut c = connection(false, 0);
        c.add_addr_accepted_max = 0;
        let v = explain_connection(&host(vec![], &[("AddAddr", 1)]), &c);
        assert_eq!(v.cause, Cause::AddAddrAcceptedLimitZero);
        assert!(v.fix.contains("add_addr_accepted"));
    }

    #[test]
    fn a_client_that_sent_no_join_met_the_c_flag() {
        let v =
            explain_connection(&host(vec![subflow_endpoint()], &[("MPJoinSynTx", 0)]), &connection(false, 0));
        assert_eq!(v.cause, Cause::ServerCFlag);
        assert!(v.fix.contains("allow_join_initial_addr_port"));
    }

    #[test]
    fn the_dataplane_saw_the_c_flag() {
        let mut h = host(vec![subflow_endpoint()], &[("MPJoinSynTx", 5)]);
        h.dataplane = Some(DataplaneEvidence {
            connections: vec![DataplaneConnection {
                server_token: 0x77,
                client_token: Some(0x1234),
                server_no_join_to_source: true,
                ..DataplaneConnection::default()
            }],
            ..DataplaneEvidence::default()
        });
        let v = explain_connection(&h, &connection(false, 0));
        assert_eq!(v.cause, Cause::ServerCFlag);
        assert!(v.evidence[0].starts_with("dataplane"), "{v:?}");
    }

    #[test]
    fn a_server_that_sets_the_c_flag() {
        let mut h = host(vec![], &[]);
        h.switches.as_mut().unwrap().allow_join_initial_addr_port = Some(false);
        let v = explain_connection(&h, &connection(true, 0));
        assert_eq!(v.cause, Cause::ServerCFlag);
        assert!(v.fix.contains("allow_join_initial_addr_port=1"));
    }

    #[test]
    fn a_server_that_refused_unknown_tokens_is_behind_a_hash_balancer() {
        let v = explain_connection(&host(vec![], &[("MPJoinNoTokenFound", 2)]), &connection(true, 0));
        assert_eq!(v.cause, Cause::HashOnlyBalancer);
        assert!(v.fix.contains("steering"));
    }

    #[test]
    fn a_server_no_client_joined() {
        let v = explain_connection(&host(vec![], &[]), &connection(true, 0));
        assert_eq!(v.cause, Cause::PeerOpenedNothing);
    }

    #[test]
    fn a_failed_hmac_wins_over_a_joined_connection() {
        let mut h = host(vec![], &[]);
        h.dataplane = Some(DataplaneEvidence {
            connections: vec![DataplaneConnection {
                server_token: 0x1234,
                client_token: Some(0x99),
                joins: 2,
                joins_verified: 1,
                joins_failed: 1,
                server_no_join_to_source: false,
            }],
            ..DataplaneEvidence::default()
        });
        let v = explain_connection(&h, &connection(true, 1));
        assert_eq!(v.cause, Cause::HmacFailure);
        assert!(v.fix.contains("verified"));
        // The kernel's counter alone, on a connection without subflows.
        let v = explain_connection(&host(vec![], &[("MPJoinAckHMacFailure", 1)]), &connection(true, 0));
        assert_eq!(v.cause, Cause::HmacFailure);
    }

    #[test]
    fn joins_dropped_by_the_rate_limit() {
        let mut h = host(vec![], &[]);
        h.dataplane = Some(DataplaneEvidence {
            admission: "allow",
            join_rate_per_sec: 1,
            joins_dropped_rate_limit: 40,
            ..DataplaneEvidence::default()
        });
        let v = explain_connection(&h, &connection(true, 0));
        assert_eq!(v.cause, Cause::AdmissionDrop);
        assert!(v.fix.contains("--join-rate"));
    }

    #[test]
    fn the_userspace_path_manager_decides() {
        let mut h = host(vec![subflow_endpoint()], &[]);
        h.switches.as_mut().unwrap().pm_type = Some(1);
        let v = explain_connection(&h, &connection(false, 0));
        assert_eq!(v.cause, Cause::UserspacePathManager);
        assert!(v.fix.contains("mptcp-agent paths"));
    }

    #[test]
    fn a_fallen_back_connection() {
        let mut c = connection(false, 0);
        c.fallback = true;
        assert_eq!(explain_connection(&host(vec![], &[]), &c).cause, Cause::Fallback);
    }

    #[test]
    fn a_hash_only_balancer_that_hashed_joins() {
        let mut balancer = BalancerEvidence {
            instance: "lb".to_owned(),
            hash_only_vips: vec!["203.0.113.10:80".parse().unwrap()],
            joins_hashed: 3,
            ..BalancerEvidence::default()
        };
        let v = explain_balancer(&balancer).unwrap();
        assert_eq!(v.cause, Cause::HashOnlyBalancer);
        assert!(v.fix.contains("steering = \"token\""));
        balancer.hash_only_vips.clear();
        assert_eq!(explain_balancer(&balancer), None);
    }
}
