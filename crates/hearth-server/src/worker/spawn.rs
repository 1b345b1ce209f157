//! Starting a worker: re-execute our own binary as `hearth worker`, named
//! `hearth-worker-<model>`, killed by the kernel if we die, connected over a private socket.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use hearth_api::ApiError;
use hearth_ipc::{read_frame_async, FromWorker};
use tokio::net::UnixListener;
use tokio::process::Command;

use super::connection::{start_reader, start_reaper, start_writer};
use super::{Shared, Worker};
use crate::config::{ModelSpec, WorkerSettings};

static SPAWNED: AtomicU64 = AtomicU64::new(0);

pub async fn spawn_worker(
    spec: &ModelSpec,
    settings: &WorkerSettings,
    runtime_dir: &Path,
) -> Result<Arc<Worker>, ApiError> {
    let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let socket_path = runtime_dir.join(format!("{}-{n}.sock", spec.id));
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
        .arg(settings.gpu_layers.to_string())
        .arg("--grammar-cache-size")
        .arg(settings.grammar_cache_size.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    if settings.kv_unified {
        command.arg("--kv-unified");
    }
    if let Some(threads) = settings.threads {
        command.arg("--threads").arg(threads.to_string());
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ApiError::internal(format!("cannot start a worker process: {e}")))?;
    let pid = child.id().unwrap_or(0);
    let failed = |message: String| {
        let _ = std::fs::remove_file(&socket_path);
        ApiError::worker_failed(format!("model '{}' failed to load: {message}", spec.id))
    };

    let handshake = async {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let (mut reader, writer) = stream.into_split();
        match read_frame_async::<_, FromWorker>(&mut reader).await {
            Ok(Some(FromWorker::Ready(ready))) => Ok((reader, writer, ready)),
            Ok(Some(FromWorker::Fatal { message })) => Err(message),
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
            return Err(failed(message));
        }
    };
    let _ = std::fs::remove_file(&socket_path);

    let shared = Arc::new(Shared {
        alive: AtomicBool::new(true),
        ..Shared::default()
    });
    let (outbox, inbox) = tokio::sync::mpsc::unbounded_channel();
    start_writer(writer, inbox);
    start_reader(spec.id.clone(), reader, shared.clone());
    start_reaper(spec.id.clone(), child, shared.clone());
    tracing::info!(model = %spec.id, pid, slots = ready.slots, "worker ready");
    Ok(Arc::new(Worker {
        model_id: spec.id.clone(),
        pid,
        ready,
        outbox,
        shared,
        next_id: AtomicU64::new(1),
    }))
}
