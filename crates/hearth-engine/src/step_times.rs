//! Where the engine's steps spend their time, by phase: summed on the engine thread, read by
//! `hearth bench` (and anyone holding the engine) to tell the model's time from ours.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// A part of an engine step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Choosing what to decode: the batch, and any image evaluated before it.
    Build,
    /// `decode`: the whole pass on the CPU; on a GPU, building and launching the graph.
    Decode,
    /// Waiting for the device to finish the pass (zero on the CPU).
    Wait,
    /// Choosing every sequence's next token from its logits and taking it: detokenizing,
    /// stop strings, and the sink of a sequence that ends.
    Sample,
    /// Handing tokens to their requests (on a GPU while the next pass runs) and ending the
    /// sequences that finished.
    Emit,
}

/// Nanoseconds spent in each phase so far.
#[derive(Debug, Default)]
pub struct StepClock {
    phases: [AtomicU64; 5],
}

impl StepClock {
    pub fn add(&self, phase: Phase, spent: Duration) {
        let nanos = u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX);
        self.phases[phase as usize].fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StepTimes {
        let read = |phase: Phase| self.phases[phase as usize].load(Ordering::Relaxed);
        StepTimes {
            build_ns: read(Phase::Build),
            decode_ns: read(Phase::Decode),
            wait_ns: read(Phase::Wait),
            sample_ns: read(Phase::Sample),
            emit_ns: read(Phase::Emit),
        }
    }
}

/// Totals of `StepClock`, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StepTimes {
    pub build_ns: u64,
    pub decode_ns: u64,
    pub wait_ns: u64,
    pub sample_ns: u64,
    pub emit_ns: u64,
}

impl StepTimes {
    /// What was spent between `earlier` and this.
    pub fn since(&self, earlier: &StepTimes) -> StepTimes {
        StepTimes {
            build_ns: self.build_ns.saturating_sub(earlier.build_ns),
            decode_ns: self.decode_ns.saturating_sub(earlier.decode_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
            sample_ns: self.sample_ns.saturating_sub(earlier.sample_ns),
            emit_ns: self.emit_ns.saturating_sub(earlier.emit_ns),
        }
    }

    pub fn total_ns(&self) -> u64 {
        self.build_ns + self.decode_ns + self.wait_ns + self.sample_ns + self.emit_ns
    }
}
