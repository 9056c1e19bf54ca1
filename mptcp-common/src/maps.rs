//! Layouts of the maps the eBPF programs and the agent share.
//!
//! Every struct here is `#[repr(C)]` with its size checked at compile time; the programs declare
//! BTF maps of these types, so `bpftool map dump` prints their field names.

use crate::mptcp::subtype;

/// Name of the per-CPU array of [`PacketCounters`], indexed by [`Direction`].
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Names of every map the programs declare; the agent pins each one under its name.
pub const MAP_NAMES: [&str; 1] = [COUNTERS_MAP];

/// Which hook saw a packet: the index into [`COUNTERS_MAP`].
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// XDP, packets arriving on the interface.
    Ingress = 0,
    /// TC (tcx) egress, packets leaving the interface.
    Egress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Declares a `#[repr(C)]` struct of `u64` counters together with its field names, a value array
/// in field order and a field-wise sum, so the three can never disagree.
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident, $names:ident { $($(#[$fmeta:meta])* $field:ident,)+ }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: u64,)+
        }

        /// Field names in declaration order, as `bpftool` prints them.
        pub const $names: [&str; [$(stringify!($field)),+].len()] = [$(stringify!($field)),+];

        const _: () = assert!(size_of::<$name>() == $names.len() * 8);

        impl $name {
            /// Values in the order of the field names.
            pub fn values(&self) -> [u64; $names.len()] {
                [$(self.$field),+]
            }

            /// Adds `other` field by field: sums the per-CPU copies of a counter set.
            pub fn accumulate(&mut self, other: &Self) {
                $(self.$field = self.$field.wrapping_add(other.$field);)+
            }
        }
    };
}

counters! {
    /// Packet and option counters of one direction on one CPU.
    ///
    /// A packet counts once in `tcp_packets`; each MPTCP option it carries counts once under its
    /// subtype, so a packet with DSS and ADD_ADDR moves both counters.
    pub struct PacketCounters, PACKET_COUNTER_NAMES {
        /// Every TCP segment over IPv4 or IPv6.
        tcp_packets,
        /// TCP segments without any MPTCP option.
        tcp_without_mptcp,
        mp_capable,
        mp_join,
        dss,
        add_addr,
        remove_addr,
        mp_prio,
        mp_fail,
        mp_fastclose,
        mp_tcprst,
        mp_experimental,
        /// MPTCP options with a subtype RFC 8684 leaves unassigned.
        mp_unknown,
        /// Packets whose option area or an MPTCP option in it is malformed; they pass untouched.
        malformed,
    }
}

impl PacketCounters {
    /// The counter of MPTCP options of `subtype`.
    #[inline(always)]
    pub fn subtype_counter(&mut self, subtype: u8) -> &mut u64 {
        match subtype {
            subtype::MP_CAPABLE => &mut self.mp_capable,
            subtype::MP_JOIN => &mut self.mp_join,
            subtype::DSS => &mut self.dss,
            subtype::ADD_ADDR => &mut self.add_addr,
            subtype::REMOVE_ADDR => &mut self.remove_addr,
            subtype::MP_PRIO => &mut self.mp_prio,
            subtype::MP_FAIL => &mut self.mp_fail,
            subtype::MP_FASTCLOSE => &mut self.mp_fastclose,
            subtype::MP_TCPRST => &mut self.mp_tcprst,
            subtype::MP_EXPERIMENTAL => &mut self.mp_experimental,
            _ => &mut self.mp_unknown,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers, no padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::PacketCounters {}
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_declaration_order() {
        let mut counters = PacketCounters::default();
        for (i, subtype) in (0u8..16).enumerate() {
            *counters.subtype_counter(subtype) += i as u64 + 1;
        }
        let values = counters.values();
        assert_eq!(values[PACKET_COUNTER_NAMES.iter().position(|n| *n == "dss").unwrap()], 3);
        assert_eq!(values[PACKET_COUNTER_NAMES.iter().position(|n| *n == "mp_experimental").unwrap()], 16);
        // Subtypes 9..=14 are unassigned.
        assert_eq!(counters.mp_unknown, (10..=15).sum::<u64>());
        let mut sum = counters;
        sum.accumulate(&counters);
        assert_eq!(sum.values().map(|v| v / 2), counters.values());
    }
}
