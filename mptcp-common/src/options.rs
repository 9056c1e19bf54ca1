//! Bounded TCP option walk.
//!
//! [`OptionWalker`] takes one option per step and never reads past the slice it is given, so the
//! eBPF programs drive it from a loop with a constant trip count ([`MAX_OPTIONS`]) and the agent
//! uses it as an ordinary iterator.

use crate::wire::{EncodeError, Reader, Writer};

/// Largest TCP option area: a data offset of 15 words minus the 20-byte fixed header.
pub const TCP_OPTION_SPACE: usize = 40;

/// Most options one option area can hold (one-byte NOPs only); bounds every walk.
pub const MAX_OPTIONS: usize = TCP_OPTION_SPACE;

/// TCP option kinds the walker decodes (IANA "TCP Option Kind Numbers").
pub mod kind {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMPS: u8 = 8;
    pub const MPTCP: u8 = 30;
}

/// A malformed option area. Offsets are from the start of the option area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionError {
    /// The last byte is an option kind that needs a length byte.
    MissingLength { offset: u8, kind: u8 },
    /// A length byte below 2 (it counts the kind and length bytes themselves).
    LengthTooSmall { offset: u8, kind: u8, len: u8 },
    /// The option runs past the end of the option area.
    Overrun { offset: u8, kind: u8, len: u8 },
    /// A fixed-size option (MSS, window scale, SACK-permitted, timestamps, SACK) with a length its
    /// definition does not allow.
    WrongLength { offset: u8, kind: u8, len: u8 },
}

impl core::error::Error for OptionError {}

impl core::fmt::Display for OptionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::MissingLength { offset, kind } => {
                write!(f, "option kind {kind} at offset {offset} has no length byte")
            }
            Self::LengthTooSmall { offset, kind, len } => {
                write!(f, "option kind {kind} at offset {offset} has length {len} < 2")
            }
            Self::Overrun { offset, kind, len } => {
                write!(f, "option kind {kind} at offset {offset} with length {len} overruns the option area")
            }
            Self::WrongLength { offset, kind, len } => {
                write!(f, "option kind {kind} at offset {offset} cannot have length {len}")
            }
        }
    }
}

/// One decoded TCP option. End-of-list is not an option: it ends the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    Nop,
    Mss(u16),
    WindowScale(u8),
    SackPermitted,
    /// SACK blocks, 8 bytes each (left edge, right edge); see [`TcpOption::sack_blocks`].
    Sack(&'a [u8]),
    Timestamps {
        value: u32,
        echo: u32,
    },
    /// A whole MPTCP option, kind and length bytes included: the input of
    /// [`crate::mptcp::MptcpOption::parse`].
    Mptcp(&'a [u8]),
    /// Any other kind; `data` excludes the kind and length bytes.
    Unknown {
        kind: u8,
        data: &'a [u8],
    },
}

impl<'a> TcpOption<'a> {
    /// The (left, right) edges of a SACK option's blocks; empty for other options.
    pub fn sack_blocks(&self) -> impl Iterator<Item = (u32, u32)> + 'a {
        let blocks: &'a [u8] = match *self {
            Self::Sack(blocks) => blocks,
            _ => &[],
        };
        blocks.chunks_exact(8).map(|block| {
            let mut r = Reader::new(block);
            (r.be32().unwrap_or(0), r.be32().unwrap_or(0))
        })
    }

    /// Writes the option (kind and length included) at the start of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::new(out);
        match *self {
            Self::Nop => w.u8(kind::NOP)?,
            Self::Mss(mss) => {
                w.put(&[kind::MSS, 4])?;
                w.be16(mss)?;
            }
            Self::WindowScale(shift) => w.put(&[kind::WINDOW_SCALE, 3, shift])?,
            Self::SackPermitted => w.put(&[kind::SACK_PERMITTED, 2])?,
            Self::Sack(blocks) => {
                if blocks.is_empty() || blocks.len() % 8 != 0 || blocks.len() > 32 {
                    return Err(EncodeError::Invalid("SACK needs 1 to 4 blocks of 8 bytes"));
                }
                w.put(&[kind::SACK, length_byte(blocks.len())?])?;
                w.put(blocks)?;
            }
            Self::Timestamps { value, echo } => {
                w.put(&[kind::TIMESTAMPS, 10])?;
                w.be32(value)?;
                w.be32(echo)?;
            }
            Self::Mptcp(option) => {
                if option.first() != Some(&kind::MPTCP)
                    || option.get(1).map(|&l| usize::from(l)) != Some(option.len())
                {
                    return Err(EncodeError::Invalid(
                        "an MPTCP option must start with kind 30 and its own length",
                    ));
                }
                w.put(option)?;
            }
            Self::Unknown { kind, data } => {
                if kind == kind::EOL || kind == kind::NOP {
                    return Err(EncodeError::Invalid("EOL and NOP carry no data"));
                }
                w.put(&[kind, length_byte(data.len())?])?;
                w.put(data)?;
            }
        }
        Ok(w.len())
    }
}

