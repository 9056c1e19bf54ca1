//! User-space parser cost per packet: walk a whole TCP option area as Linux sends it and parse
//! every MPTCP option in it. Prints one JSON object per case on stdout (read by
//! `cargo xtask bench`); run it with `cargo bench -p mptcp-common --bench parser`.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use mptcp_common::{
    mptcp::{DataAck, Dss, DssMapping, MpJoin, MptcpOption},
    options::{OptionWalker, TcpOption},
};

/// Timing samples per case; the median is reported.
const SAMPLES: usize = 11;
/// Target duration of one sample.
const SAMPLE_TIME: Duration = Duration::from_millis(100);

/// Appends an encoded MPTCP option to an option area.
fn push_mptcp(area: &mut Vec<u8>, option: MptcpOption) {
    let mut buf = [0u8; 40];
    let len = option.encode(&mut buf).expect("benchmark options encode");
    area.extend_from_slice(&buf[..len]);
}

/// A Linux data segment: NOP, NOP, timestamps, then a DSS with an 8-byte data ACK and an 8-byte
/// mapping, padded with NOPs to 40 bytes.
fn dss_data_packet() -> Vec<u8> {
    let mut area = vec![1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];
    push_mptcp(
        &mut area,
        MptcpOption::Dss(Dss {
            data_fin: false,
            data_ack: Some(DataAck { value: 0x0123_4567_89ab_cdef, wide: true }),
            mapping: Some(DssMapping {
                dsn: 0x1122_3344_5566_7788,
                dsn_wide: true,
                subflow_seq: 1,
                data_len: 1448,
                checksum: None,
            }),
        }),
    );
    area.resize(40, 1);
    area
}

/// A Linux MP_JOIN SYN: MSS, SACK-permitted, timestamps, NOP, window scale, MP_JOIN.
fn mp_join_syn() -> Vec<u8> {
    let mut area = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 3, 7];
    push_mptcp(
        &mut area,
        MptcpOption::Join(MpJoin::Syn { backup: false, addr_id: 1, token: 0x5012_1c1a, nonce: 0x7f00_0001 }),
    );
    area
}

/// What a decoder does with one packet: walk every option, parse the MPTCP ones.
fn parse_packet(area: &[u8]) -> usize {
    let mut mptcp = 0;
    for option in OptionWalker::new(area) {
        if let Ok(TcpOption::Mptcp(bytes)) = option
            && black_box(MptcpOption::parse(bytes)).is_ok()
        {
            mptcp += 1;
        }
    }
    mptcp
}

/// Median nanoseconds per call of `parse_packet(area)`.
fn measure(area: &[u8]) -> (f64, u64) {
    assert_eq!(parse_packet(area), 1, "the benchmark packet must hold one MPTCP option");
    // Calibrate the iterations of one sample.
    let mut iterations: u64 = 1_000;
    loop {
        let start = Instant::now();
        for _ in 0..iterations {
            black_box(parse_packet(black_box(area)));
        }
        if start.elapsed() >= SAMPLE_TIME / 4 {
            break;
        }
        iterations *= 2;
    }
    iterations *= 4;
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                black_box(parse_packet(black_box(area)));
            }
            start.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[SAMPLES / 2], iterations * SAMPLES as u64)
}

fn main() {
    for (case, area) in [("dss_data_packet", dss_data_packet()), ("mp_join_syn", mp_join_syn())] {
        let (ns, iterations) = measure(&area);
        println!(
            "{{\"case\":\"{case}\",\"ns_per_packet\":{ns:.2},\"option_bytes\":{},\"iterations\":{iterations},\"samples\":{SAMPLES}}}",
            area.len()
        );
    }
}
