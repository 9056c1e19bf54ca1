//! The programs under BPF_PROG_TEST_RUN, loaded once per fuzzing process through the agent's
//! test harness: the tracker's XDP, tcx ingress and tcx egress programs and the balancer's XDP
//! and tcx programs. Every run is checked (test-run fails only where it must, the verdict is
//! one the program may return); after every input the counters (only grow) and the events (the
//! agent's processor judges them); and every [`CHECK_EVERY`] inputs the tables (every
//! connection has both keys and tokens that are the keys' digests, every learned token and flow
//! points at a backend slot in use).

use std::net::SocketAddr;

use aya::maps::MapError;
use mptcp_agent::{
    dataplane::{
        handshake,
        stats::InterfaceCounters,
        tables::TableError,
        testrun::{
            BALANCER_TC, BALANCER_XDP, BalancerHarness, TRACKER_TC_EGRESS, TRACKER_TC_INGRESS, TRACKER_XDP,
            TestHarness, TestRunError, TrackerHarness, action,
        },
    },
    lb::{Steering, SteeringError},
};
use mptcp_common::{
    lb::{LB_COUNTER_NAMES, LB_FLOWS_MAP, LB_TOKENS_MAP, LbCounters, NO_BACKEND},
    maps::{Connection, DataplaneConfig, PACKET_COUNTER_NAMES, admission, connection_flags},
};

use crate::feedback::{self, Slots};

/// The balancer's VIP: the server of the crafted sessions.
const VIP: ([u8; 4], u16) = ([192, 0, 2, 2], 80);
/// Its backend slots 0 and 1 serve the VIP; slot 2 is in use but serves nothing; the rest are
/// unused.
const BACKENDS: [&str; 3] = ["backend-a", "backend-b", "backend-idle"];
const VIP_BACKENDS: [&str; 2] = ["backend-a", "backend-b"];

/// Inputs between two checks of the tables: reading a full table takes two syscalls per
/// entry, so checking after every input would be most of the time spent.
pub const CHECK_EVERY: u64 = 1 << 16;

const ETH_HLEN: usize = 14;

/// Whether test-run refuses `frame` with EINVAL, as Linux 6.18 does: any program, a frame
/// shorter than an Ethernet header; a TC program, an IPv4 or IPv6 frame too short for the
/// fixed IP header (the kernel reads the addresses into the socket it makes for the run).
fn refused(tc: bool, frame: &[u8]) -> bool {
    let Some(ether_type) = frame.get(12..ETH_HLEN) else { return true };
    let network = frame.len() - ETH_HLEN;
    tc && match [ether_type[0], ether_type[1]] {
        [0x08, 0x00] => network < 20,
        [0x86, 0xdd] => network < 40,
        _ => false,
    }
}

