//! The tasks behind a worker: one writes frames, one reads and routes them, one reaps the
//! process. When the process dies the socket closes and every open request fails at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hearth_ipc::{read_frame_async, write_frame_async, FromWorker, ToWorker};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;
use tokio::sync::mpsc;

use super::{Shared, WorkerEvent};

pub(super) fn start_writer(
    mut socket: OwnedWriteHalf,
    mut outbox: mpsc::UnboundedReceiver<ToWorker>,
) {
    tokio::spawn(async move {
        while let Some(message) = outbox.recv().await {
            if write_frame_async(&mut socket, &message).await.is_err() {
                break;
            }
        }
    });
}

pub(super) fn start_reader(model: String, mut socket: OwnedReadHalf, shared: Arc<Shared>) {
    tokio::spawn(async move {
        loop {
            match read_frame_async::<_, FromWorker>(&mut socket).await {
                Ok(Some(message)) => route(&shared, message),
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(%model, %e, "bad frame from worker");
                    break;
                }
            }
        }
        shared.fail_all(&model);
    });
}

/// Reap the child exactly once, and log how it ended.
pub(super) fn start_reaper(model: String, mut child: Child, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let status = child.wait().await;
        let hung = shared.hung.load(Ordering::SeqCst);
        match status {
            Ok(status) if status.success() => tracing::info!(%model, "worker exited"),
            Ok(status) if hung => tracing::warn!(%model, %status, "hung worker killed"),
            Ok(status) => tracing::error!(%model, %status, "worker died"),
            Err(e) => tracing::error!(%model, %e, "waiting for the worker failed"),
        }
        shared.fail_all(&model);
    });
}

fn route(shared: &Shared, message: FromWorker) {
    let (id, event) = match message {
        FromWorker::Accepted { id, prompt_tokens } => (id, WorkerEvent::Accepted { prompt_tokens }),
        FromWorker::Delta {
            id,
            text,
            tokens,
            token_count,
        } => (
            id,
            WorkerEvent::Delta {
                text,
                tokens,
                token_count,
            },
        ),
        FromWorker::Done {
            id,
            finish_reason,
            completion_tokens,
            ..
        } => (
            id,
            WorkerEvent::Done {
                finish_reason,
                completion_tokens,
            },
        ),
        FromWorker::Failed {
            id,
            status,
            mut error,
        } => {
            error.status = status;
            (id, WorkerEvent::Failed(error))
        }
        FromWorker::Pong { nonce, status } => {
            if let Some(waiter) = shared.lock_pings().remove(&nonce) {
                let _ = waiter.send(status);
            }
            return;
        }
        FromWorker::Ready(_) | FromWorker::Fatal { .. } => return,
    };
    let final_event = event.is_final();
    let mut routes = shared.lock_routes();
    if let Some((index, route)) = routes.get(&id) {
        let _ = route.send((*index, event));
    }
    if final_event {
        routes.remove(&id);
    }
}
