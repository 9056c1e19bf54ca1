//! The agent's `decode` output against tshark's MPTCP dissector, field by field: shared by the
//! lab test of kernel traffic (`tests/decode.rs`) and the crafted conformance corpus
//! (`mptcp-agent/tests/conformance.rs`).

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::capture::tshark_fields_with_prefs;

/// MPTCP analysis on (it computes mptcp.expected_token and mptcp.expected_idsn).
pub const TSHARK_PREFS: &[&str] = &["mptcp.analyze_mptcp:TRUE", "mptcp.relative_sequence_numbers:FALSE"];

/// The tshark fields compared, in the order of the columns asked for after `frame.number`.
pub const FIELDS: &[&str] = &[
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
    "tcp.options.mptcp.ipv4",
    "tcp.options.mptcp.ipv6",
    "tcp.options.mptcp.port",
    "tcp.options.mptcp.echo",
    "tcp.options.mptcp.subtype",
];

/// Fields tshark shows beyond [`FIELDS`], compared on the crafted conformance corpus (Linux's
/// traffic in the labs has no MP_TCPRST). Not the DSS checksum: tshark 4.0 shows it only when
/// the option is two bytes longer than a DSS with checksum is.
pub const MORE_FIELDS: &[&str] = &["tcp.options.mptcp.version", "tcp.options.mptcp.rst_reason"];

/// Field name -> values, in option order, for one packet.
pub type PacketFields = BTreeMap<&'static str, Vec<String>>;

/// What tshark shows of one decoded option, as `-T fields` prints it.
fn option_fields(option: &Value, fields: &mut PacketFields) -> Result<()> {
    let mut put = |field: &'static str, value: &Value| {
        let text = match value {
            Value::Null => return,
            Value::Bool(b) => u8::from(*b).to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        fields.entry(field).or_default().push(text);
    };
    let subtype = option["subtype"].as_str().context("option without subtype")?;
    let number = match subtype {
        "mp_capable" => 0,
        "mp_join_syn" | "mp_join_syn_ack" | "mp_join_ack" => 1,
        "dss" => 2,
        "add_addr" => 3,
        "remove_addr" => 4,
        "mp_prio" => 5,
        "mp_fail" => 6,
        "mp_fastclose" => 7,
        "mp_tcprst" => 8,
        "mp_experimental" => 15,
        other => bail!("unknown subtype {other}"),
    };
    put("tcp.options.mptcp.subtype", &Value::from(number));
    match subtype {
        "mp_capable" => {
            put("tcp.options.mptcp.sendkey", &option["sender_key"]);
            put("tcp.options.mptcp.recvkey", &option["receiver_key"]);
            put("mptcp.expected_token", &option["sender_token"]);
            put("mptcp.expected_idsn", &option["sender_idsn"]);
            put("tcp.options.mptcp.datalvllen", &option["data_len"]);
            put("tcp.options.mptcp.version", &option["version"]);
        }
        "mp_join_syn" | "mp_join_syn_ack" => {
            put("tcp.options.mptcp.backup.flag", &option["backup"]);
            put("tcp.options.mptcp.addrid", &option["addr_id"]);
            put("tcp.options.mptcp.recvtok", &option["token"]);
            put("tcp.options.mptcp.sendtrunchmac", &option["truncated_hmac"]);
            put("tcp.options.mptcp.sendrand", &option["nonce"]);
        }
        "mp_join_ack" => put("tcp.options.mptcp.sendhmac", &option["hmac"]),
        "dss" => {
            put("tcp.options.mptcp.rawdataack", &option["data_ack"]);
            put("tcp.options.mptcp.rawdataseqno", &option["dsn"]);
            put("tcp.options.mptcp.subflowseqno", &option["subflow_seq"]);
            put("tcp.options.mptcp.datalvllen", &option["data_len"]);
        }
        "add_addr" => {
            // The RFC 6824 shape has no echo flag.
            if option["v0"] != true {
                put("tcp.options.mptcp.echo", &option["echo"]);
            }
            put("tcp.options.mptcp.addrid", &option["addr_id"]);
            let field = match option["addr"].as_str().map(str::parse::<IpAddr>) {
                Some(Ok(IpAddr::V4(_))) => "tcp.options.mptcp.ipv4",
                Some(Ok(IpAddr::V6(_))) => "tcp.options.mptcp.ipv6",
                _ => bail!("ADD_ADDR without an address: {option}"),
            };
            put(field, &option["addr"]);
            put("tcp.options.mptcp.port", &option["port"]);
            put("tcp.options.mptcp.addaddrtrunchmac", &option["hmac"]);
        }
        "mp_fail" => put("tcp.options.mptcp.rawdataseqno", &option["dsn"]),
        "mp_fastclose" => put("tcp.options.mptcp.recvkey", &option["receiver_key"]),
        "mp_tcprst" => put("tcp.options.mptcp.rst_reason", &hex_field(&option["reason"], 2)),
        _ => {}
    }
    Ok(())
}

