//! Two balancer instances with their sync daemons: tokens instance A learns from crafted
//! MP_CAPABLE handshakes reach B's token table (the latency measured per token), a datagram
//! signed with another key is counted and not applied, and one command drains a backend on
//! both.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use hmac::{Hmac, Mac as _};
use mptcp_tests::{
    balancer::Balancer,
    craft,
    flood::{self, FloodOptions},
    kernel,
    lock::LabLock,
    sync::{SyncDaemon, SyncLab, VIP, tokens},
};

const TOKENS: u32 = 200;
const KEY: [u8; 32] = [0x5a; 32];
const LEARNED: u32 = 0;
const SYNCED: u32 = 1;

/// A server key per connection: distinct, spread over the 64 bits (splitmix64).
fn server_key(index: u32) -> u64 {
    let mut z = u64::from(index).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// For each connection, the client's MP_CAPABLE SYN and its third ACK carrying both keys (from
/// which the balancer computes the server's token), as a Linux client sends them.
fn handshakes(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Result<Vec<Vec<u8>>> {
    let src = [192, 0, 2, 10];
    let mut frames = Vec::new();
    for index in 0..TOKENS {
        let sport = 20000 + index as u16;
        let isn = index.wrapping_mul(0x9e37_79b9);
        let mut syn = Vec::new();
        etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src, VIP.ip().octets(), 64)
            .tcp(sport, VIP.port(), isn, 64240)
            .syn()
            // MSS 1460; MP_CAPABLE v1, flags H.
            .options_raw(&[2, 4, 0x05, 0xb4, 30, 4, 0x01, 0x01])?
            .write(&mut syn, &[])?;
        let mut option = vec![30, 20, 0x01, 0x01];
        option.extend_from_slice(&(0x0c11_e000_0000_0000 | u64::from(index)).to_be_bytes());
        option.extend_from_slice(&server_key(index).to_be_bytes());
        let mut ack = Vec::new();
        etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
            .ipv4(src, VIP.ip().octets(), 64)
            .tcp(sport, VIP.port(), isn.wrapping_add(1), 502)
            .ack(index.wrapping_mul(0x85eb_ca6b))
            .options_raw(&option)?
            .write(&mut ack, &[])?;
        frames.extend([syn, ack]);
    }
    Ok(frames)
}

/// Postcard's unsigned varint (LEB128).
fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A sync datagram with one Token entry, built from the format's description (magic, version,
/// postcard body, HMAC-SHA256 with `key`), as another implementation would.
fn token_datagram(key: &[u8], sender: &str, sequence: u64, token: u32, backend: &str) -> Result<Vec<u8>> {
    let mut bytes = b"MLBS\x01".to_vec();
    varint(sender.len() as u64, &mut bytes);
    bytes.extend_from_slice(sender.as_bytes());
    varint(sequence, &mut bytes);
    varint(1, &mut bytes); // one entry
    varint(0, &mut bytes); // Entry::Token
    varint(u64::from(token), &mut bytes);
    varint(backend.len() as u64, &mut bytes);
    bytes.extend_from_slice(backend.as_bytes());
    varint(0, &mut bytes); // learned_ns
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key)?;
    mac.update(&bytes);
    bytes.extend_from_slice(&mac.finalize().into_bytes());
    Ok(bytes)
}

fn sync_counter(stats: &serde_json::Value, name: &str) -> Result<u64> {
    stats["sync"]["counters"][name].as_u64().with_context(|| format!("no sync counter {name} in {stats}"))
}

fn backend_state(stats: &serde_json::Value, name: &str) -> Option<String> {
    stats["backends"].as_array()?.iter().find(|b| b["name"] == name)?["state"].as_str().map(str::to_owned)
}