/// The length byte of an option carrying `data_len` bytes after kind and length.
fn length_byte(data_len: usize) -> Result<u8, EncodeError> {
    data_len
        .checked_add(2)
        .and_then(|len| u8::try_from(len).ok())
        .ok_or(EncodeError::Invalid("option longer than 255 bytes"))
}

/// One option as framed on the wire, not yet decoded: what the walk itself needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOption<'a> {
    pub kind: u8,
    /// Offset of the kind byte in the option area.
    pub offset: u8,
    /// The whole option: the kind byte alone for NOP, kind and length bytes included otherwise.
    pub bytes: &'a [u8],
}

impl<'a> RawOption<'a> {
    /// Decodes the option's value, checking the lengths of fixed-size kinds.
    pub fn decode(&self) -> Result<TcpOption<'a>, OptionError> {
        let len = u8::try_from(self.bytes.len()).unwrap_or(u8::MAX);
        let mut body = Reader::new(self.bytes.get(2..).unwrap_or(&[]));
        let decoded = match (self.kind, len) {
            (kind::NOP, _) => Some(TcpOption::Nop),
            (kind::MSS, 4) => body.be16().map(TcpOption::Mss),
            (kind::WINDOW_SCALE, 3) => body.u8().map(TcpOption::WindowScale),
            (kind::SACK_PERMITTED, 2) => Some(TcpOption::SackPermitted),
            (kind::SACK, 10 | 18 | 26 | 34) => Some(TcpOption::Sack(body.rest())),
            (kind::TIMESTAMPS, 10) => {
                body.be32().zip(body.be32()).map(|(value, echo)| TcpOption::Timestamps { value, echo })
            }
            (kind::MSS | kind::WINDOW_SCALE | kind::SACK_PERMITTED | kind::SACK, _)
            | (kind::TIMESTAMPS, _) => None,
            (kind::MPTCP, _) => Some(TcpOption::Mptcp(self.bytes)),
            (kind, _) => Some(TcpOption::Unknown { kind, data: body.rest() }),
        };
        decoded.ok_or(OptionError::WrongLength { offset: self.offset, kind: self.kind, len })
    }
}

/// Steps through a TCP option area one option at a time.
///
/// After end-of-list, the end of the area or a framing error, every further step returns `None`:
/// a malformed area yields exactly one error and nothing after it.
#[derive(Debug, Clone)]
pub struct OptionWalker<'a> {
    area: &'a [u8],
    offset: usize,
}

impl<'a> OptionWalker<'a> {
    pub fn new(area: &'a [u8]) -> Self {
        Self { area, offset: 0 }
    }

    /// Offset of the next option in the area.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Frames the next option: kind and length only, so a loop over it stays small enough for
    /// the eBPF verifier. [`RawOption::decode`] decodes the value.
    #[inline(always)]
    pub fn next_raw(&mut self) -> Option<Result<RawOption<'a>, OptionError>> {
        let start = self.offset;
        let rest = self.area.get(start..)?;
        let &kind = rest.first()?;
        // Offsets fit in u8 for any real option area; saturate for oversized test inputs.
        let offset = u8::try_from(start).unwrap_or(u8::MAX);
        let len = match kind {
            kind::EOL => {
                self.offset = self.area.len();
                return None;
            }
            kind::NOP => 1,
            _ => {
                let framing_error = match rest.get(1) {
                    None => OptionError::MissingLength { offset, kind },
                    Some(&len) if len < 2 => OptionError::LengthTooSmall { offset, kind, len },
                    Some(&len) if usize::from(len) > rest.len() => OptionError::Overrun { offset, kind, len },
                    Some(&len) => return self.advance(kind, offset, rest, usize::from(len)),
                };
                self.offset = self.area.len();
                return Some(Err(framing_error));
            }
        };
        self.advance(kind, offset, rest, len)
    }

    #[inline(always)]
    fn advance(
        &mut self,
        kind: u8,
        offset: u8,
        rest: &'a [u8],
        len: usize,
    ) -> Option<Result<RawOption<'a>, OptionError>> {
        let bytes = rest.get(..len)?;
        self.offset = self.offset.saturating_add(len);
        Some(Ok(RawOption { kind, offset, bytes }))
    }

    /// Frames and decodes the next option.
    pub fn next_option(&mut self) -> Option<Result<TcpOption<'a>, OptionError>> {
        let decoded = self.next_raw()?.and_then(|raw| raw.decode());
        if decoded.is_err() {
            self.offset = self.area.len();
        }
        Some(decoded)
    }
}

impl<'a> Iterator for OptionWalker<'a> {
    type Item = Result<TcpOption<'a>, OptionError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_option()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn walk(area: &[u8]) -> Vec<Result<TcpOption<'_>, OptionError>> {
        OptionWalker::new(area).collect()
    }

