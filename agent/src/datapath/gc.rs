//! The conntrack collector. `skiff_ct_gc` walks both conntrack tables inside the kernel
//! (`bpf_for_each_map_elem`), removing expired entries and counting what is left; the agent
//! runs it now and then through `BPF_PROG_TEST_RUN`, from the program's pin, so any process
//! that can open the pins (the node agent, the standalone loader) can collect.
//!
//! Why in the kernel: the established table never evicts, so its expired entries must be
//! removed by someone. From user space that is a syscall per entry to read it and another to
//! delete it (aya offers no batch operations, and the workspace allows no unsafe code to make
//! the raw calls), and between the read and the delete the datapath could have reused the key
//! for a new flow, which the delete would then take. Inside the kernel the check and the
//! removal are a few instructions apart, and a walk costs nanoseconds per entry.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use skiff_common::{GcStats, program_names};

use super::{Error, PinnedMaps, Result};

/// The default time between collector runs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A frame for the test run: the collector reads no packet, but the kernel wants at least an
/// Ethernet header's worth of data for a tc program.
const FRAME: [u8; 64] = [0; 64];

/// One run's findings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcRun {
    pub stats: GcStats,
    /// Wall time of the run, as the agent saw it (the syscall included).
    pub took: Duration,
}

/// Runs the pinned collector program of a datapath instance.
#[derive(Debug)]
pub struct Collector {
    program: SchedClassifier,
}

impl Collector {
    /// Opens the collector pinned at `pin` (`PinLayout::collector`).
    pub fn open(pin: &Path) -> Result<Self> {
        let program = SchedClassifier::from_pin(pin).map_err(|source| Error::Program {
            name: program_names::CT_GC,
            source,
        })?;
        Ok(Collector { program })
    }

    /// Runs the collector once and reads what it found.
    pub fn run(&self, maps: &PinnedMaps) -> Result<GcRun> {
        let started = Instant::now();
        let opts = TestRunOptions {
            data_in: Some(&FRAME),
            ..TestRunOptions::default()
        };
        self.program
            .test_run(opts)
            .map_err(|source| Error::Program {
                name: program_names::CT_GC,
                source,
            })?;
        let took = started.elapsed();
        Ok(GcRun {
            stats: maps.gc_stats()?,
            took,
        })
    }
}