/// Waits until `check` holds, at most `limit`. Checked every 50 ms: each check runs bpftool or
/// the agent, which would take the CPU from the daemons whose latency is measured.
fn wait_for(limit: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tokens_learned_on_one_instance_reach_the_other_and_one_command_drains_both() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let started = Instant::now();
    let lab = SyncLab::new(&KEY)?;
    let a = Balancer::start_with(&lab.a.ns, lab.a.config.clone())?;
    let b = Balancer::start_with(&lab.b.ns, lab.b.config.clone())?;
    let a_sync = SyncDaemon::start(&a)?;
    let b_sync = SyncDaemon::start(&b)?;
    // Heartbeats: each daemon sees the other up.
    let up = wait_for(Duration::from_secs(5), || {
        let state = a_sync.state()?;
        Ok(state["peers"][0]["up"] == true && state["peers"][0]["name"] == lab.b.name)
    })?;
    ensure!(up, "A never heard B's heartbeat: {}\n{}", a_sync.state()?, b_sync.log());

    // Real frames into A's interface: A's program learns the tokens, its ring hands them to
    // its sync daemon, which sends them to B's.
    let src_mac = flood::parse_mac(&craft::mac(&lab.client, &lab.a.client_iface)?)?;
    let dst_mac = flood::parse_mac(&craft::mac(&lab.a.ns, &lab.a.iface)?)?;
    let frames = handshakes(src_mac, dst_mac)?;
    let iface = lab.a.client_iface.clone();
    let sent_at = Instant::now();
    let report = lab.client.within(move || {
        let options = FloodOptions { count: u32::MAX, rate: None, max_duration: Duration::from_secs(10) };
        flood::send_frames(&iface, &frames, options, &AtomicU64::new(0))
    })??;
    ensure!(report.sent == u64::from(2 * TOKENS), "sent {} of {} frames", report.sent, 2 * TOKENS);
    let a_pin = a.map_pin("LB_TOKENS");
    let b_pin = b.map_pin("LB_TOKENS");
    let mut a_tokens = Default::default();
    let learned = wait_for(Duration::from_secs(5), || {
        a_tokens = tokens(&a_pin)?;
        Ok(a_tokens.len() == TOKENS as usize)
    })?;
    ensure!(learned, "A learned {} of {TOKENS} tokens: {}", a_tokens.len(), a.stats()?["counters"]);
    ensure!(a_tokens.values().all(|(_, origin, _)| *origin == LEARNED), "A's tokens: {a_tokens:?}");
    let mut b_tokens = Default::default();
    let synced = wait_for(Duration::from_secs(5), || {
        b_tokens = tokens(&b_pin)?;
        Ok(a_tokens.keys().all(|token| b_tokens.contains_key(token)))
    })?;
    let all_synced_after = sent_at.elapsed();
    ensure!(
        synced,
        "B holds {} of A's {TOKENS} tokens; B's sync: {}\nA's sync log:\n{}\nB's:\n{}",
        b_tokens.len(),
        b.stats()?["sync"],
        a_sync.log(),
        b_sync.log()
    );
    // Per token: from A's program storing it to B's daemon storing it (one kernel, one clock).
    let mut latencies_us: Vec<f64> = Vec::new();
    for (token, (slot, _, learned_ns)) in &a_tokens {
        let (b_slot, origin, stored_ns) = b_tokens[token];
        ensure!(
            b_slot == *slot && origin == SYNCED,
            "token {token:08x}: A {slot}, B {b_slot} origin {origin}"
        );
        latencies_us.push(stored_ns.saturating_sub(*learned_ns) as f64 / 1000.0);
    }
    latencies_us.sort_by(f64::total_cmp);
    let at = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "sync latency over {TOKENS} tokens (A learned -> B stored): median {:.0} us, p90 {:.0} us, \
         min {:.0} us, max {:.0} us; first frame sent -> B held all: {all_synced_after:?}",
        at(0.5),
        at(0.9),
        at(0.0),
        at(1.0)
    );
    // The state file is rewritten every second.
    let counted = wait_for(Duration::from_secs(3), || {
        let stats = b.stats()?;
        Ok(sync_counter(&stats, "tokens_stored")? == u64::from(TOKENS)
            && sync_counter(&stats, "flows_stored")? == u64::from(TOKENS))
    })?;
    let b_stats = b.stats()?;
    ensure!(counted, "B's sync: {}", b_stats["sync"]);
    ensure!(sync_counter(&b_stats, "auth_failures")? == 0, "B's sync: {}", b_stats["sync"]);
    // The confirmed flows too: B saw none of these packets.
    let b_flows = kernel::map_entries(&b.map_pin("LB_FLOWS"))?;
    ensure!(b_flows == u64::from(TOKENS), "B's flow table holds {b_flows} entries");

    // A datagram signed with another key is counted and not applied; the same datagram signed
    // with the group's key is (the control: the refusal is the key's, not the encoding's).
    let (forged, genuine) = (0x0bad_f00du32, 0x600d_f00du32);
    let b_addr: SocketAddr = lab.b.sync_addr;
    let wrong = token_datagram(&[0xa5; 32], "forger", 1 << 60, forged, "be1")?;
    let right = token_datagram(&KEY, "tester", 1 << 60, genuine, "be1")?;
    lab.a.ns.within(move || -> Result<()> {
        let socket = UdpSocket::bind("198.51.100.1:0")?;
        socket.send_to(&wrong, b_addr)?;
        socket.send_to(&right, b_addr)?;
        // Replayed: refused.
        socket.send_to(&right, b_addr)?;
        Ok(())
    })??;
    let counted = wait_for(Duration::from_secs(3), || {
        let stats = b.stats()?;
        Ok(sync_counter(&stats, "auth_failures")? == 1 && sync_counter(&stats, "replays")? == 1)
    })?;
    let b_stats = b.stats()?;
    ensure!(counted, "B's sync after the forged datagram: {}", b_stats["sync"]);
    let b_tokens = tokens(&b_pin)?;
    ensure!(!b_tokens.contains_key(&forged), "the forged token was stored");
    ensure!(b_tokens.get(&genuine).is_some_and(|t| t.1 == SYNCED), "the signed token was not stored");

    // A join naming a token B does not know yet, then the token: counted late (the join beat
    // the sync).
    let late_token = 0x1a7e_0001u32;
    let mut option = vec![30, 12, 0x10, 0x00];
    option.extend_from_slice(&late_token.to_be_bytes());
    option.extend_from_slice(&0x0123_4567u32.to_be_bytes());
    let mut join = Vec::new();
    etherparse::PacketBuilder::ethernet2(
        flood::parse_mac(&craft::mac(&lab.client, &lab.b.client_iface)?)?,
        flood::parse_mac(&craft::mac(&lab.b.ns, &lab.b.iface)?)?,
    )
    .ipv4([198, 51, 100, 77], VIP.ip().octets(), 64)
    .tcp(40000, VIP.port(), 1, 64240)
    .syn()
    .options_raw(&option)?
    .write(&mut join, &[])?;
    let iface = lab.b.client_iface.clone();
    lab.client.within(move || {
        let options = FloodOptions { count: 1, rate: None, max_duration: Duration::from_secs(2) };
        flood::send_frames(&iface, &[join], options, &AtomicU64::new(0))
    })??;
    let late = token_datagram(&KEY, "tester", (1 << 60) + 1, late_token, "be2")?;
    // And a token for a backend B does not have: counted, not stored, nothing else affected.
    let stranger = 0x0005_7a9eu32;
    let unknown = token_datagram(&KEY, "tester", (1 << 60) + 2, stranger, "be9")?;
    lab.a.ns.within(move || -> Result<()> {
        let socket = UdpSocket::bind("198.51.100.1:0")?;
        socket.send_to(&late, b_addr)?;
        socket.send_to(&unknown, b_addr)?;
        Ok(())
    })??;
    let counted = wait_for(Duration::from_secs(3), || {
        let stats = b.stats()?;
        Ok(sync_counter(&stats, "late")? == 1 && sync_counter(&stats, "unknown_backends")? == 1)
    })?;
    let b_stats = b.stats()?;
    ensure!(counted, "B's sync after a join beat the sync: {} {}", b_stats["sync"], b_stats["counters"]);
    ensure!(b_stats["counters"]["joins_unknown_token"] == 1, "B's counters: {}", b_stats["counters"]);
    ensure!(!tokens(&b_pin)?.contains_key(&stranger), "a token of an unknown backend was stored");

    // One command drains be1 on both.
    let config = lab.a.config.to_str().context("config path")?;
    let out = a.run(&["lb", "backend", "drain", "be1", "--config", config])?;
    eprintln!("{out}");
    ensure!(out.contains(&format!("peer {} ({b_addr}): applied", lab.b.name)), "drain: {out}");
    for (name, balancer) in [("A", &a), ("B", &b)] {
        let stats = balancer.stats()?;
        ensure!(backend_state(&stats, "be1").as_deref() == Some("draining"), "{name}: {}", stats["backends"]);
        ensure!(backend_state(&stats, "be2").as_deref() == Some("active"), "{name}: {}", stats["backends"]);
    }
    let once = wait_for(Duration::from_secs(3), || Ok(sync_counter(&b.stats()?, "commands_applied")? == 1))?;
    ensure!(once, "B's sync after the drain: {}", b.stats()?["sync"]);

    // Without B's daemon the command is applied here, and the command fails naming B.
    drop(b_sync);
    let out = mptcp_tests::agent::output(
        &lab.a.ns,
        &["lb", "backend", "activate", "be1", "--config", config, "--instance", a.instance()],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success(), "activate succeeded without B: {stdout}");
    ensure!(stdout.contains(&format!("peer {b_addr}: no answer")), "activate: {stdout}");
    ensure!(backend_state(&a.stats()?, "be1").as_deref() == Some("active"), "A did not activate be1");
    // SIGTERM stops the daemon cleanly, its last state saying so.
    let stopping = Instant::now();
    let (status, state) = a_sync.stop()?;
    eprintln!(
        "lb sync stopped in {:?}; the test ran {:?} with the lab lock",
        stopping.elapsed(),
        started.elapsed()
    );
    ensure!(status.is_some_and(|s| s.success()), "lb sync on A: {status:?}");
    ensure!(state["running"] == false, "A's last state: {state}");
    Ok(())
}
