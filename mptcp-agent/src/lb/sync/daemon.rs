//! `mptcp-agent lb sync`: reads what the balancer learned from its sync ring, sends it to every
//! peer in batches, stores what the peers send, applies their backend commands, and writes its
//! state every second. A foreground daemon; SIGTERM or SIGINT stops it.
//!
//! Four tasks on one thread: the ring reader, the sender, the receiver and the state writer.
//! Each counts its run-time failures and goes on; none can stop another.

use std::{
    cell::RefCell,
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use mptcp_common::lb::{
    LB_SYNC_EVENTS_MAP, LbFlow, LbSyncEvent, TokenLearn, backend_state, flow_kind, sync_kind,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use super::{
    PeerState, SyncCounters, SyncError, SyncKey, SyncState, sync_name,
    wire::{BackendAction, Batcher, Entry, Signer, Summary, Verifier, first_sequence},
};
use crate::{
    bpf::Instance,
    cc::monotonic_ns,
    lb::{LbConfig, LbMaps, SteeringError, name_of},
    report::Chain,
    stop::{pause, stopped},
};

/// Entries between the ring reader and the sender; past this they are dropped and counted.
const QUEUE: usize = 16384;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const STATE_EVERY: Duration = Duration::from_secs(1);
/// A peer is up while heard from within this.
const PEER_UP_WITHIN: Duration = Duration::from_secs(3);
/// Backend names are read again at most this often when an entry names one not known.
const NAMES_REFRESH: Duration = Duration::from_millis(100);
/// Command results kept to answer a retried command alike without applying it twice.
const RECENT_COMMANDS: usize = 256;
/// Received datagrams are read into this: anything longer than a datagram shows as oversized.
const RECEIVE_BUFFER: usize = 2048;

/// What the tasks share.
struct Shared {
    name: String,
    listen: SocketAddr,
    peers: Vec<SocketAddr>,
    socket: UdpSocket,
    signer: RefCell<Signer>,
    counters: RefCell<SyncCounters>,
    heard: RefCell<BTreeMap<String, Heard>>,
}

struct Heard {
    address: SocketAddr,
    at: Instant,
    summary: Summary,
}

impl Shared {
    fn count(&self, update: impl FnOnce(&mut SyncCounters)) {
        update(&mut self.counters.borrow_mut());
    }

    /// Seals `entries` and sends them to `to`, counting what went and what failed.
    async fn send(&self, entries: &[Entry], to: &[SocketAddr]) {
        let datagram = self.signer.borrow_mut().seal(entries);
        for peer in to {
            match self.socket.send_to(&datagram, peer).await {
                Ok(_) => self.count(|c| {
                    c.datagrams_sent += 1;
                    c.entries_sent += entries.len() as u64;
                }),
                Err(error) => {
                    self.count(|c| c.send_errors += 1);
                    log::debug!("sending to {peer}: {error}");
                }
            }
        }
    }

    fn state(&self, running: bool) -> SyncState {
        let heard = self.heard.borrow();
        let view = |name: Option<&String>, address: SocketAddr, heard: Option<&Heard>| PeerState {
            name: name.cloned(),
            address,
            up: heard.is_some_and(|h| h.at.elapsed() < PEER_UP_WITHIN),
            ms_since_heard: heard.map(|h| u64::try_from(h.at.elapsed().as_millis()).unwrap_or(u64::MAX)),
            counters: heard.map(|h| h.summary.clone()),
        };
        let mut peers: Vec<PeerState> = self
            .peers
            .iter()
            .map(|address| {
                let found = heard.iter().find(|(_, h)| h.address == *address);
                view(found.map(|(name, _)| name), *address, found.map(|(_, h)| h))
            })
            .collect();
        for (name, h) in heard.iter().filter(|(_, h)| !self.peers.contains(&h.address)) {
            peers.push(view(Some(name), h.address, Some(h)));
        }
        SyncState {
            pid: std::process::id(),
            running,
            updated_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            name: self.name.clone(),
            listen: self.listen,
            counters: self.counters.borrow().clone(),
            peers,
        }
    }
}

/// Backend slots and names, read again when an entry names what is not known.
struct BackendNames {
    by_slot: BTreeMap<u32, String>,
    read_at: Option<Instant>,
}

impl BackendNames {
    fn new() -> Self {
        Self { by_slot: BTreeMap::new(), read_at: None }
    }

    fn refresh(&mut self, maps: &LbMaps) -> Result<(), SteeringError> {
        self.by_slot = maps
            .backend_slots()?
            .into_iter()
            .filter(|(_, b)| b.state != backend_state::UNUSED)
            .map(|(slot, b)| (slot, name_of(&b)))
            .collect();
        self.read_at = Some(Instant::now());
        Ok(())
    }

    /// Reads the table again if it is older than [`NAMES_REFRESH`].
    fn refresh_if_stale(&mut self, maps: &LbMaps) -> Result<(), SteeringError> {
        if self.read_at.is_none_or(|at| at.elapsed() >= NAMES_REFRESH) {
            self.refresh(maps)?;
        }
        Ok(())
    }

    fn name(&mut self, slot: u32, maps: &LbMaps) -> Result<Option<String>, SteeringError> {
        if !self.by_slot.contains_key(&slot) {
            self.refresh_if_stale(maps)?;
        }
        Ok(self.by_slot.get(&slot).cloned())
    }

    fn slot(&mut self, name: &str, maps: &LbMaps) -> Result<Option<u32>, SteeringError> {
        let find = |names: &Self| names.by_slot.iter().find(|(_, n)| *n == name).map(|(slot, _)| *slot);
        if find(self).is_none() {
            self.refresh_if_stale(maps)?;
        }
        Ok(find(self))
    }
}

/// A whole burst of peers' datagrams may arrive while the daemon applies the last one: the
/// receive buffer asks for 4 MiB (the kernel caps it at `net.core.rmem_max`) rather than the
/// default 208 KiB, since a datagram dropped here is a token a peer never gets.
const SOCKET_BUFFER: usize = 4 << 20;

/// The sync socket, bound to `listen`. socket2: std cannot size a socket's receive buffer.
fn sync_socket(listen: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.bind(&listen.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(instance: &Instance, config: &LbConfig, state_dir: PathBuf) -> Result<(), SyncError> {
    // The maps' handles and the shared state stay on this thread.
    tokio::task::LocalSet::new().run_until(run_local(instance, config, state_dir)).await
}

async fn run_local(instance: &Instance, config: &LbConfig, state_dir: PathBuf) -> Result<(), SyncError> {
    let sync = config.sync.as_ref().ok_or(SyncError::NotConfigured)?;
    let key = SyncKey::load(&sync.key_file)?;
    let name = sync_name(sync)?;
    // One handle per task: each reads or writes the maps on its own.
    let ring_maps = LbMaps::pinned(instance)?;
    let receive_maps = LbMaps::pinned(instance)?;
    let heartbeat_maps = LbMaps::pinned(instance)?;
    let ring = RingBuf::try_from(instance.open_map(LB_SYNC_EVENTS_MAP)?)
        .map_err(|source| SteeringError::Map { name: LB_SYNC_EVENTS_MAP, source })?;
    // SAFETY: the descriptor belongs to `ring`, which the AsyncFd owns until it is dropped.
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|error| SyncError::Ring(error.into_parts().1))?;
    let socket =
        sync_socket(sync.listen).map_err(|source| SyncError::Socket { address: sync.listen, source })?;
    // Everything is open: from here on the daemon, which parses what the network sends, needs
    // its map descriptors only.
    let kept = crate::bpf::drop_to_runtime_privileges(false, false)?;
    log::info!("{}: capabilities kept: {kept:?}", instance.name);
    let shared = Rc::new(Shared {
        name: name.clone(),
        listen: sync.listen,
        peers: sync.peers.clone(),
        socket,
        signer: RefCell::new(Signer::new(key.clone(), &name, first_sequence())),
        counters: RefCell::new(SyncCounters::default()),
        heard: RefCell::new(BTreeMap::new()),
    });
    let mut terminate = signal(SignalKind::terminate()).map_err(SyncError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SyncError::Signal)?;
    // Once at start: who waits for the daemon waits for this file.
    shared.state(true).write(&state_dir)?;
    log::info!("{}: syncing as {name} on {} with {} peer(s)", instance.name, sync.listen, sync.peers.len());

    let (stop, stop_rx) = watch::channel(false);
    let (queue, queued) = mpsc::channel(QUEUE);
    let tasks = [
        (
            "ring reader",
            tokio::task::spawn_local(read_ring(ring, ring_maps, queue, shared.clone(), stop_rx.clone())),
        ),
        ("sender", tokio::task::spawn_local(send(queued, heartbeat_maps, shared.clone(), stop_rx.clone()))),
        (
            "receiver",
            tokio::task::spawn_local(receive(
                receive_maps,
                Verifier::new(key),
                shared.clone(),
                stop_rx.clone(),
            )),
        ),
        ("state writer", tokio::task::spawn_local(write_state(state_dir.clone(), shared.clone(), stop_rx))),
    ];
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    stop.send_replace(true);
    for (part, task) in tasks {
        if let Err(error) = task.await {
            log::error!("{}: the {part} task: {}", instance.name, Chain(&error));
        }
    }
    shared.state(false).write(&state_dir)?;
    log::info!("{}: sync stopped", instance.name);
    Ok(())
}

/// The ring reader: each event becomes an entry naming its backend, queued for the sender.
async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    maps: LbMaps,
    queue: mpsc::Sender<Entry>,
    shared: Rc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut names = BackendNames::new();
    loop {
        tokio::select! {
            guard = ring.readable_mut() => match guard {
                Ok(mut guard) => {
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        let Some(event) = crate::bpf::maps::ring_record::<LbSyncEvent>(&item) else {
                            shared.count(|c| c.invalid_entries += 1);
                            continue;
                        };
                        let backend = match names.name(event.backend, &maps) {
                            Ok(Some(name)) => name,
                            Ok(None) => {
                                shared.count(|c| c.unknown_backends += 1);
                                continue;
                            }
                            Err(error) => {
                                shared.count(|c| c.map_errors += 1);
                                log::debug!("reading backend names: {}", Chain(&error));
                                continue;
                            }
                        };
                        let entry = match event.kind {
                            sync_kind::TOKEN => Entry::Token { token: event.token, backend, learned_ns: event.learned_ns },
                            sync_kind::FLOW => Entry::Flow { flow: (&event.flow).into(), kind: event.flow_kind, backend },
                            _ => {
                                shared.count(|c| c.invalid_entries += 1);
                                continue;
                            }
                        };
                        if queue.try_send(entry).is_err() {
                            shared.count(|c| c.queue_drops += 1);
                        }
                    }
                    guard.clear_ready();
                }
                Err(error) => {
                    shared.count(|c| c.map_errors += 1);
                    log::warn!("polling the sync ring: {error}");
                    if !pause(&mut stop, Duration::from_millis(100)).await {
                        return;
                    }
                }
            },
            _ = stopped(&mut stop) => return,
        }
    }
}

/// The sender: batches what the queue holds (a datagram when full, or when the queue is empty:
/// the ring reader queues all it drained at once, so entries batch under load and go out at
/// once when alone), and a heartbeat every second.
async fn send(
    mut queued: mpsc::Receiver<Entry>,
    maps: LbMaps,
    shared: Rc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batcher = Batcher::new(shared.signer.borrow().entry_budget());
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let entry = tokio::select! {
            entry = queued.recv() => match entry {
                Some(entry) => entry,
                None => return,
            },
            _ = heartbeat.tick() => Entry::Heartbeat(summary(&maps, &shared)),
            _ = stopped(&mut stop) => {
                if let Some(batch) = batcher.take() {
                    shared.send(&batch, &shared.peers).await;
                }
                return;
            }
        };
        match batcher.push(entry) {
            Ok(Some(full)) => shared.send(&full, &shared.peers).await,
            Ok(None) => {}
            // Ring entries are small: only a bug makes one larger than a datagram.
            Err(_) => shared.count(|c| c.invalid_entries += 1),
        }
        if queued.is_empty()
            && let Some(batch) = batcher.take()
        {
            shared.send(&batch, &shared.peers).await;
        }
    }
}