/// Something the programs did that they must not.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("loading the programs")]
    Load(#[source] TestRunError),
    #[error("configuring the balancer")]
    Balancer(#[source] SteeringError),
    #[error("test-run of {program} on a {len}-byte frame failed")]
    Run {
        program: &'static str,
        len: usize,
        #[source]
        source: TestRunError,
    },
    #[error("test-run of {program} ran a {len}-byte frame it should refuse")]
    RefusedFrameRan { program: &'static str, len: usize },
    #[error("{program} returned {action:#x}, not one of its verdicts {legal:x?}")]
    Verdict { program: &'static str, action: u32, legal: Vec<u32> },
    #[error("the tracker's {direction} counter {name} went down from {before} to {after}")]
    TrackerCounterFell { direction: &'static str, name: &'static str, before: u64, after: u64 },
    #[error("the balancer's counter {name} went down from {before} to {after}")]
    BalancerCounterFell { name: &'static str, before: u64, after: u64 },
    #[error("CONNECTIONS entry {token:#010x}: {problem} ({connection:?})")]
    Connection { token: u32, problem: &'static str, connection: Box<Connection> },
    #[error("{map} maps {key} to backend slot {slot}, which serves nothing")]
    UnusedBackend { map: &'static str, key: String, slot: u32 },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// A program and the return values it may give.
struct Program {
    name: &'static str,
    tc: bool,
    /// Verdicts given under any admission policy.
    always: &'static [u32],
    /// Verdicts given only under a policy that drops (known-token, verified).
    when_enforcing: &'static [u32],
    /// First feedback slot of its verdicts.
    slot: usize,
}

impl Program {
    fn legal(&self, enforcing: bool) -> impl Iterator<Item = u32> + '_ {
        self.always.iter().chain(enforcing.then_some(self.when_enforcing).unwrap_or_default()).copied()
    }
}

/// Where a frame goes in a session.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// Into the tracker's host, at XDP or at tcx ingress.
    Ingress { tc: bool },
    /// Out of it, at tcx egress.
    Egress,
}

pub struct Programs {
    tracker: TrackerHarness,
    balancer: BalancerHarness,
    programs: [Program; 5],
    tracker_slots: [usize; 2],
    balancer_slot: usize,
    counters: InterfaceCounters,
    lb_counters: LbCounters,
    admission: u32,
    inputs: u64,
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> Violation {
    move |source| Violation::Map { name, source }
}

impl Programs {
    /// Loads both objects (needs root) and configures the balancer.
    pub fn load() -> Result<Self, Violation> {
        let tracker = TestHarness::tracker().map_err(Violation::Load)?;
        let balancer =
            BalancerHarness::new(SocketAddr::from(VIP), Steering::Token, &BACKENDS, &VIP_BACKENDS)
                .map_err(Violation::Load)?;
        let mut slots = Slots::new();
        let mut program = |name, tc, always, when_enforcing| Program {
            name,
            tc,
            always,
            when_enforcing,
            slot: slots.take(always.len() + when_enforcing.len()),
        };
        let programs = [
            program(TRACKER_XDP, false, &[action::XDP_PASS], &[action::XDP_DROP]),
            program(TRACKER_TC_INGRESS, true, &[action::TCX_NEXT], &[action::TC_ACT_SHOT]),
            program(TRACKER_TC_EGRESS, true, &[action::TCX_NEXT], &[]),
            program(BALANCER_XDP, false, &[action::XDP_PASS, action::XDP_DROP, action::XDP_REDIRECT], &[]),
            program(
                BALANCER_TC,
                true,
                &[action::TCX_NEXT, action::TC_ACT_SHOT, action::TC_ACT_REDIRECT],
                &[],
            ),
        ];
        let tracker_slots = [slots.take(PACKET_COUNTER_NAMES.len()), slots.take(PACKET_COUNTER_NAMES.len())];
        let balancer_slot = slots.take(LB_COUNTER_NAMES.len());
        let counters = tracker.counters().map_err(Violation::Load)?;
        let lb_counters = balancer.maps.counters().map_err(Violation::Balancer)?;
        Ok(Self {
            tracker,
            balancer,
            programs,
            tracker_slots,
            balancer_slot,
            counters,
            lb_counters,
            admission: admission::ALLOW,
            inputs: 0,
        })
    }

    /// Sets the tracker's admission policy (one of [`admission`]'s, modulo their number).
    pub fn set_admission(&mut self, policy: u8) -> Result<(), Violation> {
        let policy = u32::from(policy) % 3;
        if policy != self.admission {
            let config = DataplaneConfig { admission: policy, ..DataplaneConfig::default() };
            self.tracker.tables.write_config(&config)?;
            self.admission = policy;
        }
        Ok(())
    }

    /// Runs `frame` through every program.
    pub fn run_everywhere(&mut self, frame: &[u8]) -> Result<(), Violation> {
        for index in 0..self.programs.len() {
            self.run(index, frame)?;
        }
        Ok(())
    }

    /// Runs `frame` through the tracker at `hook` and through the balancer (at XDP, or at tcx
    /// when the ingress is).
    pub fn run_at(&mut self, hook: Hook, frame: &[u8]) -> Result<(), Violation> {
        let (tracker, balancer) = match hook {
            Hook::Ingress { tc: false } => (0, 3),
            Hook::Ingress { tc: true } => (1, 4),
            Hook::Egress => (2, 3),
        };
        self.run(tracker, frame)?;
        self.run(balancer, frame)
    }

    fn run(&mut self, index: usize, frame: &[u8]) -> Result<(), Violation> {
        let program = &self.programs[index];
        let harness = if index < 3 { &mut *self.tracker } else { &mut self.balancer.harness };
        let result = if program.tc {
            harness.run_tc(program.name, frame, 1)
        } else {
            harness.run_xdp(program.name, frame, 1)
        };
        let (name, len) = (program.name, frame.len());
        let refused = refused(program.tc, frame);
        let result = match result {
            Err(source) if refused && is_einval(&source) => return Ok(()),
            Err(source) => return Err(Violation::Run { program: name, len, source }),
            Ok(_) if refused => return Err(Violation::RefusedFrameRan { program: name, len }),
            Ok(result) => result,
        };
        let enforcing = self.admission != admission::ALLOW;
        match program.legal(enforcing).position(|legal| legal == result.action) {
            Some(position) => feedback::report(program.slot + position, 1),
            None => {
                return Err(Violation::Verdict {
                    program: name,
                    action: result.action,
                    legal: program.legal(enforcing).collect(),
                });
            }
        }
        Ok(())
    }

    /// After an input: the events judged, the counters checked and reported, and now and then
    /// the tables checked.
    pub fn finish_input(&mut self) -> Result<(), Violation> {
        self.tracker.process_events();
        let counters = self.tracker.counters().map_err(Violation::Load)?;
        for (direction, slot, before, after) in [
            ("ingress", self.tracker_slots[0], &self.counters.ingress, &counters.ingress),
            ("egress", self.tracker_slots[1], &self.counters.egress, &counters.egress),
        ] {
            grown(&PACKET_COUNTER_NAMES, before.values(), after.values(), slot).map_err(
                |(name, before, after)| Violation::TrackerCounterFell { direction, name, before, after },
            )?;
        }
        self.counters = counters;
        let lb_counters = self.balancer.maps.counters().map_err(Violation::Balancer)?;
        grown(&LB_COUNTER_NAMES, self.lb_counters.values(), lb_counters.values(), self.balancer_slot)
            .map_err(|(name, before, after)| Violation::BalancerCounterFell { name, before, after })?;
        self.lb_counters = lb_counters;
        self.inputs += 1;
        if self.inputs.is_power_of_two() || self.inputs % CHECK_EVERY == 0 {
            self.check_tables()?;
        }
        Ok(())
    }

    /// Every connection has both keys and is filed under its server's token; every token and
    /// flow the balancer holds points at a backend slot in use (or, for a flow, at none).
    pub fn check_tables(&self) -> Result<(), Violation> {
        for (token, connection) in self.tracker.tables.connections()? {
            let problem = connection_problem(token, &connection);
            if let Some(problem) = problem {
                return Err(Violation::Connection { token, problem, connection: Box::new(connection) });
            }
        }
        let used = |slot: u32| (slot as usize) < BACKENDS.len();
        for entry in self.balancer.maps.tokens.iter() {
            let (token, owner) = entry.map_err(map_error(LB_TOKENS_MAP))?;
            if !used(owner.backend) {
                return Err(Violation::UnusedBackend {
                    map: LB_TOKENS_MAP,
                    key: format!("token {token:#010x}"),
                    slot: owner.backend,
                });
            }
        }
        for entry in self.balancer.maps.flows.iter() {
            let (key, flow) = entry.map_err(map_error(LB_FLOWS_MAP))?;
            if !used(flow.backend) && flow.backend != NO_BACKEND {
                return Err(Violation::UnusedBackend {
                    map: LB_FLOWS_MAP,
                    key: format!("{key:?}"),
                    slot: flow.backend,
                });
            }
        }
        Ok(())
    }
}

/// What is wrong with a connection entry, if anything.
fn connection_problem(token: u32, connection: &Connection) -> Option<&'static str> {
    let both = connection_flags::CLIENT_KEY | connection_flags::SERVER_KEY;
    let digest = if connection.version == 0 { handshake::token_v0 } else { handshake::token };
    if connection.flags & both != both {
        Some("a key is missing")
    } else if digest(connection.server_key) != token {
        Some("its table key is not the server key's token")
    } else if connection.server_token != token {
        Some("its server token is not its table key")
    } else if digest(connection.client_key) != connection.client_token {
        Some("its client token is not the client key's token")
    } else if connection.subflows == 0 {
        Some("it counts no subflow")
    } else {
        None
    }
}

/// Reports how much each counter grew; the first that fell, as (name, before, after).
fn grown<const N: usize>(
    names: &[&'static str; N],
    before: [u64; N],
    after: [u64; N],
    slot: usize,
) -> Result<(), (&'static str, u64, u64)> {
    for (offset, (name, (before, after))) in names.iter().zip(before.into_iter().zip(after)).enumerate() {
        if after < before {
            return Err((name, before, after));
        }
        feedback::report(slot + offset, after - before);
    }
    Ok(())
}

/// EINVAL from the kernel, somewhere in the error's chain.
fn is_einval(error: &TestRunError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::InvalidInput;
        }
        source = error.source();
    }
    false
}
