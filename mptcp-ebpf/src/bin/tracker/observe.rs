//! What both attach points do with a TCP packet: walk its options with the shared codec, count,
//! and track its subflow and connection.

use mptcp_common::{
    maps::{Direction, PacketCounters},
    mptcp::subtype_of,
    options::{OptionWalker, kind},
};

use mptcp_ebpf::packet::{Packet, load_options, no_mptcp_option_in_place, parse_tcp};

use crate::{
    maps::{counters, scratch},
    state::{MAX_PARSED_MPTCP_OPTIONS, PacketState, start},
    track::{Held, Verdict, held_in, mptcp_track_finish, mptcp_track_option},
};

#[inline(always)]
pub fn observe(packet: &impl Packet, direction: Direction) -> Verdict {
    let (Some(scratch), Some(counters)) = (scratch(), counters(direction)) else {
        return Verdict::Pass;
    };
    let state = &mut scratch.packet;
    if parse_tcp(packet, &mut state.segment).is_none() {
        return Verdict::Pass;
    }
    let segment = &state.segment;
    counters.tcp_packets += 1;
    if segment.bad_header {
        counters.malformed += 1;
    }
    let found = if no_mptcp_option_in_place(packet, segment) {
        0
    } else {
        let Some(area) = load_options(packet, segment, &mut scratch.options) else {
            // The header claims options the packet does not hold.
            counters.tcp_without_mptcp += 1;
            counters.malformed += 1;
            return Verdict::Pass;
        };
        frame_mptcp_options(area, state, counters)
    };
    start(state, direction);
    if found == 0 {
        counters.tcp_without_mptcp += 1;
        // Most segments without an MPTCP option are plain TCP: their lookups miss and no
        // tracker call follows.
        return match held_in(&state.key, state.segment.flags) {
            Held::Nowhere => Verdict::Pass,
            held => Verdict::from_code(mptcp_track_finish(held as u32)),
        };
    }
    // Any further options first; the first one comes last and finishes the packet.
    for index in 1..MAX_PARSED_MPTCP_OPTIONS {
        if index >= found {
            break;
        }
        if Verdict::from_code(mptcp_track_option(index as u32, 0)) == Verdict::Drop {
            return Verdict::Drop;
        }
    }
    Verdict::from_code(mptcp_track_option(0, 1))
}

/// Walks `area`, counting each MPTCP option under its subtype and noting where the first
/// [`MAX_PARSED_MPTCP_OPTIONS`] are; returns how many were noted. The walk only frames options:
/// each is parsed and handled afterwards by a global function the verifier checks once.
#[inline(always)]
fn frame_mptcp_options(area: &[u8], state: &mut PacketState, counters: &mut PacketCounters) -> usize {
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
                if let (Some(offset), Some(length)) =
                    (state.option_offsets.get_mut(found), state.option_lengths.get_mut(found))
                {
                    *offset = raw.offset;
                    *length = raw.bytes.len() as u8;
                    found += 1;
                }
            }
            Some(Ok(_)) => {}
        }
    }
    found
}
