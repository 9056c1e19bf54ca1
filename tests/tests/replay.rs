//! `mptcp-agent replay`: a capture fed through the XDP program with BPF_PROG_TEST_RUN gives the
//! table live tracking gave for the same traffic, and malformed frames break nothing.

use std::{
    collections::BTreeMap,
    fs,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    TempDir,
    agent::{self, Daemon, Dataplane},
    capture::{Capture, tshark_fields},
    lab::{DualHomedLab, Family, LabOptions},
    lock::LabLock,
    netns::{Netns, run},
    traffic::{ClientOptions, Proto, Server, transfer},
};
use serde_json::Value;

/// Connections by server token (or, for fallbacks without keys, by their one subflow), each
/// with its subflows sorted, so two tables compare regardless of order.
fn by_connection(table: &Value) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for connection in table["connections"].as_array().context("connections")? {
        let mut connection = connection.clone();
        let subflows = connection["subflows"].as_array_mut().context("subflows")?;
        subflows.sort_by_key(|s| s["client"].to_string());
        for subflow in subflows.iter_mut() {
            // Live state moves on (a join closes when the test ends); the rest must agree.
            subflow.as_object_mut().context("subflow")?.remove("state");
        }
        let key = match connection["server_token"].as_str() {
            Some(token) => token.to_owned(),
            None => connection["subflows"][0]["client"].to_string(),
        };
        out.insert(key, connection);
    }
    Ok(out)
}

fn replay(ns: &Netns, pcap: &std::path::Path) -> Result<Value> {
    let out = agent::run(ns, &["replay", pcap.to_str().context("path")?, "--json"])?;
    serde_json::from_str(&out).context("replay JSON")
}

fn replay_equals_live(family: Family) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab =
        DualHomedLab::new(LabOptions { family, server_signal_endpoint: true, ..LabOptions::default() })?;
    let scratch = TempDir::new("pcap")?;
    let ifaces: Vec<&str> = lab.paths.iter().map(|p| p.server_if.as_str()).collect();
    let dataplane = Dataplane::attach(&lab.server, &ifaces)?;
    let _daemon = Daemon::start(&dataplane, &[])?;
    let mut captures: Vec<Capture> = ifaces
        .iter()
        .map(|iface| Capture::start(&lab.server, iface, &scratch.path().join(format!("{iface}.pcap"))))
        .collect::<Result<_>>()?;

    let mptcp = Server::start(&lab.server, lab.server_addr(0, 5600), Proto::Mptcp, 3)?;
    // A plain TCP server: an MPTCP client falls back.
    let plain = Server::start(&lab.server, lab.server_addr(0, 5601), Proto::Tcp, 1)?;
    let options = ClientOptions { proto: Proto::Mptcp, bytes: 200_000, wait_subflows: 1, hold: None };
    thread::scope(|scope| -> Result<()> {
        let clients: Vec<_> =
            (0..3).map(|_| scope.spawn(|| transfer(&lab.client, mptcp.addr, options.clone()))).collect();
        for client in clients {
            client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        }
        Ok(())
    })?;
    transfer(&lab.client, plain.addr, ClientOptions { wait_subflows: 0, ..options.clone() })?;
    mptcp.join()?;
    plain.join()?;
    // The connections' last packets (a late FIN or ACK) can follow the transfers by more than
    // a moment: the captures stop once the live table has not changed for 500 ms (10 s at most),
    // so that both saw the same packets.
    let mut seen = dataplane.run(&["table"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = dataplane.run(&["table"])?;
        if now == seen || Instant::now() > deadline {
            break;
        }
        seen = now;
    }
    for capture in &mut captures {
        capture.stop()?;
    }
    let live: Value = serde_json::from_str(&dataplane.run(&["table"])?)?;

    let merged = scratch.path().join("merged.pcap");
    run(Command::new("mergecap").arg("-w").arg(&merged).args(captures.iter().map(Capture::path)))?;
    let replayed = replay(&lab.server, &merged)?;
    let (live, replayed_table) = (by_connection(&live)?, by_connection(&replayed)?);
    assert_eq!(live.len(), 4, "three MPTCP connections and one fallback: {live:#?}");
    assert_eq!(replayed_table, live, "replay differs from live tracking");
    let fallbacks = replayed_table.values().filter(|c| c["fallback"] == true).count();
    assert_eq!(fallbacks, 1);
    assert!(
        replayed_table
            .values()
            .flat_map(|c| c["subflows"].as_array().into_iter().flatten())
            .any(|s| s["hmac"] == "verified"),
        "no join verified in the replay"
    );
    assert_eq!(replayed["packets"].as_u64(), Some(tshark_fields(&merged, &["frame.number"])?.len() as u64));
    assert_eq!(replayed["key_checks"]["mismatched"], 0);
    ensure!(replayed["counters"]["ingress"]["malformed"] == 0);
    Ok(())
}

