//! MPTCP handshake cryptography: tokens, initial data sequence numbers and the HMACs of MP_JOIN
//! and ADD_ADDR, for version 1 (RFC 8684, SHA-256) and version 0 (RFC 6824, SHA-1).
//!
//! Keys, nonces and ports enter every hash as big-endian bytes, as on the wire. The HMAC key is
//! the 16-byte concatenation of two 64-bit keys, exactly as Linux builds it
//! (`net/mptcp/crypto.c: mptcp_crypto_hmac_sha`).

use std::net::IpAddr;

use hmac::{Mac as _, SimpleHmac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The most significant 32 bits of a digest.
fn leading_u32(digest: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&digest[..4]);
    u32::from_be_bytes(bytes)
}

/// The most significant 64 bits of a digest.
fn leading_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// The least significant 64 bits of a digest.
fn trailing_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[digest.len() - 8..]);
    u64::from_be_bytes(bytes)
}

/// HMAC over `message` keyed with `key1 || key2` (8 bytes each, big-endian).
fn hmac<D>(key1: u64, key2: u64, message: &[&[u8]]) -> hmac::digest::Output<D>
where
    D: Digest + hmac::digest::core_api::BlockSizeUser + Clone,
{
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&key1.to_be_bytes());
    key[8..].copy_from_slice(&key2.to_be_bytes());
    // SimpleHmac accepts keys of any length; 16 bytes is below every block size.
    let mut mac = SimpleHmac::<D>::new_from_slice(&key).expect("HMAC takes keys of any length");
    message.iter().for_each(|part| mac.update(part));
    mac.finalize().into_bytes()
}

/// v1 token: the most significant 32 bits of SHA-256(key).
pub fn token(key: u64) -> u32 {
    leading_u32(&Sha256::digest(key.to_be_bytes()))
}

/// v1 initial data sequence number: the least significant 64 bits of SHA-256(key).
pub fn idsn(key: u64) -> u64 {
    trailing_u64(&Sha256::digest(key.to_be_bytes()))
}

/// v0 token: the most significant 32 bits of SHA-1(key).
pub fn token_v0(key: u64) -> u32 {
    leading_u32(&Sha1::digest(key.to_be_bytes()))
}

/// v0 initial data sequence number: the least significant 64 bits of SHA-1(key).
pub fn idsn_v0(key: u64) -> u64 {
    trailing_u64(&Sha1::digest(key.to_be_bytes()))
}

/// Token and IDSN of a key with the hash of MPTCP `version` (SHA-1 for RFC 6824's version 0),
/// as the programs compute them (`mptcp_common::keys::version_key_digest_in`).
/// One digest gives both.
pub fn token_and_idsn(version: u8, key: u64) -> (u32, u64) {
    let bytes = key.to_be_bytes();
    if version == 0 {
        let digest = Sha1::digest(bytes);
        (leading_u32(&digest), trailing_u64(&digest))
    } else {
        let digest = Sha256::digest(bytes);
        (leading_u32(&digest), trailing_u64(&digest))
    }
}

/// SYN-ACK: leftmost 64 bits of HMAC-SHA256(Key_B||Key_A, R_B||R_A); B = responder (sends the
/// SYN-ACK), A = initiator.
pub fn join_synack_hmac(
    responder_key: u64,
    initiator_key: u64,
    responder_nonce: u32,
    initiator_nonce: u32,
) -> u64 {
    leading_u64(&hmac::<Sha256>(
        responder_key,
        initiator_key,
        &[&responder_nonce.to_be_bytes(), &initiator_nonce.to_be_bytes()],
    ))
}

/// Third ACK: leftmost 160 bits of HMAC-SHA256(Key_A||Key_B, R_A||R_B).
pub fn join_ack_hmac(
    initiator_key: u64,
    responder_key: u64,
    initiator_nonce: u32,
    responder_nonce: u32,
) -> [u8; 20] {
    leading_160(&hmac::<Sha256>(
        initiator_key,
        responder_key,
        &[&initiator_nonce.to_be_bytes(), &responder_nonce.to_be_bytes()],
    ))
}

/// v0 SYN-ACK: leftmost 64 bits of HMAC-SHA1(Key_B||Key_A, R_B||R_A).
pub fn join_synack_hmac_v0(
    responder_key: u64,
    initiator_key: u64,
    responder_nonce: u32,
    initiator_nonce: u32,
) -> u64 {
    leading_u64(&hmac::<Sha1>(
        responder_key,
        initiator_key,
        &[&responder_nonce.to_be_bytes(), &initiator_nonce.to_be_bytes()],
    ))
}

/// v0 third ACK: HMAC-SHA1(Key_A||Key_B, R_A||R_B), all 160 bits.
pub fn join_ack_hmac_v0(
    initiator_key: u64,
    responder_key: u64,
    initiator_nonce: u32,
    responder_nonce: u32,
) -> [u8; 20] {
    leading_160(&hmac::<Sha1>(
        initiator_key,
        responder_key,
        &[&initiator_nonce.to_be_bytes(), &responder_nonce.to_be_bytes()],
    ))
}

fn leading_160(digest: &[u8]) -> [u8; 20] {
    let mut out = [0u8; 20];
    out.copy_from_slice(&digest[..20]);
    out
}

