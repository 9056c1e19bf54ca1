//! Network-namespace labs for the MPTCP dataplane: used by the integration tests in `tests/` and
//! by `cargo xtask demo`. Everything created is removed on drop, panics included, and one lab
//! runs at a time ([`lock::LabLock`]).

pub mod admission;
pub mod agent;
pub mod balancer;
pub mod bench;
pub mod capture;
pub mod congestion;
pub mod craft;
pub mod ecmp;
pub mod failover;
pub mod flood;
pub mod kernel;
pub mod lab;
pub mod lock;
pub mod mptcpd;
pub mod netns;
pub mod prometheus;
pub mod sync;
pub mod synthetic;
pub mod systemd;
pub mod tmux;
pub mod traffic;
pub mod tshark;

/// A scratch directory under the system temp dir, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(netns::unique_name(tag));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
