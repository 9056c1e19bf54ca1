//! A live SYN flood: spoofed MP_CAPABLE SYNs from a namespace of their own into the lab's
//! server, answered by the server's kernel, while real MPTCP connections with joins run across
//! it. The integration test `flood` and `cargo xtask bench flood` both run [`run`].

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{
    agent::{Daemon, Dataplane},
    craft,
    kernel::{self, ProgramRuns},
    lab::{DualHomedLab, LabOptions},
    netns::{Netns, veth},
    traffic::{ClientOptions, Gate, Proto, Server, transfer},
};

/// The flood link: the flooder's and the server's addresses (a /30 of 203.0.113.0/24).
const FLOODER_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER_FLOOD_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// Spoofed sources: 198.51.100.128-254 (the lab's path 1 uses .1 and .2 of that /24, and .255
/// is its broadcast address, which the server would answer on path 1) and 203.0.113.4-255
/// (past the flood link's /30). The server routes both back over the flood link, so its
/// SYN-ACKs leave through a tracked interface to a neighbour that answers ARP.
const SPOOFED_ROUTES: [&str; 2] = ["198.51.100.128/25", "203.0.113.0/24"];
const SPOOFED_HOSTS: u32 = 127 + 252;

/// The `index`-th spoofed client: every address in turn, then the next source port, so every
/// SYN has a 4-tuple of its own.
pub fn spoofed_source(index: u32) -> Result<SocketAddrV4> {
    let host = index % SPOOFED_HOSTS;
    let addr = if host < 127 {
        Ipv4Addr::new(198, 51, 100, 128 + host as u8)
    } else {
        Ipv4Addr::new(203, 0, 113, 4 + (host - 127) as u8)
    };
    let port = u16::try_from(1024 + index / SPOOFED_HOSTS).context("more spoofed SYNs than 4-tuples")?;
    Ok(SocketAddrV4::new(addr, port))
}

/// The TCP options of a Linux SYN with MPTCP, in Linux's order: MSS 1460, SACK permitted and
/// timestamps (`tsval`, echo 0), NOP, window scale 7, MP_CAPABLE v1 (kind 30, length 4). Its
/// flags byte is what Linux sends by default: H (HMAC-SHA256) alone; A (checksum) only with
/// net.mptcp.checksum_enabled.
fn linux_syn_options(tsval: u32) -> [u8; 24] {
    let ts = tsval.to_be_bytes();
    [
        2, 4, 0x05, 0xb4, // MSS 1460
        4, 2, // SACK permitted
        8, 10, ts[0], ts[1], ts[2], ts[3], 0, 0, 0, 0, // timestamps
        1, // NOP
        3, 3, 7, // window scale 7
        30, 4, 0x01, 0x01, // MP_CAPABLE: subtype 0, version 1; flags H
    ]
}

/// `count` Ethernet/IPv4/TCP SYNs from spoofed sources to `dst`, built once before sending.
/// etherparse writes the headers and checksums (the tests crate does not depend on
/// mptcp-common, and a SYN's options are one fixed byte string).
pub fn spoofed_syns(
    count: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    dst: SocketAddrV4,
) -> Result<Vec<Vec<u8>>> {
    (0..count)
        .map(|index| {
            let src = spoofed_source(index)?;
            // Distinct, unordered ISNs and timestamps, as different hosts would pick.
            let isn = index.wrapping_mul(0x9e37_79b9);
            let mut frame = Vec::with_capacity(78);
            etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
                .ipv4(src.ip().octets(), dst.ip().octets(), 64)
                .tcp(src.port(), dst.port(), isn, 64240)
                .syn()
                .options_raw(&linux_syn_options(isn.rotate_left(7)))?
                .write(&mut frame, &[])?;
            Ok(frame)
        })
        .collect()
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .context(text.to_owned())?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{text} is not a MAC address"))
}

/// How hard and how long a flood sends.
#[derive(Debug, Clone, Copy)]
pub struct FloodOptions {
    /// SYNs sent, at most.
    pub count: u32,
    /// Frames per second, at most; `None`: as fast as the socket takes them.
    pub rate: Option<u32>,
    /// The flood stops after this long even if not every SYN went out.
    pub max_duration: Duration,
}

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Frames handed to the kernel per sendmmsg call.
const BATCH: usize = 64;

