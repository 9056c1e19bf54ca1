//! `mptcp-agent decode` against tshark on real kernel MPTCP traffic: every option field, the
//! derived tokens and IDSNs, and the verdicts on the kernel's MP_JOIN and ADD_ADDR HMACs.

use std::{collections::BTreeSet, path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};
use mptcp_tests::{
    TempDir, agent,
    capture::{Capture, tshark_fields_with_prefs},
    lab::{DualHomedLab, Family, LabOptions},
    lock::LabLock,
    traffic::{ClientOptions, Proto, Server, transfer},
    tshark::{FIELDS, TSHARK_PREFS, assert_compared, compare_with_tshark},
};
use serde_json::Value;

fn agent_decode(pcap: &Path) -> Result<Value> {
    let out = Command::new(agent::binary())
        .args(["decode", "--json", "--packets"])
        .arg(pcap)
        .output()
        .context("running mptcp-agent decode")?;
    ensure!(out.status.success(), "decode failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).context("parsing decode JSON")
}

/// The checks of one kind of HMAC option.
fn hmac_checks<'a>(decoded: &'a Value, option: &str) -> Vec<&'a Value> {
    decoded["hmac_checks"]
        .as_array()
        .map(|checks| checks.iter().filter(|c| c["option"] == option).collect())
        .unwrap_or_default()
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    (0..hex.len()).step_by(2).map(|i| Ok(u8::from_str_radix(&hex[i..i + 2], 16)?)).collect()
}

