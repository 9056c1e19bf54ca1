//! TCP header flags and the handshake rules the programs share: which segment opens a flow and
//! which confirms it.

/// TCP header flags (the low byte of the flags field).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// A SYN without ACK: the segment that opens a subflow (a retransmission opens it again).
#[inline(always)]
pub const fn opens(tcp_flags: u8) -> bool {
    tcp_flags & (flags::SYN | flags::ACK) == flags::SYN
}

/// From the side that sent the SYN: an ACK without SYN or RST, the segment that completes the
/// handshake (conntrack's SYN_RECV -> ESTABLISHED, as the client's direction shows it). The
/// tracker also requires that it saw the server answer; a balancer with direct server return
/// never sees the answer, so to it this segment alone confirms the flow.
#[inline(always)]
pub const fn confirms(tcp_flags: u8) -> bool {
    tcp_flags & (flags::SYN | flags::RST | flags::ACK) == flags::ACK
}

#[cfg(test)]
mod tests {
    use super::{flags::*, *};

    #[test]
    fn only_a_syn_without_ack_opens() {
        assert!(opens(SYN));
        assert!(!opens(SYN | ACK));
        assert!(!opens(ACK));
        assert!(opens(SYN | FIN), "a SYN with other flags still opens");
    }

    #[test]
    fn only_an_ack_without_syn_or_rst_confirms() {
        assert!(confirms(ACK));
        assert!(confirms(ACK | FIN), "data with FIN after the SYN completes the handshake too");
        for not in [SYN, SYN | ACK, RST, RST | ACK, 0, FIN] {
            assert!(!confirms(not), "flags {not:#04x}");
        }
    }
}
