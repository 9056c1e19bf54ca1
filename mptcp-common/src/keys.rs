//! Token and IDSN of an MPTCP key (RFC 8684 section 3.1): SHA-256 of the 8-byte key, the token
//! being its most significant 32 bits and the IDSN its least significant 64 bits; for version 0
//! (RFC 6824 section 3.1) the same bits of SHA-1 of the key.
//!
//! The agent uses the `sha2` crate; this single-block SHA-256, specialised to an 8-byte message,
//! exists for the eBPF programs, which cannot link that crate but must learn a connection's token
//! the moment its keys cross the wire (a join may follow microseconds later). The unit tests
//! check it against `sha2` on random keys.

/// What a key determines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest {
    pub token: u32,
    pub idsn: u64,
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const H0: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// Token and IDSN of `key` with the hash of MPTCP `version`: SHA-1 for RFC 6824's version 0,
/// SHA-256 for RFC 8684's version 1; the schedule in caller-provided memory (see
/// [`key_digest_in`]).
#[inline(always)]
pub fn version_key_digest_in(version: u8, key: u64, w: &mut [u32; 16]) -> KeyDigest {
    if version == 0 { key_digest_v0_in(key, w) } else { key_digest_in(key, w) }
}

const SHA1_H0: [u32; 5] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476, 0xc3d2_e1f0];

/// The single-block SHA-1 of an 8-byte key: token (most significant 32 bits) and IDSN (least
/// significant 64 bits), RFC 6824 section 3.1.
// Every index is masked to 0..16, so none can panic.
#[allow(clippy::indexing_slicing)]
#[inline(always)]
pub fn key_digest_v0_in(key: u64, w: &mut [u32; 16]) -> KeyDigest {
    *w = [0; 16];
    w[0] = (key >> 32) as u32;
    w[1] = key as u32;
    w[2] = 0x8000_0000;
    w[15] = 64;
    let [mut a, mut b, mut c, mut d, mut e] = SHA1_H0;
    for i in 0..80usize {
        let word = if i < 16 {
            w[i & 15]
        } else {
            let next = (w[i.wrapping_add(13) & 15]
                ^ w[i.wrapping_add(8) & 15]
                ^ w[i.wrapping_add(2) & 15]
                ^ w[i & 15])
                .rotate_left(1);
            w[i & 15] = next;
            next
        };
        let (f, k) = match i {
            0..20 => ((b & c) | (!b & d), 0x5a82_7999),
            20..40 => (b ^ c ^ d, 0x6ed9_eba1),
            40..60 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
            _ => (b ^ c ^ d, 0xca62_c1d6),
        };
        let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(word);
        e = d;
        d = c;
        c = b.rotate_left(30);
        b = a;
        a = t;
    }
    KeyDigest {
        token: SHA1_H0[0].wrapping_add(a),
        idsn: (u64::from(SHA1_H0[3].wrapping_add(d)) << 32) | u64::from(SHA1_H0[4].wrapping_add(e)),
    }
}

/// Token and IDSN of `key` (the key as it appears on the wire, read big-endian).
pub fn key_digest(key: u64) -> KeyDigest {
    key_digest_in(key, &mut [0; 16])
}

/// [`key_digest`] with the message schedule in caller-provided memory, so the eBPF programs can
/// keep it off their 512-byte stack.
// Every index is a loop counter below 64 or masked to 0..16, so none can panic.
#[allow(clippy::indexing_slicing)]
#[inline(always)]
pub fn key_digest_in(key: u64, w: &mut [u32; 16]) -> KeyDigest {
    // The one padded block of an 8-byte message: key, 0x80, zeros, bit length 64.
    *w = [0; 16];
    w[0] = (key >> 32) as u32;
    w[1] = key as u32;
    w[2] = 0x8000_0000;
    w[15] = 64;
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = H0;
    for (i, &k) in K.iter().enumerate() {
        let word = if i < 16 {
            w[i]
        } else {
            let w15 = w[i.wrapping_add(1) & 15];
            let w2 = w[i.wrapping_add(14) & 15];
            let s0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
            let s1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
            let next = w[i & 15].wrapping_add(s0).wrapping_add(w[i.wrapping_add(9) & 15]).wrapping_add(s1);
            w[i & 15] = next;
            next
        };
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(k).wrapping_add(word);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    KeyDigest {
        token: H0[0].wrapping_add(a),
        idsn: (u64::from(H0[6].wrapping_add(g)) << 32) | u64::from(H0[7].wrapping_add(h)),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha1::Sha1;
    use sha2::{Digest as _, Sha256};

    fn reference(key: u64) -> KeyDigest {
        let digest = Sha256::digest(key.to_be_bytes());
        KeyDigest {
            token: u32::from_be_bytes(digest[..4].try_into().unwrap()),
            idsn: u64::from_be_bytes(digest[24..].try_into().unwrap()),
        }
    }

    fn reference_v0(key: u64) -> KeyDigest {
        let digest = Sha1::digest(key.to_be_bytes());
        KeyDigest {
            token: u32::from_be_bytes(digest[..4].try_into().unwrap()),
            idsn: u64::from_be_bytes(digest[12..].try_into().unwrap()),
        }
    }

    #[test]
    fn version_0_is_sha1() {
        let mut w = [0; 16];
        for key in [0, 1, u64::MAX, 0x0102_0304_0506_0708] {
            assert_eq!(version_key_digest_in(0, key, &mut w), reference_v0(key), "key {key:#x}");
            assert_eq!(version_key_digest_in(1, key, &mut w), reference(key), "key {key:#x}");
        }
        // SHA-1 of the 8 bytes 01..08, from Python's hashlib.
        assert_eq!(version_key_digest_in(0, 0x0102_0304_0506_0708, &mut w).token, 0xdd57_83bc);
    }

    #[test]
    fn known_keys() {
        for key in [0, 1, u64::MAX, 0x0102_0304_0506_0708] {
            assert_eq!(key_digest(key), reference(key), "key {key:#x}");
        }
    }

    proptest! {
        #[test]
        fn equals_sha2(key in any::<u64>()) {
            prop_assert_eq!(key_digest(key), reference(key));
        }

        #[test]
        fn version_0_equals_sha1(key in any::<u64>()) {
            prop_assert_eq!(key_digest_v0_in(key, &mut [0; 16]), reference_v0(key));
        }
    }
}
