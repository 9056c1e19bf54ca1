//! The programs loaded privately (nothing attached, nothing pinned) and driven frame by frame
//! with BPF_PROG_TEST_RUN: for `replay` and the benchmarks. A harness holds one object, with
//! only that object's maps; a benchmark may hold two (the tracker or the balancer, and the
//! reference programs).

pub mod corpus;
pub mod frames;

use std::{
    net::{IpAddr, SocketAddr},
    ops::{Deref, DerefMut},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{Program, ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use mptcp_common::maps::{COUNTERS_MAP, EVENTS_MAP, Event};

use crate::{
    bpf::{
        self, BALANCER_OBJECT, LoaderError, Privilege, REFERENCE_OBJECT, TC_INGRESS_PROGRAM, TC_PROGRAM,
        TRACKER_OBJECT, XDP_PROGRAM, check_privileges,
    },
    dataplane::events::{EventRecord, Processor},
    dataplane::stats::{self, InterfaceCounters},
    dataplane::tables::{TableError, Tables},
    lb::{
        BackendConfig, JoinsConfig, LB_TC_PROGRAM, LB_XDP_PROGRAM, LbConfig, LbMaps, Link, Steering,
        SteeringError, VipConfig,
    },
};

/// The reference object's programs (see `bench`): XDP_PASS only, and parse to TCP plus one hash
/// lookup in [`BASELINE_FLOWS_MAP`].
pub const BASELINE_PASS: &str = "baseline_pass";
pub const BASELINE_FLOW_LOOKUP: &str = "baseline_flow_lookup";
pub const BASELINE_FLOWS_MAP: &str = "BASELINE_FLOWS";

/// The tracker's XDP program, as the harness names it.
pub const TRACKER_XDP: &str = XDP_PROGRAM;
/// The tracker's tcx ingress program (its ingress where XDP does not pay), as the harness names it.
pub const TRACKER_TC_INGRESS: &str = TC_INGRESS_PROGRAM;
/// The tracker's tcx egress program, as the harness names it.
pub const TRACKER_TC_EGRESS: &str = TC_PROGRAM;
/// The balancer's XDP program, as the harness names it.
pub const BALANCER_XDP: &str = LB_XDP_PROGRAM;
/// The balancer's tcx ingress program, as the harness names it.
pub const BALANCER_TC: &str = LB_TC_PROGRAM;

/// The program return values the kernel defines (UAPI `xdp_action`, `TC_ACT_*`, tcx) that the
/// programs return.
pub mod action {
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_REDIRECT: u32 = 4;
    pub const TC_ACT_SHOT: u32 = 2;
    pub const TC_ACT_REDIRECT: u32 = 7;
    /// `TCX_NEXT` (-1), as the 32-bit return value test-run reports.
    pub const TCX_NEXT: u32 = u32::MAX;
}

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Balancer(#[from] SteeringError),
    #[error("BPF_PROG_TEST_RUN of {program}")]
    Run {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// What one test run of a program returned.
#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    pub action: u32,
    /// Mean time per run, as the kernel measured it.
    pub duration: Duration,
}

/// A private copy of one object: its maps fresh, each program verified the first time it runs.
/// Verifying a program takes about a second here, and most users (the program fixtures, one
/// harness per case) run only one of an object's programs.
pub struct TestHarness {
    ebpf: Ebpf,
}

impl TestHarness {
    /// The tracker (its ingress XDP and its ingress and egress TC programs), with the agent's
    /// view of its tables and events.
    pub fn tracker() -> Result<TrackerHarness, TestRunError> {
        let mut harness = Self::load(TRACKER_OBJECT)?;
        let tables = Tables::open(|name| harness.ebpf.take_map(name).ok_or(TableError::Missing(name)))?;
        let events = harness.ebpf.take_map(EVENTS_MAP).ok_or(TableError::Missing(EVENTS_MAP))?;
        let events =
            RingBuf::try_from(events).map_err(|source| TableError::Map { name: EVENTS_MAP, source })?;
        Ok(TrackerHarness { harness, tables, events })
    }

    /// The load balancer's XDP and TC programs.
    pub fn balancer() -> Result<Self, TestRunError> {
        Self::load(BALANCER_OBJECT)
    }

    /// The benchmarks' reference programs ([`BASELINE_PASS`], [`BASELINE_FLOW_LOOKUP`]).
    pub fn reference() -> Result<Self, TestRunError> {
        Self::load(REFERENCE_OBJECT)
    }

    /// Loads `object`: its maps are created, its programs not yet verified.
    fn load(object: &[u8]) -> Result<Self, TestRunError> {
        check_privileges(Privilege::Attach)?;
        let ebpf = Ebpf::load(object).map_err(LoaderError::Load)?;
        Ok(Self { ebpf })
    }

    /// The program `name` of type `P`, loaded into the kernel (verified) if it was not yet.
    fn loaded<P>(&mut self, name: &'static str) -> Result<&mut P, TestRunError>
    where
        for<'p> &'p mut P: TryFrom<&'p mut Program, Error = ProgramError>,
    {
        let program = self.ebpf.program_mut(name).ok_or(LoaderError::Program {
            what: format!("finding program {name} in the embedded object"),
            source: ProgramError::UnexpectedProgramType,
        })?;
        if program.fd().is_err() {
            let loaded = match program {
                Program::Xdp(xdp) => xdp.load(),
                Program::SchedClassifier(classifier) => classifier.load(),
                _ => Err(ProgramError::UnexpectedProgramType),
            };
            loaded.map_err(|source| TestRunError::Run { program: name, source })?;
        }
        Ok(bpf::program(&mut self.ebpf, name)?)
    }

    /// Runs the XDP program `name` on `frame`, `repeat` times.
    pub fn run_xdp(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunResult, TestRunError> {
        self.run::<Xdp>(name, frame, repeat)
    }

    /// Runs the TC classifier `name` on `frame` (an Ethernet frame, as tcx sees it), `repeat`
    /// times; the action is the classifier's return value as the kernel passes it back.
    pub fn run_tc(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunResult, TestRunError> {
        self.run::<SchedClassifier>(name, frame, repeat)
    }

    fn run<P>(&mut self, name: &'static str, frame: &[u8], repeat: u32) -> Result<RunResult, TestRunError>
    where
        P: for<'o> TestRun<Opts<'o> = TestRunOptions<'o>, Result = TestRunResult>,
        for<'p> &'p mut P: TryFrom<&'p mut Program, Error = ProgramError>,
    {
        let program: &mut P = self.loaded(name)?;
        let result = program
            .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() })
            .map_err(|source| TestRunError::Run { program: name, source })?;
        Ok(RunResult { action: result.return_value, duration: result.duration })
    }

    /// Runs the XDP program `name` once on `frame`; also returns the frame as the program left
    /// it (rewritten addresses, say).
    pub fn run_xdp_output(
        &mut self,
        name: &'static str,
        frame: &[u8],
    ) -> Result<(RunResult, Vec<u8>), TestRunError> {
        let program: &mut Xdp = self.loaded(name)?;
        // XDP may grow the frame by its headroom; 256 bytes more than the input is ample.
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|source| TestRunError::Run { program: name, source })?;
        out.truncate(result.data_size_out as usize);
        Ok((RunResult { action: result.return_value, duration: result.duration }, out))
    }

    /// A map of the private copy by name (the baselines' maps, say).
    pub fn map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }

    /// Takes a map of the private copy (the balancer's, say).
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }
}

/// The balancer's private copy with its maps filled as `lb start` fills them: one VIP served by
/// some of a list of backends, all on loopback and reached through [`synthetic_link`]. What the
/// benchmarks and the program fixtures run.
pub struct BalancerHarness {
    pub harness: TestHarness,
    pub maps: LbMaps,
}

/// The link of backend slot `slot` in a [`BalancerHarness`]: its MAC ends in the slot.
pub fn synthetic_link(slot: u32) -> Link {
    Link { ifindex: 1, own_mac: [2, 0, 0, 0, 0, 9], mac: [2, 0, 0, 0, 1, slot as u8] }
}

impl BalancerHarness {
    /// `vip` with `steering`, served by those of `backends` (slot = position, address
    /// 203.0.113.(slot + 1)) that `vip_backends` names.
    pub fn new(
        vip: SocketAddr,
        steering: Steering,
        backends: &[&str],
        vip_backends: &[&str],
    ) -> Result<Self, TestRunError> {
        let mut harness = TestHarness::balancer()?;
        let mut maps = LbMaps::open(|name| {
            harness.take_map(name).ok_or_else(|| SteeringError::Config(format!("map {name} missing")))
        })?;
        let config = LbConfig {
            interfaces: Vec::new(),
            xdp_mode: None,
            vips: vec![VipConfig {
                address: vip,
                steering,
                backends: vip_backends.iter().map(|name| (*name).to_owned()).collect(),
            }],
            backends: backends
                .iter()
                .enumerate()
                .map(|(slot, name)| BackendConfig {
                    name: (*name).to_owned(),
                    address: IpAddr::from([203, 0, 113, 1 + slot as u8]),
                    interface: "lo".into(),
                    mac: None,
                    weight: 1,
                    join_addresses: Vec::new(),
                    join_port: None,
                })
                .collect(),
            joins: JoinsConfig::default(),
            sync: None,
        };
        let links: Vec<Link> = (0..backends.len() as u32).map(synthetic_link).collect();
        maps.configure(&config, &links, None)?;
        Ok(Self { harness, maps })
    }
}

/// The tracker's private copy: a [`TestHarness`] with the agent's view of the tracking tables
/// and its event processing.
pub struct TrackerHarness {
    harness: TestHarness,
    pub tables: Tables,
    events: RingBuf<MapData>,
}

impl Deref for TrackerHarness {
    type Target = TestHarness;

    fn deref(&self) -> &TestHarness {
        &self.harness
    }
}

impl DerefMut for TrackerHarness {
    fn deref_mut(&mut self) -> &mut TestHarness {
        &mut self.harness
    }
}

impl TrackerHarness {
    /// Hands every pending event to the processor and returns what it made of them.
    pub fn process_events(&mut self) -> Vec<EventRecord> {
        let mut processor = Processor::new(&mut self.tables);
        let mut records = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(event) = crate::bpf::maps::ring_record::<Event>(&item) {
                records.push(processor.process(&event));
            }
        }
        processor.flush();
        records
    }

    /// The counters of the private copy, summed over CPUs.
    pub fn counters(&self) -> Result<InterfaceCounters, TestRunError> {
        let map = self.harness.ebpf.map(COUNTERS_MAP).ok_or(TableError::Missing(COUNTERS_MAP))?;
        Ok(stats::sum_counters(map).map_err(|source| TableError::Map { name: COUNTERS_MAP, source })?)
    }
}
