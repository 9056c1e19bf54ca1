//! A backend change sent to every peer's sync daemon, signed, retried, each peer's ack awaited.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::net::UdpSocket;

use super::{
    COMMAND_SUFFIX, SyncError, SyncKey, sync_name,
    wire::{BackendAction, Entry, Signer, Verifier, first_sequence},
};
use crate::{cc::monotonic_ns, lb::SyncConfig};

/// Sends to a peer that has not answered: at most this many times...
const ATTEMPTS: u32 = 3;
/// ...within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// What one peer answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerAck {
    pub peer: SocketAddr,
    /// The name it signs with, once it answered.
    pub name: Option<String>,
    pub outcome: AckOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "error")]
pub enum AckOutcome {
    Applied,
    Failed(String),
    NoAnswer,
}

/// Sends `action` on `backend` to every peer of `config` and collects their acks.
pub async fn broadcast(
    config: &SyncConfig,
    action: BackendAction,
    backend: &str,
) -> Result<Vec<PeerAck>, SyncError> {
    let key = SyncKey::load(&config.key_file)?;
    // A name of its own: its sequence numbers must not move the window of the daemon's.
    let name = format!("{}{COMMAND_SUFFIX}", sync_name(config)?);
    let bind = SocketAddr::new(config.listen.ip(), 0);
    let socket = UdpSocket::bind(bind).await.map_err(|source| SyncError::Socket { address: bind, source })?;
    let mut signer = Signer::new(key.clone(), &name, first_sequence());
    let mut verifier = Verifier::new(key);
    // One request id per peer, so an ack is matched whichever address it comes from.
    let base = random_u64();
    let mut acks: Vec<PeerAck> = config
        .peers
        .iter()
        .map(|peer| PeerAck { peer: *peer, name: None, outcome: AckOutcome::NoAnswer })
        .collect();
    let start = Instant::now();
    let mut buffer = vec![0u8; 2048];
    for attempt in 0..ATTEMPTS {
        for (index, ack) in acks.iter().enumerate() {
            if ack.outcome != AckOutcome::NoAnswer {
                continue;
            }
            let request = base.wrapping_add(index as u64);
            let datagram = signer.seal(&[Entry::Command { action, backend: backend.to_owned(), request }]);
            if let Err(error) = socket.send_to(&datagram, ack.peer).await {
                log::debug!("sending to {}: {error}", ack.peer);
            }
        }
        let until = start + ANSWER_WITHIN * (attempt + 1) / ATTEMPTS;
        while acks.iter().any(|ack| ack.outcome == AckOutcome::NoAnswer) {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(received) = tokio::time::timeout(left, socket.recv_from(&mut buffer)).await else {
                break;
            };
            let Ok((len, from)) = received else {
                // An ICMP error of a send (a peer without a daemon): the others may answer.
                continue;
            };
            let Ok(datagram) = verifier.open(&buffer[..len]) else {
                log::debug!("a datagram from {from} did not verify");
                continue;
            };
            for entry in datagram.entries {
                let Entry::CommandAck { request, error } = entry else {
                    continue;
                };
                let index = request.wrapping_sub(base);
                if let Some(ack) = usize::try_from(index).ok().and_then(|index| acks.get_mut(index)) {
                    ack.name = Some(datagram.sender.clone());
                    ack.outcome = error.map_or(AckOutcome::Applied, AckOutcome::Failed);
                }
            }
        }
    }
    Ok(acks)
}

/// Request ids: random, so that two `lb backend` runs never share one.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let written = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if written != bytes.len() as isize {
        // Not seeded yet (early boot): the clock keeps ids distinct between runs.
        return monotonic_ns() ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_ne_bytes(bytes)
}
