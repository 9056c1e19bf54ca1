//! Offline analysis of capture files: reading them, decoding every MPTCP option with the
//! shared codec, and replaying them through the tracker's programs.

pub mod capture_file;
pub mod decode;
pub mod follow;
pub mod replay;
