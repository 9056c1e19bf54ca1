//! The programs loaded privately (nothing attached, nothing pinned) and driven frame by frame
//! with BPF_PROG_TEST_RUN: for `replay` and the benchmarks.

pub mod frames;

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use mptcp_common::maps::{COUNTERS_MAP, EVENTS_MAP, Event};

use crate::{
    events::{EventRecord, Processor},
    loader::{self, EBPF_OBJECT, LoaderError, Privilege, TC_PROGRAM, XDP_PROGRAM, check_privileges},
    stats::{self, InterfaceCounters},
    steering::LB_XDP_PROGRAM,
    tables::{TableError, Tables},
};

/// The tracker's XDP program, as the harness names it.
pub const TRACKER_XDP: &str = XDP_PROGRAM;
/// The balancer's XDP program, as the harness names it.
pub const BALANCER_XDP: &str = LB_XDP_PROGRAM;

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("BPF_PROG_TEST_RUN of {program}: {source}")]
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

/// A private copy of the dataplane: programs loaded, maps fresh.
pub struct TestHarness {
    ebpf: Ebpf,
    pub tables: Tables,
    events: RingBuf<MapData>,
}

impl TestHarness {
    pub fn load() -> Result<Self, TestRunError> {
        check_privileges(Privilege::Attach)?;
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(LoaderError::Load)?;
        for name in [XDP_PROGRAM, LB_XDP_PROGRAM, "baseline_pass", "baseline_flow_lookup"] {
            let xdp: &mut Xdp = loader::program(&mut ebpf, name)?;
            xdp.load().map_err(|source| TestRunError::Run { program: "loading an XDP program", source })?;
        }
        let tc: &mut SchedClassifier = loader::program(&mut ebpf, TC_PROGRAM)?;
        tc.load().map_err(|source| TestRunError::Run { program: TC_PROGRAM, source })?;
        let tables = Tables::open(|name| ebpf.take_map(name))?;
        let events = ebpf.take_map(EVENTS_MAP).ok_or(TableError::Missing(EVENTS_MAP))?;
        let events =
            RingBuf::try_from(events).map_err(|source| TableError::Map { name: EVENTS_MAP, source })?;
        Ok(Self { ebpf, tables, events })
    }

    /// Runs the XDP program `name` on `frame`, `repeat` times.
    pub fn run_xdp(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunResult, TestRunError> {
        let program: &mut Xdp = loader::program(&mut self.ebpf, name)?;
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
        let program: &mut Xdp = loader::program(&mut self.ebpf, name)?;
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

    /// Hands every pending event to the processor and returns what it made of them.
    pub fn process_events(&mut self) -> Vec<EventRecord> {
        let mut processor = Processor::new(&mut self.tables);
        let mut records = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the programs write whole Events; the ring item may be unaligned.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
                records.push(processor.process(&event));
            }
        }
        records
    }

    /// A map of the private copy by name (the baselines' maps, say).
    pub fn map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }

    /// Takes a map of the private copy (the balancer's, say).
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// The counters of the private copy, summed over CPUs.
    pub fn counters(&self) -> Result<InterfaceCounters, TestRunError> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or(TableError::Missing(COUNTERS_MAP))?;
        Ok(stats::sum_counters(map).map_err(|source| TableError::Map { name: COUNTERS_MAP, source })?)
    }
}
