//! Starting a worker: re-execute our own binary as `hearth worker`, named
//! `hearth-worker-<model>`, killed by the kernel if we die, connected over a private socket.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hearth_api::ApiError;
use hearth_ipc::{read_frame_async, FromWorker, Incoming};
use tokio::net::UnixListener;
use tokio::process::Command;

use super::connection::{start_reader, start_reaper, start_writer};
use super::{Liveness, Shared, Worker};
use crate::config::{ModelSpec, WorkerSettings};
use crate::metrics::Metrics;
use crate::registry::{process_start_time, Registry, WorkerRecord};

static SPAWNED: AtomicU64 = AtomicU64::new(0);

/// What every worker start needs from the orchestrator.
pub struct SpawnContext {
    /// The private (0700) directory for sockets.
    pub runtime_dir: PathBuf,
    pub registry: Option<Arc<Registry>>,
    pub metrics: Arc<Metrics>,
}

/// `settings` are the model's own (its slots and context already applied).
pub async fn spawn_worker(
    spec: &ModelSpec,
    settings: &WorkerSettings,
    context: &SpawnContext,
) -> Result<Arc<Worker>, ApiError> {
    let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Hub ids hold '/' and ':': keep socket names to plain characters.
    let file_id: String = spec
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let socket_path = context.runtime_dir.join(format!("{file_id}-{n}.sock"));
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .map_err(|e| ApiError::internal(format!("cannot create worker socket: {e}")))?;

    let mut command = Command::new(&settings.executable);
    command
        .arg0(format!("hearth-worker-{}", spec.id))
        .arg("worker")
        .arg("--model-id")
        .arg(&spec.id)
        .arg("--model")
        .arg(&spec.path)
        .arg("--socket")
        .arg(&socket_path)
        .arg("--parallel")
        .arg(settings.parallel.to_string())
        .arg("--ctx-size")
        .arg(settings.ctx_size.to_string())
        .arg("--gpu-layers")
        .arg(&settings.gpu_layers)
        .arg("--main-gpu")
        .arg(settings.main_gpu.to_string())
        .arg("--split-mode")
        .arg(settings.split_mode)
        .arg("--cache-type-k")
        .arg(settings.cache_type_k)
        .arg("--cache-type-v")
        .arg(settings.cache_type_v)
        .arg("--grammar-cache-size")
        .arg(settings.grammar_cache_size.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    if settings.kv_unified {
        command.arg("--kv-unified");
    }
    if settings.no_prompt_cache {
        command.arg("--no-prompt-cache");
    }
    if !settings.preemption {
        command.arg("--no-preemption");
    }
    if let Some(split) = &settings.tensor_split {
        command.arg("--tensor-split").arg(split);
    }
    command
        .arg("--greedy-on-device")
        .arg(settings.greedy_on_device);
    command.arg("--flash-attn").arg(settings.flash_attn);
    command.arg("--pooling").arg(settings.pooling);
    if settings.vocab_only {
        command.arg("--vocab-only");
    } else if let Some(mmproj) = &spec.mmproj {
        command.arg("--mmproj").arg(mmproj);
        command
            .arg("--max-image-side")
            .arg(settings.max_image_side.to_string());
    }
    command
        .arg("--prompt-cache-ram")
        .arg(settings.prompt_cache_ram_mib.to_string());
    if settings.cpu_gate {
        command
            .arg("--cpu-gate")
            .arg(context.runtime_dir.join("cpu-gate.lock"));
        // libgomp's threads spin ~300k iterations after each parallel region before they
        // sleep; a worker waiting its turn would spin against the one decoding. 3000 keeps
        // the barriers inside a decode fast and lets idle threads sleep: two busy models on 2
        // cores went from 73 to 121 tok/s, one busy model lost nothing (docs/benchmarks.md).
        if std::env::var_os("GOMP_SPINCOUNT").is_none() {
            command.env("GOMP_SPINCOUNT", "3000");
        }
    }
    if let Some(threads) = settings.threads {
        command.arg("--threads").arg(threads.to_string());
    }
    // A group of its own: Ctrl-C in a terminal signals the whole foreground group, and a
    // worker must not die before the orchestrator has drained its requests and stopped it.
    // The kernel kills the worker when we die (PDEATHSIG). Tests of the orphan sweep turn
    // both off to leave a live, stopped worker behind on purpose: alone in its group, a
    // stopped worker whose orchestrator dies is an orphaned group, and the kernel sends it
    // SIGHUP (a fine end for it, but not the leftover the test needs).
    let detach = !settings.keep_orphans;
    // SAFETY: setpgid and prctl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if detach {
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                    .map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ApiError::internal(format!("cannot start a worker process: {e}")))?;
    let pid = child.id().unwrap_or(0);
    if let Some(registry) = &context.registry {
        let me = std::process::id();
        registry.add(WorkerRecord {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            orchestrator_pid: me,
            orchestrator_start_time: process_start_time(me).unwrap_or(0),
            model: spec.id.clone(),
            socket: socket_path.clone(),
        });
    }
    let failed = |message: String| {
        let _ = std::fs::remove_file(&socket_path);
        ApiError::worker_failed(format!("model '{}' failed to load: {message}", spec.id))
    };

    let handshake = async {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let (mut reader, writer) = stream.into_split();
        match read_frame_async::<_, FromWorker>(&mut reader).await {
            Ok(Some(Incoming::Message(FromWorker::Ready(ready)))) => Ok((reader, writer, ready)),
            Ok(Some(Incoming::Message(FromWorker::Fatal { message }))) => Err(message),
            Ok(Some(Incoming::Unreadable { error, .. })) => Err(error),
            Ok(_) => Err("the worker closed its connection while loading".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(settings.load_timeout, handshake) => match outcome {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", settings.load_timeout)),
        },
        status = child.wait() => Err(match status {
            Ok(status) => format!("the worker exited while loading ({status})"),
            Err(e) => e.to_string(),
        }),
    };
    let (reader, writer, ready) = match outcome {
        Ok(parts) => parts,
        Err(message) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            if let Some(registry) = &context.registry {
                registry.remove(pid);
            }
            return Err(failed(message));
        }
    };
    let _ = std::fs::remove_file(&socket_path);

    let shared = Arc::new(Shared {
        alive: AtomicBool::new(true),
        ..Shared::default()
    });
    let (outbox, inbox) = tokio::sync::mpsc::unbounded_channel();
    start_writer(writer, inbox, shared.clone());
    start_reader(spec.id.clone(), reader, shared.clone());
    start_reaper(
        spec.id.clone(),
        child,
        shared.clone(),
        context.registry.clone(),
        context.metrics.clone(),
    );
    tracing::info!(model = %spec.id, pid, slots = ready.slots, "worker ready");
    Ok(Arc::new(Worker {
        model_id: spec.id.clone(),
        pid,
        ready,
        outbox,
        shared,
        next_id: AtomicU64::new(1),
        liveness: Mutex::new(Liveness {
            last_pong: Instant::now(),
            last_status: None,
            progress_at: Instant::now(),
        }),
    }))
}
