//! One decode at a time across worker processes that would otherwise oversubscribe the CPU.
//!
//! llama.cpp's CPU threads spin at barriers between graph nodes. Two workers decoding at
//! once with threads × busy workers > cores make those spinners wait out whole scheduler
//! time slices: our lifecycle tests, two busy models on 2 cores, took 81 s with 2 threads
//! each and 15 s with 1. The orchestrator hands every worker the same lock file when that
//! could happen; a worker holds an exclusive `flock` on it for the length of each decode, so
//! busy workers take turns at full width. Sampling and I/O stay outside the lock, so one
//! worker samples while another decodes. Uncontended, the lock costs a system call per step.

use std::fs::File;
use std::path::Path;

pub struct CpuGate {
    file: File,
}

/// Held while decoding; the next worker's turn starts when it drops.
pub struct Turn<'g> {
    gate: &'g CpuGate,
}

impl CpuGate {
    pub fn open(path: &Path) -> std::io::Result<CpuGate> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(CpuGate { file })
    }

    /// Wait for this worker's turn. A lock that fails (a filesystem without `flock`) lets
    /// the decode go ahead rather than stall it.
    pub fn turn(&self) -> Option<Turn<'_>> {
        match self.file.lock() {
            Ok(()) => Some(Turn { gate: self }),
            Err(e) => {
                tracing::warn!(%e, "CPU gate lock failed; decoding without it");
                None
            }
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let _ = self.gate.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_exclude_each_other_across_open_files() {
        let path = std::env::temp_dir().join(format!("hearth-gate-{}", std::process::id()));
        let a = CpuGate::open(&path).unwrap();
        let b = CpuGate::open(&path).unwrap();
        let turn = a.turn().expect("locked");
        // Another open file description (as another process has) cannot take it now.
        assert!(b.file.try_lock().is_err());
        drop(turn);
        assert!(b.file.try_lock().is_ok());
        let _ = std::fs::remove_file(path);
    }
}