/// An integer as tshark prints a hexadecimal field of `digits` digits (`0x00ab`).
fn hex_field(value: &Value, digits: usize) -> Value {
    value.as_u64().map_or(Value::Null, |v| Value::from(format!("{v:#0width$x}", width = digits + 2)))
}

/// Per frame number, the fields the agent's packet listing implies.
pub fn agent_fields(decoded: &Value) -> Result<BTreeMap<u64, PacketFields>> {
    let mut frames = BTreeMap::new();
    for packet in decoded["packets"].as_array().context("no packet listing")? {
        let frame = packet["frame"].as_u64().context("packet without frame")?;
        let fields = frames.entry(frame).or_insert_with(PacketFields::new);
        for option in packet["options"].as_array().context("packet without options")? {
            option_fields(option, fields)?;
        }
    }
    Ok(frames)
}

/// Per frame number, `fields` as tshark prints them.
pub fn tshark_frame_fields(pcap: &Path, fields: &[&'static str]) -> Result<BTreeMap<u64, PacketFields>> {
    let columns: Vec<&str> = std::iter::once("frame.number").chain(fields.iter().copied()).collect();
    let mut frames = BTreeMap::new();
    for row in tshark_fields_with_prefs(pcap, TSHARK_PREFS, &columns)? {
        let frame: u64 = row.first().context("empty tshark row")?.parse()?;
        let mut values_of = PacketFields::new();
        for (field, column) in fields.iter().zip(row.iter().skip(1)) {
            let values: Vec<String> =
                column.split(',').filter(|v| !v.is_empty()).map(str::to_owned).collect();
            if !values.is_empty() {
                values_of.insert(field, values);
            }
        }
        frames.insert(frame, values_of);
    }
    Ok(frames)
}

/// Compares `fields` of every frame of the agent's `decode --json --packets` with tshark's;
/// returns how many values were compared, per field.
pub fn compare_with_tshark(
    pcap: &Path,
    decoded: &Value,
    fields: &[&'static str],
) -> Result<BTreeMap<&'static str, usize>> {
    let ours = agent_fields(decoded)?;
    let theirs = tshark_frame_fields(pcap, fields)?;
    ensure!(
        theirs.len() as u64 == decoded["summary"]["frames"].as_u64().unwrap_or(0),
        "tshark and the agent disagree on the number of frames"
    );
    let empty = PacketFields::new();
    let mut compared = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (frame, tshark) in &theirs {
        let agent = ours.get(frame).unwrap_or(&empty);
        for field in fields {
            let (a, t) = (agent.get(field), tshark.get(field));
            if a != t {
                mismatches.push(format!("frame {frame} {field}: agent {a:?}, tshark {t:?}"));
            }
            *compared.entry(*field).or_insert(0) += t.map_or(0, Vec::len);
        }
    }
    ensure!(
        mismatches.is_empty(),
        "{} mismatches with tshark in {}:\n{}",
        mismatches.len(),
        pcap.display(),
        mismatches.join("\n")
    );
    Ok(compared)
}

pub fn assert_compared(compared: &BTreeMap<&str, usize>, fields: &[&str]) {
    for field in fields {
        assert!(compared.get(field).copied().unwrap_or(0) > 0, "no {field} values compared: {compared:?}");
    }
}