/// Sends `frames` out of `iface` through an AF_PACKET socket opened in the calling thread's
/// network namespace, in sendmmsg batches, paced to `options.rate`, within
/// `options.max_duration`. `progress` counts the frames sent so far.
pub fn send_frames(
    iface: &str,
    frames: &[Vec<u8>],
    options: FloodOptions,
    progress: &AtomicU64,
) -> Result<FloodReport> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface}: {}", std::io::Error::last_os_error());
    // Protocol 0: the socket only sends, it receives nothing.
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor we just opened and nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "binding the AF_PACKET socket to {iface}: {}", std::io::Error::last_os_error());

    let start = Instant::now();
    let deadline = start + options.max_duration;
    let mut sent = 0usize;
    while sent < frames.len() && Instant::now() < deadline {
        let batch = &frames[sent..frames.len().min(sent + BATCH)];
        let mut iovecs: Vec<libc::iovec> = batch
            .iter()
            .map(|frame| libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero mmsghdr is valid (no name, no control data).
                let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
                message.msg_hdr.msg_iov = iov;
                message.msg_hdr.msg_iovlen = 1;
                message
            })
            .collect();
        // SAFETY: `messages` points at iovecs over frames that outlive the call.
        let rc = unsafe {
            libc::sendmmsg(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                messages.as_mut_ptr(),
                messages.len() as u32,
                0,
            )
        };
        if rc < 0 {
            let error = std::io::Error::last_os_error();
            // The device queue is full: let it drain.
            if error.raw_os_error() == Some(libc::ENOBUFS) || error.kind() == std::io::ErrorKind::WouldBlock {
                thread::sleep(Duration::from_micros(200));
                continue;
            }
            return Err(error).context("sendmmsg");
        }
        sent += rc as usize;
        progress.store(sent as u64, Ordering::SeqCst);
        if let Some(rate) = options.rate {
            let due = start + Duration::from_secs_f64(sent as f64 / f64::from(rate));
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                thread::sleep(ahead);
            }
        }
    }
    Ok(FloodReport { sent: sent as u64, elapsed: start.elapsed() })
}

/// The dual-homed lab plus a flooder namespace linked to the server by a third veth pair.
pub struct FloodLab {
    pub lab: DualHomedLab,
    pub flooder: Netns,
    /// The flooder's end of the flood link.
    pub flooder_if: String,
    /// The server's end of the flood link: tracked like the two paths.
    pub server_flood_if: String,
}

impl FloodLab {
    pub fn new() -> Result<Self> {
        let lab = DualHomedLab::new(LabOptions::default())?;
        let flooder = Netns::new("fld")?;
        let (flooder_if, server_flood_if) = veth(&flooder, "f0", &lab.server, "sf")?;
        flooder.ip(&["addr", "add", &format!("{FLOODER_ADDR}/30"), "dev", &flooder_if])?;
        lab.server.ip(&["addr", "add", &format!("{SERVER_FLOOD_ADDR}/30"), "dev", &server_flood_if])?;
        for route in SPOOFED_ROUTES {
            lab.server.ip(&[
                "route",
                "add",
                route,
                "via",
                &FLOODER_ADDR.to_string(),
                "dev",
                &server_flood_if,
            ])?;
        }
        Ok(Self { lab, flooder, flooder_if, server_flood_if })
    }

    /// Every server interface the dataplane tracks: both paths and the flood link.
    pub fn server_ifaces(&self) -> Vec<&str> {
        let mut ifaces: Vec<&str> = self.lab.paths.iter().map(|p| p.server_if.as_str()).collect();
        ifaces.push(&self.server_flood_if);
        ifaces
    }
}

/// One run: `connections` real MPTCP connections, each joining over path 1 and sending `bytes`,
/// with or without a flood.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub connections: usize,
    pub bytes: u64,
    /// The flood; the real connections open once it has sent `start_after` SYNs.
    pub flood: Option<(FloodOptions, u32)>,
    pub port: u16,
}

impl Scenario {
    /// The test's and the benchmark's run: 16 connections of 3 MiB, each joining, opened once a
    /// flood of 150,000 spoofed SYNs (more than HALF_OPEN's 65,536 entries) at 30,000 per second
    /// has sent 65,536; paced so the flood outlasts the real handshakes.
    pub fn under_flood(port: u16) -> Self {
        let flood =
            FloodOptions { count: 150_000, rate: Some(30_000), max_duration: Duration::from_secs(40) };
        Self { connections: 16, bytes: 3 << 20, flood: Some((flood, 65_536)), port }
    }