#[test]
fn replay_equals_live_tracking_ipv4() -> Result<()> {
    replay_equals_live(Family::V4)
}

#[test]
fn replay_equals_live_tracking_ipv6() -> Result<()> {
    replay_equals_live(Family::V6)
}

/// A pcap (Ethernet) of `frames`.
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) -> Result<()> {
    let mut bytes = Vec::new();
    // pcap global header: magic, v2.4, zone, sigfigs, snaplen, LINKTYPE_ETHERNET.
    for field in [
        0xa1b2_c3d4u32.to_le_bytes(),
        [2, 0, 4, 0],
        [0; 4],
        [0; 4],
        65535u32.to_le_bytes(),
        1u32.to_le_bytes(),
    ] {
        bytes.extend_from_slice(&field);
    }
    for frame in frames {
        let len = (frame.len() as u32).to_le_bytes();
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&len);
        bytes.extend_from_slice(&len);
        bytes.extend_from_slice(frame);
    }
    fs::write(path, bytes)?;
    Ok(())
}

/// An Ethernet/IPv4/TCP frame whose option area is `options` (padded to words with NOPs
/// unless `raw_doff` forces a data offset that disagrees with it).
fn tcp_frame(sport: u16, flags: u8, options: &[u8], raw_doff: Option<u8>) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(1);
    }
    let doff = raw_doff.unwrap_or(5 + (opts.len() / 4) as u8);
    let tcp_len = 20 + opts.len();
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + tcp_len) as u16;
    frame.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&[192, 0, 2, 1, 192, 0, 2, 2]);
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&80u16.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, doff << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    frame.extend_from_slice(&opts);
    frame
}

#[test]
fn malformed_frames_through_test_run_are_counted_and_change_nothing() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let ns = Netns::new("rpl")?;
    let scratch = TempDir::new("pcap")?;
    // Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut frames = Vec::new();
    for i in 0..2000u16 {
        let len = (random() % 41) as usize;
        let mut options: Vec<u8> = (0..len).map(|_| random() as u8).collect();
        // Mostly MPTCP options with broken lengths and random bodies.
        if i % 2 == 0 && len >= 3 {
            options[0] = 30;
            options[1] = (random() % 45) as u8;
        }
        let doff = if i % 7 == 0 { Some((random() % 16) as u8) } else { None };
        frames.push(tcp_frame(10_000 + i, [0x02, 0x12, 0x10, 0x18][usize::from(i % 4)], &options, doff));
    }
    // Truncated and empty frames too.
    frames.extend((0..=54).map(|n| tcp_frame(9_000, 0x10, &[30, 20, 0x20, 0x01], None)[..n].to_vec()));
    let path = scratch.path().join("fuzz.pcap");
    write_pcap(&path, &frames)?;
    let report = replay(&ns, &path)?;
    assert_eq!(report["packets"].as_u64(), Some(frames.len() as u64));
    let ingress = &report["counters"]["ingress"];
    assert!(ingress["malformed"].as_u64() > Some(500), "{ingress}");
    // Whatever entries random bytes made, the programs derived every token and IDSN right.
    assert_eq!(report["key_checks"]["mismatched"], 0, "{}", report["key_checks"]);
    // Every fuzzed frame holds a TCP header; of the truncated ones, only the 54-byte one does.
    assert_eq!(ingress["tcp_packets"].as_u64(), Some(2001), "{ingress}");
    Ok(())
}