/// This instance's counters for a heartbeat.
fn summary(maps: &LbMaps, shared: &Shared) -> Summary {
    let counters = match maps.counters() {
        Ok(counters) => counters,
        Err(error) => {
            shared.count(|c| c.map_errors += 1);
            log::debug!("reading the balancer's counters: {}", Chain(&error));
            Default::default()
        }
    };
    Summary {
        tokens_learned: counters.tokens_learned,
        joins_steered_by_token: counters.joins_steered_by_token,
        joins_unknown_token: counters.joins_unknown_token,
        joins_deferred: counters.joins_deferred,
        token_collisions: counters.token_collisions,
        join_address_joins: counters.join_address_joins,
        sync: shared.counters.borrow().clone(),
    }
}

/// What the receiver stores and applies.
struct Applier {
    maps: LbMaps,
    names: BackendNames,
    /// (sender, request) -> result of commands applied lately.
    recent: VecDeque<((String, u64), Option<String>)>,
}

/// The receiver: verifies each datagram and applies its entries.
async fn receive(maps: LbMaps, mut verifier: Verifier, shared: Rc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut applier = Applier { maps, names: BackendNames::new(), recent: VecDeque::new() };
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    loop {
        let received = tokio::select! {
            received = shared.socket.recv_from(&mut buffer) => received,
            _ = stopped(&mut stop) => return,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors of earlier sends (a peer not listening) show up here.
                shared.count(|c| c.receive_errors += 1);
                log::debug!("receiving: {error}");
                continue;
            }
        };
        let datagram = match verifier.open(&buffer[..len]) {
            Ok(datagram) => datagram,
            Err(rejection) => {
                shared.count(|c| c.rejected(rejection));
                log::debug!("datagram from {from} refused: {rejection}");
                continue;
            }
        };
        shared.count(|c| {
            c.datagrams_received += 1;
            c.entries_received += datagram.entries.len() as u64;
        });
        for entry in datagram.entries {
            if let Some(ack) = applier.apply(entry, &datagram.sender, from, &shared) {
                shared.send(&[ack], &[from]).await;
            }
        }
    }
}

