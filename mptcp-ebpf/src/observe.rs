//! What both attach points do with a TCP packet: walk its options with the shared codec and count.

use mptcp_common::{
    maps::Direction,
    mptcp::{MptcpError, MptcpOption, subtype_of},
    options::{OptionWalker, kind},
};

use crate::{
    maps::counters,
    packet::{OptionBuffer, Packet, parse_tcp},
};

/// MPTCP options per packet that get fully parsed; Linux sends at most two. Every option still
/// counts under its subtype.
const MAX_PARSED_MPTCP_OPTIONS: usize = 4;

#[inline(always)]
pub fn observe(packet: &impl Packet, direction: Direction) {
    let Some(segment) = parse_tcp(packet) else {
        return;
    };
    let Some(counters) = counters(direction) else {
        return;
    };
    counters.tcp_packets += 1;
    if segment.bad_header {
        counters.malformed += 1;
    }
    let mut buffer = OptionBuffer::new();
    let Some(area) = buffer.load(packet, &segment) else {
        // The header claims options the packet does not hold.
        counters.tcp_without_mptcp += 1;
        counters.malformed += 1;
        return;
    };

    // The walk only frames options and notes where the MPTCP ones are; parsing them happens in a
    // second, shorter loop so the verifier does not explore every parse in every walk step.
    let mut offsets = [0u8; MAX_PARSED_MPTCP_OPTIONS];
    let mut lengths = [0u8; MAX_PARSED_MPTCP_OPTIONS];
    let mut found = 0usize;
    let mut walker = OptionWalker::new(area);
    loop {
        match walker.next_raw() {
            None => break,
            Some(Err(_)) => {
                counters.malformed += 1;
                break;
            }
            Some(Ok(raw)) if raw.kind == kind::MPTCP => {
                if let Some(subtype) = subtype_of(raw.bytes) {
                    *counters.subtype_counter(subtype) += 1;
                }
                if let (Some(offset), Some(length)) = (offsets.get_mut(found), lengths.get_mut(found)) {
                    *offset = raw.offset;
                    *length = raw.bytes.len() as u8;
                    found += 1;
                }
            }
            Some(Ok(_)) => {}
        }
    }
    if found == 0 {
        counters.tcp_without_mptcp += 1;
        return;
    }

    for i in 0..MAX_PARSED_MPTCP_OPTIONS {
        if i >= found {
            break;
        }
        let (Some(&offset), Some(&length)) = (offsets.get(i), lengths.get(i)) else {
            break;
        };
        let start = usize::from(offset);
        // Implied by the range check below, but the verifier does not relate the two bounds.
        if start >= area.len() {
            break;
        }
        let Some(option) = area.get(start..start + usize::from(length)) else {
            break;
        };
        if let Err(error) = MptcpOption::parse(option)
            && !matches!(error, MptcpError::UnknownSubtype { .. })
        {
            counters.malformed += 1;
        }
    }
}