/// Rewrites `pcap` with one bit flipped in the first (and only) occurrence of each of `needles`.
fn corrupt(pcap: &Path, needles: &[Vec<u8>], out: &Path) -> Result<()> {
    let mut bytes = std::fs::read(pcap)?;
    for needle in needles {
        let positions: Vec<usize> =
            bytes.windows(needle.len()).enumerate().filter(|(_, w)| w == needle).map(|(i, _)| i).collect();
        ensure!(positions.len() == 1, "{needle:02x?} occurs {} times in the capture", positions.len());
        bytes[positions[0] + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(out, bytes)?;
    Ok(())
}

/// A dual-homed lab whose server announces its second address (with `signal_port`, if any).
fn signal_lab(family: Family, signal_port: Option<u16>) -> Result<DualHomedLab> {
    let lab = DualHomedLab::new(LabOptions {
        family,
        server_signal_endpoint: signal_port.is_none(),
        ..LabOptions::default()
    })?;
    if let Some(port) = signal_port {
        let second = &lab.paths[1];
        let (addr, port) = (second.server_addr.to_string(), port.to_string());
        lab.server.ip(&[
            "mptcp",
            "endpoint",
            "add",
            &addr,
            "dev",
            &second.server_if,
            "signal",
            "port",
            &port,
        ])?;
    }
    Ok(lab)
}

fn decode_matches_tshark(family: Family, signal_port: Option<u16>) -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = signal_lab(family, signal_port)?;
    let scratch = TempDir::new("dec")?;
    // Every server interface (Linux cooked v2), and the client's first path (Ethernet).
    let server_pcap = scratch.path().join("server-any.pcap");
    let client_pcap = scratch.path().join("client-path0.pcap");
    let mut captures = [
        Capture::start(&lab.server, "any", &server_pcap)?,
        Capture::start(&lab.client, &lab.paths[0].client_if, &client_pcap)?,
    ];
    let connections = 2;
    let server = Server::start(&lab.server, lab.server_addr(0, 5201), Proto::Mptcp, connections)?;
    for _ in 0..connections {
        let done = transfer(
            &lab.client,
            server.addr,
            ClientOptions { proto: Proto::Mptcp, bytes: 128 * 1024, wait_subflows: 1, hold: None },
        )?;
        ensure!(done.subflows >= 1, "the kernel opened no second subflow");
    }
    server.join()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    for capture in &mut captures {
        capture.stop()?;
    }

    let address_field = match family {
        Family::V4 => "tcp.options.mptcp.ipv4",
        Family::V6 => "tcp.options.mptcp.ipv6",
    };
    let decoded = agent_decode(&server_pcap)?;
    let compared = compare_with_tshark(&server_pcap, &decoded, FIELDS)?;
    println!("server capture, values compared with tshark: {compared:?}");
    let mut expected_fields = vec![
        "tcp.options.mptcp.sendkey",
        "tcp.options.mptcp.recvkey",
        "mptcp.expected_token",
        "mptcp.expected_idsn",
        "tcp.options.mptcp.recvtok",
        "tcp.options.mptcp.sendrand",
        "tcp.options.mptcp.sendtrunchmac",
        "tcp.options.mptcp.sendhmac",
        "tcp.options.mptcp.addaddrtrunchmac",
        "tcp.options.mptcp.rawdataack",
        "tcp.options.mptcp.rawdataseqno",
        "tcp.options.mptcp.subflowseqno",
        "tcp.options.mptcp.datalvllen",
        "tcp.options.mptcp.addrid",
        "tcp.options.mptcp.backup.flag",
        "tcp.options.mptcp.echo",
        address_field,
    ];
    if signal_port.is_some() {
        expected_fields.push("tcp.options.mptcp.port");
    }
    assert_compared(&compared, &expected_fields);

    // Grouping: one connection per transfer, each with its joins, tokens as tshark derives them.
    let summary = &decoded["summary"];
    assert_eq!(summary["connections"], connections, "{summary}");
    assert_eq!(summary["undecodable_frames"], 0);
    assert_eq!(summary["malformed_options"], 0);
    assert_eq!(summary["fallbacks"], 0, "{summary}");
    for connection in decoded["connections"].as_array().context("connections")? {
        let subflows = connection["subflows"].as_array().context("subflows")?;
        ensure!(subflows.len() >= 2, "connection without a join: {connection}");
        for id in subflows.iter().skip(1) {
            // Subflows are listed in the order their connections finished: found by id.
            let subflow = decoded["subflows"]
                .as_array()
                .and_then(|subflows| subflows.iter().find(|s| s["id"] == *id))
                .context("subflow id")?;
            assert_eq!(subflow["kind"], "mp_join");
            let token = &subflow["join"]["token"];
            assert!(
                *token == connection["responder_token"] || *token == connection["initiator_token"],
                "join token {token} is not one of the connection's: {connection}"
            );
        }
    }

    // Every kernel HMAC verifies, with the keys from the same capture.
    assert_eq!(summary["hmac_failed"], 0, "{}", decoded["hmac_checks"]);
    assert_eq!(summary["hmac_unknown"], 0, "{}", decoded["hmac_checks"]);
    for option in ["mp_join_syn_ack", "mp_join_ack", "add_addr"] {
        let checks = hmac_checks(&decoded, option);
        ensure!(checks.len() >= connections, "only {} {option} HMACs checked", checks.len());
        assert!(checks.iter().all(|c| c["verdict"] == "verified"), "{checks:?}");
    }

    // One flipped bit in a join ACK's HMAC and one in an ADD_ADDR's: exactly those two fail.
    let join_ack = hmac_checks(&decoded, "mp_join_ack")[0];
    let add_addr = hmac_checks(&decoded, "add_addr")[0];
    let corrupted = scratch.path().join("corrupted.pcap");
    let needles = [join_ack, add_addr]
        .iter()
        .map(|check| hex_bytes(check["received"].as_str().unwrap_or_default()))
        .collect::<Result<Vec<_>>>()?;
    corrupt(&server_pcap, &needles, &corrupted)?;
    let decoded_corrupted = agent_decode(&corrupted)?;
    let failed: BTreeSet<(u64, String)> = decoded_corrupted["hmac_checks"]
        .as_array()
        .context("hmac_checks")?
        .iter()
        .filter(|c| c["verdict"] == "failed")
        .map(|c| (c["frame"].as_u64().unwrap_or(0), c["option"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let expected: BTreeSet<(u64, String)> = [(join_ack, "mp_join_ack"), (add_addr, "add_addr")]
        .iter()
        .map(|(c, option)| (c["frame"].as_u64().unwrap_or(0), (*option).to_owned()))
        .collect();
    assert_eq!(failed, expected, "corrupted HMACs");
    assert_eq!(
        decoded_corrupted["summary"]["hmac_verified"].as_u64(),
        summary["hmac_verified"].as_u64().map(|v| v - 2)
    );

    // The client's first path, as Ethernet frames: the initial subflows and the ADD_ADDRs.
    let decoded = agent_decode(&client_pcap)?;
    let compared = compare_with_tshark(&client_pcap, &decoded, FIELDS)?;
    println!("client capture, values compared with tshark: {compared:?}");
    assert_compared(
        &compared,
        &["tcp.options.mptcp.sendkey", "mptcp.expected_token", "tcp.options.mptcp.addaddrtrunchmac"],
    );
    assert_eq!(decoded["summary"]["hmac_failed"], 0);
    let add_addrs = hmac_checks(&decoded, "add_addr");
    ensure!(!add_addrs.is_empty() && add_addrs.iter().all(|c| c["verdict"] == "verified"), "{add_addrs:?}");
    Ok(())
}

#[test]
fn decode_matches_tshark_and_verifies_kernel_hmacs_ipv4_with_announced_port() -> Result<()> {
    decode_matches_tshark(Family::V4, Some(5301))
}

/// No announced port in IPv6: an ADD_ADDR with an IPv6 address, a port and an HMAC takes 30 bytes,
/// more than the 28 the option area has left beside timestamps, so Linux never sends it.
#[test]
fn decode_matches_tshark_and_verifies_kernel_hmacs_ipv6() -> Result<()> {
    decode_matches_tshark(Family::V6, None)
}

#[test]
fn fallback_to_a_plain_tcp_server_is_reported_like_tshark() -> Result<()> {
    let _lock = LabLock::acquire()?;
    let lab = DualHomedLab::new(LabOptions::default())?;
    let scratch = TempDir::new("dec")?;
    let pcap = scratch.path().join("fallback.pcap");
    let mut capture = Capture::start(&lab.server, "any", &pcap)?;
    let server = Server::start(&lab.server, lab.server_addr(0, 5202), Proto::Tcp, 1)?;
    transfer(
        &lab.client,
        server.addr,
        ClientOptions { proto: Proto::Mptcp, bytes: 64 * 1024, wait_subflows: 0, hold: None },
    )?;
    server.join()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    capture.stop()?;

    let decoded = agent_decode(&pcap)?;
    compare_with_tshark(&pcap, &decoded, FIELDS)?;
    let subflows = decoded["subflows"].as_array().context("subflows")?;
    assert_eq!(subflows.len(), 1, "{subflows:?}");
    assert_eq!(subflows[0]["kind"], "mp_capable");
    assert!(subflows[0]["fallback"].is_string(), "no fallback reported: {}", subflows[0]);
    assert_eq!(decoded["summary"]["connections"], 0);
    assert_eq!(decoded["summary"]["fallbacks"], 1);

    // tshark agrees: MPTCP options only in the client's SYN, none in the SYN-ACK or after.
    let ours: BTreeSet<u64> = decoded["packets"]
        .as_array()
        .context("packets")?
        .iter()
        .filter_map(|p| p["frame"].as_u64())
        .collect();
    let rows = tshark_fields_with_prefs(
        &pcap,
        TSHARK_PREFS,
        &["frame.number", "tcp.flags.syn", "tcp.flags.ack", "tcp.options.mptcp.subtype"],
    )?;
    let theirs: BTreeSet<u64> =
        rows.iter().filter(|r| !r[3].is_empty()).filter_map(|r| r[0].parse().ok()).collect();
    assert_eq!(ours, theirs);
    let syns: BTreeSet<u64> =
        rows.iter().filter(|r| r[1] == "1" && r[2] == "0").filter_map(|r| r[0].parse().ok()).collect();
    assert!(!theirs.is_empty() && theirs.is_subset(&syns), "MPTCP options outside the SYN: {theirs:?}");
    assert!(rows.len() > theirs.len() + 4, "the fallback connection carried no traffic");
    Ok(())
}
