//! Arbitrary bytes through the option walker and the MPTCP parser: nothing panics or reads out
//! of bounds, and whatever parses re-encodes to bytes that parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_common::{
    mptcp::MptcpOption,
    options::{OptionWalker, TcpOption},
};

/// A parsed MPTCP option re-encodes to the same length and parses back to itself.
fn check_mptcp(bytes: &[u8]) {
    if let Ok(parsed) = MptcpOption::parse(bytes) {
        let mut buf = [0u8; 255];
        let len = parsed.encode(&mut buf).expect("a parsed MPTCP option re-encodes");
        assert_eq!(len, bytes.len(), "{parsed:?} re-encodes to another length");
        assert_eq!(MptcpOption::parse(&buf[..len]), Ok(parsed));
    }
}

/// A decoded TCP option re-encodes and walks back to itself.
fn check_tcp(option: TcpOption<'_>) {
    let mut buf = [0u8; 255];
    let len = option.encode(&mut buf).expect("a decoded TCP option re-encodes");
    let mut walker = OptionWalker::new(&buf[..len]);
    assert_eq!(walker.next_option(), Some(Ok(option)));
}

fuzz_target!(|data: &[u8]| {
    // The input as a TCP option area.
    let mut walker = OptionWalker::new(data);
    let mut steps = 0usize;
    while let Some(step) = walker.next_option() {
        steps += 1;
        assert!(walker.offset() <= data.len());
        match step {
            Ok(TcpOption::Mptcp(bytes)) => check_mptcp(bytes),
            Ok(option) => check_tcp(option),
            Err(_) => {
                assert!(walker.next_option().is_none(), "the walk goes on after an error");
                break;
            }
        }
    }
    assert!(steps <= data.len());

    // The input as one whole MPTCP option, and as the body of one with a consistent header, so
    // every subtype's length rules are reached.
    check_mptcp(data);
    if let Ok(len) = u8::try_from(data.len() + 2) {
        let mut option = Vec::with_capacity(data.len() + 2);
        option.extend_from_slice(&[30, len]);
        option.extend_from_slice(data);
        check_mptcp(&option);
    }
});
