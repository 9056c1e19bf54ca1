use super::*;
use proptest::prelude::*;
use std::vec::Vec;

fn parse(bytes: &[u8]) -> Result<MptcpOption, MptcpError> {
    MptcpOption::parse(bytes)
}

/// Encodes, checks the length byte, parses back and compares.
fn round_trip(option: MptcpOption) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let len = option.encode(&mut buf).unwrap();
    assert_eq!(usize::from(buf[1]), len);
    assert_eq!(option.encoded_len().unwrap(), len);
    assert_eq!(parse(&buf[..len]).unwrap(), option);
    buf[..len].to_vec()
}

fn bytes(b: &[u8]) -> OptionBytes {
    OptionBytes::new(b).unwrap()
}

const KEY_A: u64 = 0x0102_0304_0506_0708;
const KEY_B: u64 = 0x1112_1314_1516_1718;

#[test]
fn mp_capable_every_handshake_step() {
    // v1 SYN: no key, HMAC-SHA256 flag.
    assert_eq!(
        parse(&[30, 4, 0x01, 0x01]).unwrap(),
        MptcpOption::Capable(MpCapable {
            version: 1,
            flags: capable_flags::HMAC_SHA256,
            sender_key: None,
            receiver_key: None,
            data_len: None,
            checksum: None,
        })
    );
    let base = MpCapable {
        version: 1,
        flags: capable_flags::HMAC_SHA256,
        sender_key: None,
        receiver_key: None,
        data_len: None,
        checksum: None,
    };
    let syn_ack = MpCapable { sender_key: Some(KEY_B), ..base };
    let bytes = round_trip(MptcpOption::Capable(syn_ack));
    assert_eq!(bytes, [30, 12, 0x01, 0x01, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
    let ack = MpCapable { sender_key: Some(KEY_A), receiver_key: Some(KEY_B), ..base };
    assert_eq!(round_trip(MptcpOption::Capable(ack)).len(), 20);
    let data = MpCapable { data_len: Some(1400), ..ack };
    assert_eq!(round_trip(MptcpOption::Capable(data)).len(), 22);
    let csum = MpCapable {
        flags: capable_flags::CHECKSUM_REQUIRED | capable_flags::HMAC_SHA256,
        checksum: Some(0xbeef),
        ..data
    };
    let bytes = round_trip(MptcpOption::Capable(csum));
    assert_eq!(bytes.len(), 24);
    assert_eq!(&bytes[20..], [0x05, 0x78, 0xbe, 0xef]);
    // v0 SYN carries the sender's key.
    let v0 = MpCapable { version: 0, sender_key: Some(KEY_A), ..base };
    assert_eq!(round_trip(MptcpOption::Capable(v0))[2], 0x00);
}

#[test]
fn mp_capable_bad_lengths() {
    for len in [5u8, 8, 11, 13, 19, 21, 23, 25] {
        let mut bytes = std::vec![0u8; usize::from(len)];
        bytes[..3].copy_from_slice(&[30, len, 0x01]);
        assert_eq!(parse(&bytes), Err(MptcpError::BadLength { subtype: 0, len }), "len {len}");
    }
}

#[test]
fn mp_join_three_shapes() {
    let syn = [30, 12, 0x11, 2, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7];
    assert_eq!(
        parse(&syn).unwrap(),
        MptcpOption::Join(MpJoin::Syn { backup: true, addr_id: 2, token: 0xdead_beef, nonce: 7 })
    );
    round_trip(MptcpOption::Join(MpJoin::SynAck {
        backup: false,
        addr_id: 3,
        truncated_hmac: 0x0123_4567_89ab_cdef,
        nonce: 0xffff_0000,
    }));
    let mut hmac = [0u8; 20];
    hmac.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let bytes = round_trip(MptcpOption::Join(MpJoin::Ack { hmac }));
    assert_eq!(bytes.len(), 24);
    assert_eq!(bytes[4], 0);
    assert_eq!(
        parse(&[30, 13, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(MptcpError::BadLength { subtype: 1, len: 13 })
    );
}

#[test]
fn dss_every_field_combination() {
    // Data ACK only, 8 bytes: what Linux sends on pure ACKs.
    let ack = [30, 12, 0x20, 0x03, 0, 0, 0, 0, 0, 0, 0x10, 0];
    assert_eq!(
        parse(&ack).unwrap(),
        MptcpOption::Dss(Dss {
            data_fin: false,
            data_ack: Some(DataAck { value: 0x1000, wide: true }),
            mapping: None,
        })
    );
    // Linux data packet: 8-byte ack, 8-byte DSN, subflow seq, length (then two NOPs).
    let data = [30, 26, 0x20, 0x0f, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0x05, 0xa8];
    assert_eq!(
        parse(&data).unwrap(),
        MptcpOption::Dss(Dss {
            data_fin: false,
            data_ack: Some(DataAck { value: 9, wide: true }),
            mapping: Some(DssMapping {
                dsn: 0x1_0000_0005,
                dsn_wide: true,
                subflow_seq: 0,
                data_len: 1448,
                checksum: None,
            }),
        })
    );
    for ack in [None, Some(DataAck { value: 5, wide: false }), Some(DataAck { value: 1 << 40, wide: true })] {
        for mapping in [
            None,
            Some(DssMapping { dsn: 7, dsn_wide: false, subflow_seq: 1, data_len: 10, checksum: None }),
            Some(DssMapping { dsn: 1 << 33, dsn_wide: true, subflow_seq: 1, data_len: 0, checksum: Some(3) }),
        ] {
            for data_fin in [false, true] {
                round_trip(MptcpOption::Dss(Dss { data_fin, data_ack: ack, mapping }));
            }
        }
    }
    // Infinite mapping.
    let infinite = DssMapping { dsn: 1, dsn_wide: false, subflow_seq: 0, data_len: 0, checksum: None };
    assert!(infinite.is_infinite());
    // Mapping flag set but the option too short for it; ack flag with a mapping's length.
    assert_eq!(parse(&[30, 8, 0x20, 0x04, 0, 0, 0, 0]), Err(MptcpError::BadLength { subtype: 2, len: 8 }));
    assert_eq!(
        parse(&[30, 10, 0x20, 0x01, 0, 0, 0, 0, 0, 0]),
        Err(MptcpError::BadLength { subtype: 2, len: 10 })
    );
    // A narrow field cannot carry a 64-bit value.
    let too_big =
        Dss { data_fin: false, data_ack: Some(DataAck { value: 1 << 32, wide: false }), mapping: None };
    assert!(MptcpOption::Dss(too_big).encode(&mut [0; 64]).is_err());
}

#[test]
fn add_addr_v1_v0_echo_port_hmac() {
    let v4: IpAddr = Ipv4Addr::new(198, 51, 100, 2).into();
    let v6: IpAddr = "2001:db8::2".parse::<Ipv6Addr>().unwrap().into();
    let mut lengths = Vec::new();
    for addr in [v4, v6] {
        for port in [None, Some(8080)] {
            for (echo, hmac) in [(false, Some(0xfeed_face_cafe_beef)), (true, None), (false, None)] {
                let option = AddAddr { echo, addr_id: 5, addr, port, hmac };
                lengths.push(round_trip(MptcpOption::AddAddr(option)).len());
                assert_eq!(option.is_v0(), !echo && hmac.is_none());
            }
        }
    }
    assert_eq!(lengths, [16, 8, 8, 18, 10, 10, 28, 20, 20, 30, 22, 22]);
    // RFC 6824 option whose IP version nibble disagrees with its length.
    assert_eq!(parse(&[30, 8, 0x36, 1, 1, 2, 3, 4]), Err(MptcpError::BadLength { subtype: 3, len: 8 }));
    // An echo flag on an HMAC length.
    let mut bad = [0u8; 16];
    bad[..3].copy_from_slice(&[30, 16, 0x31]);
    assert_eq!(parse(&bad), Err(MptcpError::BadLength { subtype: 3, len: 16 }));
}

#[test]
fn remove_prio_fail_fastclose_tcprst_experimental() {
    assert_eq!(
        parse(&[30, 5, 0x40, 3, 4]).unwrap(),
        MptcpOption::RemoveAddr(RemoveAddr { ids: bytes(&[3, 4]) })
    );
    assert_eq!(parse(&[30, 3, 0x40]), Err(MptcpError::BadLength { subtype: 4, len: 3 }));
    assert_eq!(parse(&[30, 3, 0x51]).unwrap(), MptcpOption::Prio(MpPrio { backup: true, addr_id: None }));
    round_trip(MptcpOption::Prio(MpPrio { backup: false, addr_id: Some(9) }));
    assert_eq!(
        round_trip(MptcpOption::Fail(MpFail { dsn: 0x1234 })),
        [30, 12, 0x60, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34]
    );
    round_trip(MptcpOption::FastClose(MpFastClose { receiver_key: KEY_B }));
    assert_eq!(
        round_trip(MptcpOption::TcpRst(MpTcpRst { flags: tcprst_flags::TRANSIENT, reason: 6 })),
        [30, 4, 0x81, 6]
    );
    round_trip(MptcpOption::Experimental(MpExperimental { nibble: 3, payload: bytes(&[1, 2, 3]) }));
    assert_eq!(
        parse(&[30, 11, 0x60, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(MptcpError::BadLength { subtype: 6, len: 11 })
    );
    assert_eq!(parse(&[30, 5, 0x80, 0, 0]), Err(MptcpError::BadLength { subtype: 8, len: 5 }));
}

#[test]
fn framing_errors() {
    assert_eq!(parse(&[]), Err(MptcpError::NotMptcp));
    assert_eq!(parse(&[29, 4, 0x00, 0x01]), Err(MptcpError::NotMptcp));
    assert_eq!(parse(&[30, 5, 0x00, 0x01]), Err(MptcpError::NotMptcp));
    assert_eq!(parse(&[30, 2]), Err(MptcpError::TooShort { len: 2 }));
    assert_eq!(parse(&[30, 3, 0x90]), Err(MptcpError::UnknownSubtype { subtype: 9 }));
    assert_eq!(subtype_of(&[30, 4, 0x21, 0]), Some(2));
    assert_eq!(subtype_of(&[30, 2]), None);
}

/// The lengths RFC 8684 (and RFC 6824 for version 0) allow for an option whose subtype byte has
/// low nibble `low` and whose next byte is `flags`, written out from the RFCs' option diagrams
/// independently of the parser.
fn rfc_lengths(subtype: u8, low: u8, flags: u8) -> Vec<u8> {
    match subtype {
        // low nibble = version
        0 if low == 0 => std::vec![12, 20],
        0 => std::vec![4, 12, 20, 22, 24],
        1 => std::vec![12, 16, 24],
        2 => {
            let ack = match flags & 0x03 {
                0x01 => 4,
                0x03 => 8,
                _ => 0,
            };
            let dsn = if flags & 0x08 != 0 { 8 } else { 4 };
            if flags & 0x04 == 0 {
                std::vec![4 + ack]
            } else {
                // DSN, subflow sequence number, data-level length, optional checksum.
                std::vec![4 + ack + dsn + 6, 4 + ack + dsn + 8]
            }
        }
        // Low nibble: three reserved bits and E in v1 (an echo has no HMAC; the receiver ignores
        // the reserved bits, so 4 and 6 are HMAC-carrying v1 options too), the IP version in v0
        // (no HMAC, lengths 8/10 for IPv4 and 20/22 for IPv6).
        3 => match low {
            1 => std::vec![8, 10, 20, 22],
            4 => std::vec![8, 10, 16, 18, 28, 30],
            6 => std::vec![16, 18, 20, 22, 28, 30],
            _ => std::vec![16, 18, 28, 30],
        },
        4 => (4..=40).collect(),
        5 => std::vec![3, 4],
        6 | 7 => std::vec![12],
        8 => std::vec![4],
        15 => (3..=40).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn every_length_the_rfcs_do_not_allow_is_rejected_per_subtype() {
    let mut checked = 0;
    for subtype in [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 15] {
        for low in [0u8, 1, 4, 6] {
            let flag_values: Vec<u8> = if subtype == 2 { (0..=0x1f).collect() } else { std::vec![0] };
            for flags in flag_values {
                let allowed = rfc_lengths(subtype, low, flags);
                for len in 3u8..=40 {
                    let mut option = std::vec![0u8; usize::from(len)];
                    option[..3].copy_from_slice(&[30, len, subtype << 4 | low]);
                    if len > 3 {
                        option[3] = flags;
                    }
                    let parsed = parse(&option);
                    if allowed.contains(&len) {
                        assert!(
                            parsed.is_ok(),
                            "subtype {subtype} low {low} flags {flags:#x} len {len}: {parsed:?}"
                        );
                    } else {
                        assert_eq!(
                            parsed,
                            Err(MptcpError::BadLength { subtype, len }),
                            "subtype {subtype} low {low} flags {flags:#x} len {len}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, (9 * 4 + 4 * 32) * 38);
}

#[test]
fn truncated_options_are_errors_for_every_shape() {
    let v4: IpAddr = Ipv4Addr::new(198, 51, 100, 2).into();
    let shapes = [
        MptcpOption::Capable(MpCapable {
            version: 1,
            flags: 0x81,
            sender_key: Some(KEY_A),
            receiver_key: Some(KEY_B),
            data_len: Some(9),
            checksum: Some(1),
        }),
        MptcpOption::Join(MpJoin::Syn { backup: false, addr_id: 1, token: 2, nonce: 3 }),
        MptcpOption::Join(MpJoin::SynAck { backup: true, addr_id: 1, truncated_hmac: 2, nonce: 3 }),
        MptcpOption::Join(MpJoin::Ack { hmac: [7; 20] }),
        MptcpOption::Dss(Dss {
            data_fin: true,
            data_ack: Some(DataAck { value: 1, wide: true }),
            mapping: Some(DssMapping {
                dsn: 2,
                dsn_wide: true,
                subflow_seq: 3,
                data_len: 4,
                checksum: Some(5),
            }),
        }),
        MptcpOption::AddAddr(AddAddr { echo: false, addr_id: 1, addr: v4, port: Some(80), hmac: Some(6) }),
        MptcpOption::Fail(MpFail { dsn: 1 }),
        MptcpOption::FastClose(MpFastClose { receiver_key: KEY_A }),
        MptcpOption::TcpRst(MpTcpRst { flags: 1, reason: 2 }),
    ];
    for option in shapes {
        let bytes = round_trip(option);
        for cut in 0..bytes.len() {
            // Cut short, its length byte now overruns the slice: not a whole option.
            let truncated = &bytes[..cut];
            assert_eq!(parse(truncated), Err(MptcpError::NotMptcp), "{option:?} cut to {cut}");
            // In an option area the walker reports the overrun and never hands the option out.
            let walked: Vec<_> = crate::options::OptionWalker::new(truncated).collect();
            if cut >= 2 {
                assert_eq!(
                    walked,
                    [Err(crate::options::OptionError::Overrun { offset: 0, kind: 30, len: bytes[1] })],
                    "{option:?} cut to {cut}"
                );
            }
            // With the length byte rewritten to match, the shorter option is a length error (or,
            // for a length another shape has, that shape: never a panic or an over-read).
            if cut >= 3 {
                let mut shortened = truncated.to_vec();
                shortened[1] = cut as u8;
                if let Ok(other) = parse(&shortened) {
                    assert_ne!(other, option);
                    assert_eq!(other.encoded_len().unwrap(), cut);
                }
            }
        }
    }
}

fn arb_option() -> impl Strategy<Value = MptcpOption> {
    let key = any::<u64>();
    let capable = (0u8..16, any::<u8>(), 0usize..5, key, key, any::<u16>(), any::<u16>()).prop_map(
        |(version, flags, step, k1, k2, len, csum)| {
            // Version 0 has only the SYN/SYN-ACK (one key) and ACK (two keys) shapes.
            let step = if version == 0 { step.clamp(1, 2) } else { step };
            MptcpOption::Capable(MpCapable {
                version,
                flags,
                sender_key: (step >= 1).then_some(k1),
                receiver_key: (step >= 2).then_some(k2),
                data_len: (step >= 3).then_some(len),
                checksum: (step >= 4).then_some(csum),
            })
        },
    );
    let join = prop_oneof![
        (any::<bool>(), any::<u8>(), any::<u32>(), any::<u32>())
            .prop_map(|(backup, addr_id, token, nonce)| MpJoin::Syn { backup, addr_id, token, nonce }),
        (any::<bool>(), any::<u8>(), any::<u64>(), any::<u32>()).prop_map(
            |(backup, addr_id, truncated_hmac, nonce)| MpJoin::SynAck {
                backup,
                addr_id,
                truncated_hmac,
                nonce
            }
        ),
        any::<[u8; 20]>().prop_map(|hmac| MpJoin::Ack { hmac }),
    ]
    .prop_map(MptcpOption::Join);
    let data_ack = proptest::option::of(prop_oneof![
        any::<u32>().prop_map(|v| DataAck { value: v.into(), wide: false }),
        any::<u64>().prop_map(|v| DataAck { value: v, wide: true }),
    ]);
    let mapping = proptest::option::of(
        (any::<bool>(), any::<u64>(), any::<u32>(), any::<u16>(), proptest::option::of(any::<u16>()))
            .prop_map(|(dsn_wide, dsn, subflow_seq, data_len, checksum)| DssMapping {
                dsn: if dsn_wide { dsn } else { dsn & 0xffff_ffff },
                dsn_wide,
                subflow_seq,
                data_len,
                checksum,
            }),
    );
    let dss = (any::<bool>(), data_ack, mapping)
        .prop_map(|(data_fin, data_ack, mapping)| MptcpOption::Dss(Dss { data_fin, data_ack, mapping }));
    let addr =
        prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from),];
    let add_addr = (0usize..3, any::<u8>(), addr, proptest::option::of(any::<u16>()), any::<u64>()).prop_map(
        |(shape, addr_id, addr, port, hmac)| {
            MptcpOption::AddAddr(AddAddr {
                echo: shape == 1,
                addr_id,
                addr,
                port,
                hmac: (shape == 0).then_some(hmac),
            })
        },
    );
    prop_oneof![
        capable,
        join,
        dss,
        add_addr,
        (any::<bool>(), proptest::option::of(any::<u8>()))
            .prop_map(|(backup, addr_id)| MptcpOption::Prio(MpPrio { backup, addr_id })),
        any::<u64>().prop_map(|dsn| MptcpOption::Fail(MpFail { dsn })),
        any::<u64>().prop_map(|receiver_key| MptcpOption::FastClose(MpFastClose { receiver_key })),
        (0u8..16, any::<u8>()).prop_map(|(flags, reason)| MptcpOption::TcpRst(MpTcpRst { flags, reason })),
    ]
}

proptest! {
    #[test]
    fn every_encodable_option_parses_back(option in arb_option()) {
        let mut buf = [0u8; 64];
        let len = option.encode(&mut buf).unwrap();
        prop_assert_eq!(parse(&buf[..len]), Ok(option));
    }

    #[test]
    fn list_options_round_trip(ids in proptest::collection::vec(any::<u8>(), 1..37), payload in proptest::collection::vec(any::<u8>(), 0..37)) {
        let mut buf = [0u8; 64];
        let len = MptcpOption::RemoveAddr(RemoveAddr { ids: bytes(&ids) }).encode(&mut buf).unwrap();
        prop_assert_eq!(parse(&buf[..len]), Ok(MptcpOption::RemoveAddr(RemoveAddr { ids: bytes(&ids) })));
        let len = MptcpOption::Experimental(MpExperimental { nibble: 2, payload: bytes(&payload) }).encode(&mut buf).unwrap();
        prop_assert_eq!(parse(&buf[..len]), Ok(MptcpOption::Experimental(MpExperimental { nibble: 2, payload: bytes(&payload) })));
    }

    #[test]
    fn any_bytes_parse_without_panic_and_reencode_identically(body in proptest::collection::vec(any::<u8>(), 1..38)) {
        let mut option = std::vec![30u8, (body.len() + 2) as u8];
        option.extend_from_slice(&body);
        if let Ok(parsed) = parse(&option) {
            // Whatever parses re-encodes to a form that parses to the same value.
            let mut buf = [0u8; 64];
            let len = parsed.encode(&mut buf).unwrap();
            prop_assert_eq!(len, option.len());
            prop_assert_eq!(parse(&buf[..len]), Ok(parsed));
        }
    }
}

#[test]
fn each_subtype_parses_on_its_own_and_rejects_the_others() {
    let dss = [30, 12, 0x20, 0x03, 0, 0, 0, 0, 0, 0, 0x10, 0];
    assert_eq!(MptcpOption::parse(&dss).unwrap(), MptcpOption::Dss(Dss::parse(&dss).unwrap()));
    assert_eq!(MpJoin::parse(&dss), Err(MptcpError::WrongSubtype { expected: 1, found: 2 }));
    assert_eq!(Dss::parse(&dss[..4]), Err(MptcpError::NotMptcp));
}

#[test]
fn a_4_byte_sequence_number_takes_the_high_bits_seen_before() {
    assert_eq!(widen_sequence(0x2000, 0x3_0000_1000), 0x3_0000_2000);
    // A little behind, as a retransmission or a reordered ACK is.
    assert_eq!(widen_sequence(0x0800, 0x3_0000_1000), 0x3_0000_0800);
    // Nothing seen yet: the high bits are 0, whatever the low ones.
    assert_eq!(widen_sequence(0xffff_fff0, 0), 0xffff_fff0);
    assert_eq!(widen_sequence(0x10, 0), 0x10);
}

#[test]
fn a_4_byte_sequence_number_wraps_into_the_next_high_word() {
    // Forward past 2^32: the next high word.
    assert_eq!(widen_sequence(0x10, 0x1_ffff_fff0), 0x2_0000_0010);
    // From just before a wrap already passed: the previous high word.
    assert_eq!(widen_sequence(0xffff_fff0, 0x2_0000_0010), 0x1_ffff_fff0);
    // Close to 0 there is no earlier high word to go back to.
    assert_eq!(widen_sequence(0xffff_fff0, 0x10), 0xffff_fff0);
    // Nor a later one at the top of the space.
    assert_eq!(widen_sequence(0x10, u64::MAX - 0xf), 0xffff_ffff_0000_0010);
}

#[test]
fn the_first_4_byte_value_widens_against_the_start_of_its_space() {
    // Nothing of the space seen yet: its start (IDSN + 1) gives the high bits.
    let start = 0x1234_5678_ffff_ff00;
    assert_eq!(widening_base(0, start), start);
    assert_eq!(widen_sequence(0xffff_ff10, widening_base(0, start)), 0x1234_5678_ffff_ff10);
    assert_eq!(widen_sequence(0x10, widening_base(0, start)), 0x1234_5679_0000_0010);
    // Once a value is known it is the reference.
    assert_eq!(widening_base(0x1234_5679_0000_0010, start), 0x1234_5679_0000_0010);
}

#[test]
fn wide_sequence_numbers_are_taken_as_they_are() {
    let ack = DataAck { value: 0x7_0000_0001, wide: true };
    assert_eq!(ack.wide_value(0x1_0000_0000), 0x7_0000_0001);
    let ack = DataAck { value: 0x5, wide: false };
    assert_eq!(ack.wide_value(0x1_ffff_fff0), 0x2_0000_0005);
    let mapping =
        DssMapping { dsn: 0x9_0000_0000, dsn_wide: true, subflow_seq: 1, data_len: 10, checksum: None };
    assert_eq!(mapping.wide_dsn(0), 0x9_0000_0000);
    let mapping = DssMapping { dsn: 0xffff_ff00, dsn_wide: false, ..mapping };
    assert_eq!(mapping.wide_dsn(0x4_0000_0100), 0x3_ffff_ff00);
}

proptest! {
    #[test]
    fn widening_keeps_the_low_bits_and_stays_near(low: u32, previous in 1u64 << 33..u64::MAX >> 1) {
        let wide = widen_sequence(low, previous);
        prop_assert_eq!(wide as u32, low);
        prop_assert!(wide.abs_diff(previous) <= 1 << 31);
    }
}