/// ADD_ADDR: rightmost 64 bits of HMAC-SHA256(sender_key||receiver_key, id || addr || port(0 if
/// none)). RFC 6824 (v0) ADD_ADDR carries no HMAC.
pub fn add_addr_hmac(
    sender_key: u64,
    receiver_key: u64,
    addr_id: u8,
    addr: IpAddr,
    port: Option<u16>,
) -> u64 {
    let port = port.unwrap_or(0).to_be_bytes();
    let digest = match addr {
        IpAddr::V4(v4) => hmac::<Sha256>(sender_key, receiver_key, &[&[addr_id], &v4.octets(), &port]),
        IpAddr::V6(v6) => hmac::<Sha256>(sender_key, receiver_key, &[&[addr_id], &v6.octets(), &port]),
    };
    trailing_u64(&digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values were computed independently with Python's hashlib and hmac modules, e.g.
    // hmac.new(be64(KEY_B) + be64(KEY_A), be32(NONCE_B) + be32(NONCE_A), hashlib.sha256), and
    // pasted here.
    const KEY_A: u64 = 0x0102_0304_0506_0708;
    const KEY_B: u64 = 0x1112_1314_1516_1718;
    const NONCE_A: u32 = 0x0102_0304;
    const NONCE_B: u32 = 0x0a0b_0c0d;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn tokens_and_idsns() {
        assert_eq!(token(KEY_A), 0x6684_0dda);
        assert_eq!(idsn(KEY_A), 0xf5a1_01d3_d29d_6f72);
        assert_eq!(token(KEY_B), 0xccad_45ac);
        assert_eq!(idsn(KEY_B), 0x535b_eea3_8e08_7c8e);
        assert_eq!(token_v0(KEY_A), 0xdd57_83bc);
        assert_eq!(idsn_v0(KEY_A), 0x3a95_ed6e_4ebb_4ad5);
        assert_eq!(token_v0(KEY_B), 0x3383_d918);
        assert_eq!(idsn_v0(KEY_B), 0x9e1a_e42f_7026_27a9);
        assert_eq!(token_and_idsn(1, KEY_A), (token(KEY_A), idsn(KEY_A)));
        assert_eq!(token_and_idsn(0, KEY_B), (token_v0(KEY_B), idsn_v0(KEY_B)));
    }

    #[test]
    fn join_hmacs() {
        assert_eq!(join_synack_hmac(KEY_B, KEY_A, NONCE_B, NONCE_A), 0xdfd0_1286_7242_55b2);
        assert_eq!(
            hex(&join_ack_hmac(KEY_A, KEY_B, NONCE_A, NONCE_B)),
            "4c24d5137175aeb366a76ac23a3fd5a0648628d2"
        );
        assert_eq!(join_synack_hmac_v0(KEY_B, KEY_A, NONCE_B, NONCE_A), 0x4937_40cd_e7b2_26a2);
        assert_eq!(
            hex(&join_ack_hmac_v0(KEY_A, KEY_B, NONCE_A, NONCE_B)),
            "1a9dc7c6e308b21d68aecf73f323569ac6f9de73"
        );
        // The two directions use the keys and nonces in opposite orders.
        assert_ne!(
            join_synack_hmac(KEY_A, KEY_B, NONCE_A, NONCE_B),
            join_synack_hmac(KEY_B, KEY_A, NONCE_B, NONCE_A)
        );
    }

    #[test]
    fn linux_crypto_self_test_vectors() {
        // net/mptcp/crypto_test.c: key "0b0b0b0b0b0b0b0b" and message "48692054" are ASCII, read
        // as two big-endian keys and two big-endian nonces; the expected digest is the kernel's.
        let be64 = |s: &[u8]| u64::from_be_bytes(s.try_into().unwrap());
        let be32 = |s: &[u8]| u32::from_be_bytes(s.try_into().unwrap());
        for (key, msg, digest) in [
            (
                b"0b0b0b0b0b0b0b0b",
                b"48692054",
                "8385e24fb4235ac37556b6b886db106284a1da671699f46db1f235ec622dcafa",
            ),
            (
                b"aaaaaaaaaaaaaaaa",
                b"dddddddd",
                "2c5e219164ff1dca1c4a92318d847bb6b9d44492984e1eb71aff9022f71046e9",
            ),
            (
                b"0102030405060708",
                b"cdcdcdcd",
                "e73b9ba9969969cefb04aa0d6df18ec2fcc075b6f23b4d8c4da736a5dbbc6e7d",
            ),
        ] {
            let ack = join_ack_hmac(be64(&key[..8]), be64(&key[8..]), be32(&msg[..4]), be32(&msg[4..]));
            assert_eq!(hex(&ack), digest[..40]);
        }
    }

    #[test]
    fn add_addr_hmacs_cover_both_families_and_the_port() {
        let v4: IpAddr = "198.51.100.2".parse().unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(add_addr_hmac(KEY_B, KEY_A, 5, v4, None), 0xea75_9521_ac85_4e41);
        assert_eq!(add_addr_hmac(KEY_B, KEY_A, 5, v4, Some(8080)), 0x01d0_c2ba_6e8e_afaa);
        assert_eq!(add_addr_hmac(KEY_B, KEY_A, 5, v6, None), 0xe395_68bb_6787_690b);
        assert_eq!(add_addr_hmac(KEY_B, KEY_A, 5, v6, Some(443)), 0x49e4_c2e2_5c40_cab5);
        // No port hashes like port 0.
        assert_eq!(add_addr_hmac(KEY_B, KEY_A, 5, v4, Some(0)), add_addr_hmac(KEY_B, KEY_A, 5, v4, None));
    }
}