impl Applier {
    /// Applies one entry; returns the ack to send back for a command.
    fn apply(&mut self, entry: Entry, sender: &str, from: SocketAddr, shared: &Shared) -> Option<Entry> {
        match entry {
            Entry::Token { token, backend, .. } => {
                let slot = self.slot(&backend, shared)?;
                match self.maps.store_synced_token(token, slot, monotonic_ns()) {
                    Ok(outcome) => {
                        let late = outcome != TokenLearn::Refresh && self.maps.unknown_since(token).is_some();
                        shared.count(|c| {
                            match outcome {
                                TokenLearn::Store => c.tokens_stored += 1,
                                TokenLearn::Refresh => c.tokens_refreshed += 1,
                                TokenLearn::Replace => c.tokens_replaced += 1,
                                TokenLearn::Collision => c.collisions += 1,
                            }
                            if outcome != TokenLearn::Collision {
                                c.entries_applied += 1;
                            }
                            c.late += u64::from(late);
                        });
                    }
                    Err(error) => self.map_failed(shared, &error),
                }
                None
            }
            Entry::Flow { flow, kind, backend } => {
                if !matches!(flow.family, 4 | 6) || kind > flow_kind::JOIN {
                    shared.count(|c| c.invalid_entries += 1);
                    return None;
                }
                let slot = self.slot(&backend, shared)?;
                // The token of an initial subflow comes in an entry of its own.
                let entry = LbFlow {
                    backend: slot,
                    kind,
                    token_learned: u32::from(kind == flow_kind::INITIAL),
                    _pad: 0,
                    packets: 0,
                };
                match self.maps.store_synced_flow(&(&flow).into(), &entry) {
                    Ok(true) => shared.count(|c| {
                        c.flows_stored += 1;
                        c.entries_applied += 1;
                    }),
                    Ok(false) => shared.count(|c| c.flows_known += 1),
                    Err(error) => self.map_failed(shared, &error),
                }
                None
            }
            Entry::Command { action, backend, request } => {
                let id = (sender.to_owned(), request);
                if let Some((_, result)) = self.recent.iter().find(|(recent, _)| *recent == id) {
                    // A retry whose ack was lost: answered alike, not applied twice.
                    return Some(Entry::ack(request, result.clone()));
                }
                let state = match action {
                    BackendAction::Drain => backend_state::DRAINING,
                    BackendAction::Activate => backend_state::ACTIVE,
                    BackendAction::Remove => backend_state::UNUSED,
                };
                let result =
                    self.maps.set_backend_state(&backend, state).err().map(|error| Chain(&error).to_string());
                if let Err(error) = self.names.refresh(&self.maps) {
                    self.map_failed(shared, &error);
                }
                match &result {
                    None => {
                        log::info!("{action:?} {backend}: applied for {sender} ({from})");
                        shared.count(|c| {
                            c.commands_applied += 1;
                            c.entries_applied += 1;
                        });
                    }
                    Some(error) => {
                        log::warn!("{action:?} {backend} for {sender} ({from}): {error}");
                        shared.count(|c| c.commands_failed += 1);
                    }
                }
                if self.recent.len() >= RECENT_COMMANDS {
                    self.recent.pop_front();
                }
                self.recent.push_back((id, result.clone()));
                Some(Entry::ack(request, result))
            }
            // Acks answer `lb backend` commands, which read them themselves.
            Entry::CommandAck { .. } => None,
            Entry::Heartbeat(summary) => {
                let heard = Heard { address: from, at: Instant::now(), summary };
                shared.heard.borrow_mut().insert(sender.to_owned(), heard);
                None
            }
        }
    }

    fn slot(&mut self, backend: &str, shared: &Shared) -> Option<u32> {
        match self.names.slot(backend, &self.maps) {
            Ok(Some(slot)) => Some(slot),
            Ok(None) => {
                shared.count(|c| c.unknown_backends += 1);
                None
            }
            Err(error) => {
                self.map_failed(shared, &error);
                None
            }
        }
    }

    fn map_failed(&self, shared: &Shared, error: &SteeringError) {
        shared.count(|c| c.map_errors += 1);
        log::debug!("{}", Chain(error));
    }
}

/// Rewrites the state file every second (a small file on /run: written in place, not on the
/// blocking pool).
async fn write_state(dir: PathBuf, shared: Rc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(STATE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u64;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        if let Err(error) = shared.state(true).write(&dir) {
            failures += 1;
            // The first failure and then one in a hundred: a full disk does not flood the log.
            if failures % 100 == 1 {
                log::warn!("{} ({failures} failure(s))", Chain(&error));
            }
        }
    }
}
