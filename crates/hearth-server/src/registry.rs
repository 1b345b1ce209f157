//! The crash-safe worker registry: a JSON file in the state directory listing every worker
//! (pid and process start time, its orchestrator's pid and start time, model, socket).
//! A new orchestrator kills the workers a dead one left behind — only when pid *and* start
//! time match, so a reused pid is never killed. A lock file serialises every change between
//! processes sharing the directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub pid: u32,
    /// Kernel start time of the process (clock ticks since boot, /proc/PID/stat field 22).
    pub start_time: u64,
    pub orchestrator_pid: u32,
    pub orchestrator_start_time: u64,
    pub model: String,
    pub socket: PathBuf,
}

pub struct Registry {
    file: PathBuf,
    lock: PathBuf,
}

impl Registry {
    /// The registry in `state_dir` (created with mode 0700 if missing).
    pub fn open(state_dir: &Path) -> std::io::Result<Registry> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)?;
        Ok(Registry {
            file: state_dir.join("workers.json"),
            lock: state_dir.join("workers.lock"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Read, change and write the list under an exclusive lock.
    fn update<T>(&self, change: impl FnOnce(&mut Vec<WorkerRecord>) -> T) -> std::io::Result<T> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)?;
        lock.lock_exclusive()?;
        let mut records: Vec<WorkerRecord> = std::fs::read(&self.file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let result = change(&mut records);
        // Write a new file and rename it over the old: a crash mid-write leaves the old list.
        let tmp = self.file.with_extension("json.tmp");
        let mut out = File::create(&tmp)?;
        out.write_all(&serde_json::to_vec_pretty(&records).unwrap_or_default())?;
        out.sync_all()?;
        std::fs::rename(&tmp, &self.file)?;
        FileExt::unlock(&lock)?;
        Ok(result)
    }

    pub fn add(&self, record: WorkerRecord) {
        if let Err(e) = self.update(|records| {
            records.retain(|r| r.pid != record.pid);
            records.push(record);
        }) {
            tracing::warn!(%e, "could not record a worker in the registry");
        }
    }

    pub fn remove(&self, pid: u32) {
        if let Err(e) = self.update(|records| records.retain(|r| r.pid != pid)) {
            tracing::warn!(%e, "could not update the worker registry");
        }
    }

    /// Kill workers whose orchestrator is gone, remove their sockets and their entries.
    /// Returns the pids killed.
    pub fn sweep_orphans(&self) -> std::io::Result<Vec<u32>> {
        self.update(|records| {
            let mut killed = Vec::new();
            records.retain(|r| {
                if is_running(r.orchestrator_pid, r.orchestrator_start_time) {
                    return true;
                }
                if is_running(r.pid, r.start_time) {
                    let pid = nix::unistd::Pid::from_raw(r.pid as i32);
                    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                        tracing::warn!(pid = r.pid, model = %r.model, "killed a worker left by a dead server");
                        killed.push(r.pid);
                    }
                }
                let _ = std::fs::remove_file(&r.socket);
                if let Some(dir) = r.socket.parent() {
                    // The dead server's socket directory, if now empty.
                    let _ = std::fs::remove_dir(dir);
                }
                false
            });
            killed
        })
    }
}

/// The name of the directory holding the worker sockets of the server `pid`: its pid *and*
/// start time, so a server that reuses a dead one's pid never shares its directory. (With
/// the pid alone, a new server's sweep removed a dead namesake's directory — its own, still
/// empty before its first worker — and that worker then failed to start: "cannot create
/// worker socket", or with `--preload` a server that exited before listening.)
pub fn socket_dir_name(pid: u32) -> String {
    socket_dir_name_of(pid, process_start_time(pid).unwrap_or(0))
}

fn socket_dir_name_of(pid: u32, start_time: u64) -> String {
    format!("hearth-{pid}-{start_time}")
}

/// Whether `pid` is a live process that started at `start_time` (not a zombie).
pub fn is_running(pid: u32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

/// Start time of a live (non-zombie) process, from /proc.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // Field 3 is the state, so field 22 (start time) is index 19.
    fields.get(19)?.parse().ok()
}

/// Resident set size of a process, from `/proc/<pid>/statm` (in pages).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page_size)
}

/// `$XDG_STATE_HOME/hearth`, else `~/.local/state/hearth`.
pub fn default_state_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("hearth")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-reg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn our_own_process_has_a_start_time() {
        let me = std::process::id();
        let start = process_start_time(me).unwrap();
        assert!(is_running(me, start));
        assert!(
            !is_running(me, start + 1),
            "a different start time is another process"
        );
    }

    #[test]
    fn orphans_of_a_dead_orchestrator_are_killed_and_others_kept() {
        let dir = temp_dir("sweep");
        let registry = Registry::open(&dir).unwrap();
        let mut orphan = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let orphan_pid = orphan.id();
        let me = std::process::id();
        let socket = dir.join("orphan.sock");
        std::fs::write(&socket, b"").unwrap();
        registry.add(WorkerRecord {
            pid: orphan_pid,
            start_time: process_start_time(orphan_pid).unwrap(),
            orchestrator_pid: me,
            // Our pid with a start time that is not ours: an orchestrator that died.
            orchestrator_start_time: process_start_time(me).unwrap() + 1,
            model: "m".into(),
            socket: socket.clone(),
        });
        // A reused pid: right pid, wrong start time. Must survive.
        let mut bystander = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        registry.add(WorkerRecord {
            pid: bystander.id(),
            start_time: process_start_time(bystander.id()).unwrap() + 7,
            orchestrator_pid: me,
            orchestrator_start_time: process_start_time(me).unwrap() + 1,
            model: "m".into(),
            socket: dir.join("other.sock"),
        });
        // A worker of a live orchestrator (us): kept in the list.
        registry.add(WorkerRecord {
            pid: 1,
            start_time: 0,
            orchestrator_pid: me,
            orchestrator_start_time: process_start_time(me).unwrap(),
            model: "live".into(),
            socket: dir.join("live.sock"),
        });

        let killed = registry.sweep_orphans().unwrap();
        assert_eq!(killed, vec![orphan_pid]);
        assert!(
            orphan.wait().unwrap().code().is_none(),
            "killed by a signal"
        );
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a reused pid is left alone"
        );
        assert!(!socket.exists());
        let left: Vec<WorkerRecord> =
            serde_json::from_slice(&std::fs::read(registry.path()).unwrap()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].model, "live");
        let _ = bystander.kill();
        let _ = bystander.wait();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_dead_servers_socket_directory_goes_and_a_live_one_with_its_pid_stays() {
        let dir = temp_dir("sockets");
        let registry = Registry::open(&dir.join("state")).unwrap();
        let me = std::process::id();
        let started = process_start_time(me).unwrap();
        // A server that died with our pid: its directory, one socket left in it.
        let dead = dir.join(socket_dir_name_of(me, started + 1));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("m-0.sock"), b"").unwrap();
        registry.add(WorkerRecord {
            pid: 1,
            start_time: 0,
            orchestrator_pid: me,
            orchestrator_start_time: started + 1,
            model: "m".into(),
            socket: dead.join("m-0.sock"),
        });
        // Ours (this process is the live server), empty before its first worker.
        let live = dir.join(socket_dir_name(me));
        std::fs::create_dir_all(&live).unwrap();
        registry.sweep_orphans().unwrap();
        assert!(!dead.exists(), "the dead server's directory is removed");
        assert!(live.is_dir(), "the live server's directory stays");
        let _ = std::fs::remove_dir_all(dir);
    }
}
