//! The DSS checksum (RFC 8684 section 3.3.1): the 16-bit ones' complement of the ones'
//! complement sum of a pseudo-header (the mapping's 64-bit data sequence number, its subflow
//! sequence number, its data-level length as sent, and 16 zero bits) and the data the mapping
//! covers, the TCP checksum's algorithm. A 4-byte DSN on the wire still enters the sum as its
//! 64-bit value. A wrong checksum is what MP_FAIL answers (3.7).
//!
//! The data may come in pieces (a mapping covers several segments): [`DssChecksum::add`] takes
//! them in order, carrying an odd byte over.

/// A DSS checksum being summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DssChecksum {
    sum: u64,
    /// The first byte of a 16-bit word whose second byte is in the next piece.
    odd: Option<u8>,
}

impl DssChecksum {
    /// The sum of the pseudo-header of a mapping.
    pub fn new(dsn: u64, subflow_seq: u32, data_len: u16) -> Self {
        let mut checksum = Self { sum: 0, odd: None };
        checksum.add(&dsn.to_be_bytes());
        checksum.add(&subflow_seq.to_be_bytes());
        checksum.add(&data_len.to_be_bytes());
        checksum
    }

    /// Adds the next piece of the mapped data.
    pub fn add(&mut self, mut bytes: &[u8]) {
        if let (Some(high), Some((&low, rest))) = (self.odd, bytes.split_first()) {
            self.word(u16::from_be_bytes([high, low]));
            self.odd = None;
            bytes = rest;
        }
        let mut words = bytes.chunks_exact(2);
        for pair in &mut words {
            if let [high, low] = *pair {
                self.word(u16::from_be_bytes([high, low]));
            }
        }
        if let Some(&last) = words.remainder().first() {
            self.odd = Some(last);
        }
    }

    fn word(&mut self, word: u16) {
        // Folded at the end; 2^48 words cannot overflow 64 bits.
        self.sum = self.sum.wrapping_add(u64::from(word));
    }

    /// The checksum as the DSS option carries it.
    pub fn finish(mut self) -> u16 {
        if let Some(high) = self.odd.take() {
            self.word(u16::from_be_bytes([high, 0]));
        }
        let mut sum = self.sum;
        while sum >> 16 != 0 {
            sum = (sum & 0xffff).wrapping_add(sum >> 16);
        }
        !(sum as u16)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use std::vec::Vec;

    use super::*;

    /// RFC 1071's ones' complement sum of the whole message, byte by byte.
    fn reference(dsn: u64, ssn: u32, len: u16, data: &[u8]) -> u16 {
        let mut message = Vec::new();
        message.extend_from_slice(&dsn.to_be_bytes());
        message.extend_from_slice(&ssn.to_be_bytes());
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(&[0, 0]);
        message.extend_from_slice(data);
        if message.len() % 2 == 1 {
            message.push(0);
        }
        let mut sum: u32 = 0;
        for pair in message.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn pieces_of_any_size_sum_as_one() {
        let data: Vec<u8> = (0..3001u32).map(|i| (i * 7 + 3) as u8).collect();
        let (dsn, ssn, len) = (0x0123_4567_89ab_cdef, 1, 3001);
        let whole = {
            let mut c = DssChecksum::new(dsn, ssn, len);
            c.add(&data);
            c.finish()
        };
        assert_eq!(whole, reference(dsn, ssn, len, &data));
        for split in [1, 999, 1000, 1001, 3000] {
            let mut c = DssChecksum::new(dsn, ssn, len);
            let (a, b) = data.split_at(split);
            let (b, c2) = b.split_at(b.len() / 2);
            c.add(a);
            c.add(b);
            c.add(c2);
            assert_eq!(c.finish(), whole, "split at {split}");
        }
    }

    #[test]
    fn a_message_with_its_checksum_sums_to_zero() {
        // The receiver's check: the sum over pseudo-header, checksum and data is all ones.
        let data = [0x5a; 1000];
        let checksum = {
            let mut c = DssChecksum::new(7, 1, 1000);
            c.add(&data);
            c.finish()
        };
        let mut c = DssChecksum::new(7, 1, 1000);
        c.add(&checksum.to_be_bytes());
        c.add(&data);
        assert_eq!(c.finish(), 0);
    }
}