    #[test]
    fn syn_options_of_a_linux_mptcp_client() {
        // MSS 1460, SACK-permitted, timestamps, NOP, window scale 7, MP_CAPABLE v1 SYN.
        let area = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7, 30, 4, 0x01, 0x81];
        assert_eq!(
            walk(&area),
            [
                Ok(TcpOption::Mss(1460)),
                Ok(TcpOption::SackPermitted),
                Ok(TcpOption::Timestamps { value: 1, echo: 0 }),
                Ok(TcpOption::Nop),
                Ok(TcpOption::WindowScale(7)),
                Ok(TcpOption::Mptcp(&[30, 4, 0x01, 0x81])),
            ]
        );
    }

    #[test]
    fn end_of_list_stops_the_walk_and_hides_padding() {
        assert_eq!(walk(&[1, 0, 2, 4, 5, 0xb4]), [Ok(TcpOption::Nop)]);
        assert!(walk(&[]).is_empty());
    }

    #[test]
    fn sack_blocks_are_split() {
        let area = [5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
        let options = walk(&area);
        assert_eq!(options.len(), 1);
        let blocks: Vec<_> = options[0].unwrap().sack_blocks().collect();
        assert_eq!(blocks, [(1, 2), (3, 4)]);
    }

    #[test]
    fn unknown_kinds_are_skipped_by_length() {
        assert_eq!(
            walk(&[99, 4, 0xaa, 0xbb, 1]),
            [Ok(TcpOption::Unknown { kind: 99, data: &[0xaa, 0xbb] }), Ok(TcpOption::Nop)]
        );
    }

    #[test]
    fn malformed_areas_are_typed_errors_and_end_the_walk() {
        assert_eq!(
            walk(&[1, 2]),
            [Ok(TcpOption::Nop), Err(OptionError::MissingLength { offset: 1, kind: 2 })]
        );
        assert_eq!(walk(&[30, 0, 1, 1]), [Err(OptionError::LengthTooSmall { offset: 0, kind: 30, len: 0 })]);
        assert_eq!(walk(&[30, 1, 1, 1]), [Err(OptionError::LengthTooSmall { offset: 0, kind: 30, len: 1 })]);
        assert_eq!(walk(&[8, 10, 0, 0]), [Err(OptionError::Overrun { offset: 0, kind: 8, len: 10 })]);
        assert_eq!(walk(&[2, 3, 5]), [Err(OptionError::WrongLength { offset: 0, kind: 2, len: 3 })]);
        assert_eq!(
            walk(&[5, 9, 0, 0, 0, 0, 0, 0, 0]),
            [Err(OptionError::WrongLength { offset: 0, kind: 5, len: 9 })]
        );
        assert_eq!(
            walk(&[8, 8, 0, 0, 0, 0, 0, 0]),
            [Err(OptionError::WrongLength { offset: 0, kind: 8, len: 8 })]
        );
    }

    fn arb_option() -> impl Strategy<Value = (u8, Vec<u8>)> {
        prop_oneof![
            Just((kind::NOP, Vec::new())),
            any::<u16>().prop_map(|v| (kind::MSS, v.to_be_bytes().to_vec())),
            any::<u8>().prop_map(|v| (kind::WINDOW_SCALE, std::vec![v])),
            Just((kind::SACK_PERMITTED, Vec::new())),
            (1usize..=4)
                .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), 8 * n))
                .prop_map(|b| (kind::SACK, b)),
            proptest::collection::vec(any::<u8>(), 8).prop_map(|b| (kind::TIMESTAMPS, b)),
            ((9u8..=29), proptest::collection::vec(any::<u8>(), 0..10)),
        ]
    }

    fn decode_one(kind_: u8, data: &[u8]) -> TcpOption<'_> {
        match kind_ {
            kind::NOP => TcpOption::Nop,
            kind::MSS => TcpOption::Mss(u16::from_be_bytes([data[0], data[1]])),
            kind::WINDOW_SCALE => TcpOption::WindowScale(data[0]),
            kind::SACK_PERMITTED => TcpOption::SackPermitted,
            kind::SACK => TcpOption::Sack(data),
            kind::TIMESTAMPS => TcpOption::Timestamps {
                value: u32::from_be_bytes(data[..4].try_into().unwrap()),
                echo: u32::from_be_bytes(data[4..].try_into().unwrap()),
            },
            kind_ => TcpOption::Unknown { kind: kind_, data },
        }
    }

    proptest! {
        #[test]
        fn encoded_options_walk_back_to_themselves(options in proptest::collection::vec(arb_option(), 0..8)) {
            let expected: Vec<TcpOption<'_>> = options.iter().map(|(k, d)| decode_one(*k, d)).collect();
            let mut area = [0u8; 512];
            let mut len = 0;
            for option in &expected {
                len += option.encode(&mut area[len..]).unwrap();
            }
            let walked: Vec<_> = OptionWalker::new(&area[..len]).map(Result::unwrap).collect();
            prop_assert_eq!(walked, expected);
        }

        #[test]
        fn any_bytes_walk_without_panic_and_stay_in_bounds(area in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut walker = OptionWalker::new(&area);
            let mut steps = 0;
            while let Some(step) = walker.next_option() {
                steps += 1;
                prop_assert!(walker.offset() <= area.len());
                if step.is_err() {
                    prop_assert!(walker.next_option().is_none());
                    break;
                }
            }
            prop_assert!(steps <= area.len());
        }
    }
}
