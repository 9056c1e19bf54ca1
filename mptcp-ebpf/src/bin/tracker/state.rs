//! The tracker's per-packet working memory: this CPU's slot of [`crate::maps::SCRATCH`], kept off
//! the 512-byte stack.

use mptcp_common::maps::{Direction, FlowKey};
use mptcp_ebpf::packet::{OptionBuffer, TcpSegment};

/// What `observe` and the tracker work on, per packet.
pub struct Scratch {
    pub options: OptionBuffer,
    pub packet: PacketState,
}

/// What the tables need to know about the packet being processed. It lives in per-CPU map
/// memory ([`crate::maps::SCRATCH`], in [`Scratch`]), not on the stack, which must leave room for
/// the option handler and the key digest it calls.
pub struct PacketState {
    pub segment: TcpSegment,
    /// Where the MPTCP options are in the option buffer (see `observe`).
    pub option_offsets: [u8; MAX_PARSED_MPTCP_OPTIONS],
    pub option_lengths: [u8; MAX_PARSED_MPTCP_OPTIONS],
    pub key: FlowKey,
    pub hook: Direction,
    pub from_a: bool,
    pub saw_capable: bool,
    /// The segment's mapping (DSS, or MP_CAPABLE data; length 0: infinite) and MP_FAIL, for the
    /// fallback rule in `finish`.
    pub saw_mapping: bool,
    pub saw_fail: bool,
    pub map_ssn: u32,
    pub map_len: u16,
}

/// MPTCP options per packet that get fully parsed; Linux sends at most three (DSS with
/// ADD_ADDR, MP_PRIO or MP_FAIL; MP_FASTCLOSE with MP_TCPRST). Every option still counts under
/// its subtype.
pub const MAX_PARSED_MPTCP_OPTIONS: usize = 3;

/// Prepares this CPU's [`PacketState`] for the packet whose segment `observe` parsed.
#[inline(always)]
pub fn start(state: &mut PacketState, hook: Direction) {
    let segment = &state.segment;
    let (key, from_a) = FlowKey::new(segment.family, segment.src, segment.sport, segment.dst, segment.dport);
    state.key = key;
    state.from_a = from_a;
    state.hook = hook;
    state.saw_capable = false;
    state.saw_mapping = false;
    state.saw_fail = false;
}