    /// The same connections without the flood.
    pub fn without_flood(self) -> Self {
        Self { flood: None, ..self }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub flood: Option<FloodReport>,
    /// SYNs the flood had sent when every real connection had its join and had sent its data.
    pub flood_sent_when_established: Option<u64>,
    /// The server kernel's MPTCP tokens while the real connections were held open.
    pub kernel_server_tokens: BTreeSet<u32>,
    /// Of those, the tokens `conns --json` held with both keys and the client's kernel token,
    /// after the flood.
    pub tokens_kept: usize,
    /// Established joins the server kernel showed (`ss -tniM`, flag J) while held open.
    pub kernel_joins: usize,
    /// MPTcpExtMPJoinAckRx on the server over the run.
    pub kernel_join_acks: u64,
    /// Bytes the server received on each real connection.
    pub received: Vec<u64>,
    /// Real connections whose data bytes client to server in `conns --json` equal `bytes`.
    pub data_counted: usize,
    /// Real connections whose keys the daemon cross-checked (`agent_checks.keys_matched`): it
    /// needs their events, which share the ring buffer with the flood's.
    pub keys_checked: usize,
    /// Sums over the server's interfaces of the tracker's counters, by direction.
    pub ingress: Counters,
    pub egress: Counters,
    /// The tracker's counters on the flood link alone.
    pub flood_link_ingress: Counters,
    pub flood_link_egress: Counters,
    /// HALF_OPEN's capacity and its entries after the run.
    pub half_open_capacity: u64,
    pub half_open_entries: u64,
    /// The tracker programs' BPF run statistics over the run, per interface and hook (zero
    /// unless statistics are enabled, see [`kernel::BpfStats`]).
    pub runs: Vec<ProgramRun>,
}

/// What one tracker program ran during a run.
#[derive(Debug, Clone)]
pub struct ProgramRun {
    /// `tc_ingress`, `xdp_ingress` or `tc_egress`.
    pub hook: String,
    /// On the flood link (else on one of the two paths).
    pub flood_link: bool,
    pub runs: ProgramRuns,
}

impl Outcome {
    /// The mean time per packet of the `hook` programs on the flood link or on the paths.
    pub fn ns_per_packet(&self, hook: &str, flood_link: bool) -> Option<f64> {
        self.runs
            .iter()
            .filter(|run| run.hook == hook && run.flood_link == flood_link)
            .fold(ProgramRuns::default(), |total, run| total.plus(run.runs))
            .ns_per_run()
    }
}

/// Tracker counters of one direction, by name.
#[derive(Debug, Clone, Default)]
pub struct Counters(pub std::collections::BTreeMap<String, u64>);

impl Counters {
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn add(&mut self, stats: &Value) {
        for (name, value) in stats.as_object().into_iter().flatten() {
            if let Some(value) = value.as_u64() {
                *self.0.entry(name.clone()).or_default() += value;
            }
        }
    }
}

fn token(value: &Value) -> Option<u32> {
    u32::from_str_radix(value.as_str()?.trim_start_matches("0x"), 16).ok()
}

fn kernel_counter(ns: &Netns, name: &str) -> Result<u64> {
    Ok(kernel::nstat(ns)?.get(name).copied().unwrap_or(0))
}

/// Runs `scenario` on `lab` with a fresh dataplane on every server interface and the daemon
/// under `admission = known-token`; fails only when the run itself fails (a transfer that loses
/// bytes included), so the caller judges the numbers.
pub fn run(lab: &FloodLab, scenario: Scenario) -> Result<Outcome> {
    let ifaces = lab.server_ifaces();
    let dataplane = Dataplane::attach(&lab.lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &["--admission", "known-token"])?;
    let half_open_capacity = kernel::map_max_entries(&dataplane.map_pin("HALF_OPEN"))?;
    let server_addr = lab.lab.server_addr(0, scenario.port);
    let SocketAddr::V4(server_v4) = server_addr else { bail!("the flood lab is IPv4") };
    let server = Server::start(&lab.lab.server, server_addr, Proto::Mptcp, scenario.connections)?;
    let join_acks_before = kernel_counter(&lab.lab.server, "MPTcpExtMPJoinAckRx")?;
    let programs = dataplane.programs()?;
    let runs_before =
        programs.iter().map(|(_, _, id)| kernel::program_runs(*id)).collect::<Result<Vec<_>>>()?;

    let progress = Arc::new(AtomicU64::new(0));
    let flooder = match scenario.flood {
        Some((options, _)) => {
            let src_mac = parse_mac(&craft::mac(&lab.flooder, &lab.flooder_if)?)?;
            let dst_mac = parse_mac(&craft::mac(&lab.lab.server, &lab.server_flood_if)?)?;
            let frames = spoofed_syns(options.count, src_mac, dst_mac, server_v4)?;
            let (iface, progress) = (lab.flooder_if.clone(), progress.clone());
            Some(lab.flooder.spawn(move || send_frames(&iface, &frames, options, &progress))?)
        }
        None => None,
    };
    let start_after = scenario.flood.map_or(0, |(_, after)| u64::from(after));
    let flood_deadline = Instant::now() + scenario.flood.map_or(Duration::ZERO, |(o, _)| o.max_duration);
    while progress.load(Ordering::SeqCst) < start_after
        && flooder.as_ref().is_some_and(|f| !f.is_finished())
        && Instant::now() < flood_deadline
    {
        thread::sleep(Duration::from_millis(5));
    }

    let gate = Arc::new(Gate::default());
    let options = ClientOptions {
        proto: Proto::Mptcp,
        bytes: scenario.bytes,
        wait_subflows: 1,
        hold: Some(gate.clone()),
    };
    let client = &lab.lab.client;
    let (held, flood, sent_when_established) = thread::scope(|scope| -> Result<_> {
        let clients: Vec<_> = (0..scenario.connections)
            .map(|_| scope.spawn(|| transfer(client, server_addr, options.clone())))
            .collect();
        let held = (|| -> Result<_> {
            gate.wait_for(scenario.connections)?;
            let sent_when_established = flooder.as_ref().map(|_| progress.load(Ordering::SeqCst));
            let flood = flooder
                .map(|f| f.join().map_err(|_| anyhow::anyhow!("the flooder panicked"))?)
                .transpose()?;
            // What the tables hold after the whole flood, connections still open.
            let conns = dataplane.json(&["conns"])?;
            let server_tokens: BTreeSet<u32> =
                kernel::connection_tokens(&lab.lab.server)?.into_iter().collect();
            let client_tokens: BTreeSet<u32> = kernel::connection_tokens(client)?.into_iter().collect();
            let kept = server_tokens
                .iter()
                .filter(|&&t| {
                    conns.as_array().into_iter().flatten().any(|c| {
                        token(&c["server_token"]) == Some(t)
                            && c["server_key"].is_string()
                            && c["client_key"].is_string()
                            && token(&c["client_token"]).is_some_and(|ct| client_tokens.contains(&ct))
                    })
                })
                .count();
            let joins = kernel::subflows(&lab.lab.server)?.iter().filter(|s| s.flags.contains('J')).count();
            Ok(((server_tokens, kept, joins), flood, sent_when_established))
        })();
        gate.open();
        for client in clients {
            client.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
        }
        held
    })?;
    let received = server.join()?;
    let (kernel_server_tokens, tokens_kept, kernel_joins) = held;

    let conns = dataplane.json(&["conns"])?;
    let real: Vec<&Value> = conns
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| token(&c["server_token"]).is_some_and(|t| kernel_server_tokens.contains(&t)))
        .collect();
    let data_counted =
        real.iter().filter(|c| c["data_bytes"]["c2s"].as_u64() == Some(scenario.bytes)).count();
    let keys_checked =
        real.iter().filter(|c| c["agent_checks"]["keys_matched"].as_u64().is_some_and(|n| n > 0)).count();
    let (mut ingress, mut egress) = (Counters::default(), Counters::default());
    let (mut flood_link_ingress, mut flood_link_egress) = (Counters::default(), Counters::default());
    for iface in &ifaces {
        let stats = dataplane.stats(iface)?;
        ingress.add(&stats["ingress"]);
        egress.add(&stats["egress"]);
        if *iface == lab.server_flood_if {
            flood_link_ingress.add(&stats["ingress"]);
            flood_link_egress.add(&stats["egress"]);
        }
    }
    let runs = programs
        .iter()
        .zip(runs_before)
        .map(|((iface, hook, id), before)| {
            Ok(ProgramRun {
                hook: hook.clone(),
                flood_link: *iface == lab.server_flood_if,
                runs: kernel::program_runs(*id)?.since(before),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Outcome {
        flood,
        flood_sent_when_established: sent_when_established,
        kernel_server_tokens,
        tokens_kept,
        kernel_joins,
        kernel_join_acks: kernel_counter(&lab.lab.server, "MPTcpExtMPJoinAckRx")?
            .saturating_sub(join_acks_before),
        received,
        data_counted,
        keys_checked,
        ingress,
        egress,
        flood_link_ingress,
        flood_link_egress,
        half_open_capacity,
        half_open_entries: kernel::map_entries(&dataplane.map_pin("HALF_OPEN"))?,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_sources_are_distinct_and_answered_over_the_flood_link() -> Result<()> {
        let count = 150_000;
        let mut seen = BTreeSet::new();
        for index in 0..count {
            let source = spoofed_source(index)?;
            let [a, b, c, d] = source.ip().octets();
            let routed = match [a, b, c] {
                [198, 51, 100] => (128..=254).contains(&d),
                [203, 0, 113] => d >= 4,
                _ => false,
            };
            ensure!(routed, "{source} is not routed back over the flood link");
            ensure!(seen.insert(source), "{source} twice");
        }
        ensure!(spoofed_source(SPOOFED_HOSTS * 64_512).is_err(), "ports run out");
        Ok(())
    }
}
