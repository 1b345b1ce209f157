//! The tasks behind a worker: one writes frames, one reads and routes them, one reaps the
//! process. When the process dies the socket closes and every open request fails at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hearth_api::ApiError;
use hearth_ipc::{encode_frame, read_frame_async, Framed, FromWorker, Incoming, ToWorker};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;
use tokio::sync::mpsc;

use super::{Answer, Shared, WorkerEvent};
use crate::metrics::Metrics;
use crate::registry::Registry;

pub(super) fn start_writer(
    mut socket: OwnedWriteHalf,
    mut outbox: mpsc::UnboundedReceiver<ToWorker>,
    shared: Arc<Shared>,
) {
    tokio::spawn(async move {
        while let Some(message) = outbox.recv().await {
            // A message that cannot be a frame (over the size limit: a prompt with large
            // images inline) fails its own requests; the connection, and every other request
            // on it, goes on. (Closing it would end the worker and its running streams.)
            let frame = match encode_frame(&message) {
                Ok(frame) => frame,
                Err(e) => {
                    tracing::warn!(%e, "a request could not be sent to its worker");
                    for id in message.frame_ids().iter() {
                        let error = ApiError::new(
                            413,
                            "invalid_request_error",
                            Some("request_too_large"),
                            format!(
                                "this request is too large to hand to the model's worker ({e}); \
                                 send less text or fewer or smaller images"
                            ),
                        );
                        deliver(&shared, id, WorkerEvent::Failed(error));
                    }
                    continue;
                }
            };
            let written = if message.fds().is_empty() {
                socket.write_all(&frame).await
            } else {
                write_frame_with_fds(&mut socket, &frame, &message).await
            };
            if written.is_err() {
                break;
            }
        }
    });
}

/// A frame whose images' shared memory goes with it: the descriptors ride on its first
/// bytes (`sendmsg` with `SCM_RIGHTS`), the rest is written as usual.
async fn write_frame_with_fds(
    socket: &mut OwnedWriteHalf,
    frame: &[u8],
    message: &ToWorker,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let fds = message.fds();
    let stream: &tokio::net::UnixStream = socket.as_ref();
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            hearth_ipc::media::send_with_fds(stream.as_raw_fd(), frame, &fds)
        }) {
            Ok(sent) => break sent,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    socket.write_all(&frame[sent..]).await
}

pub(super) fn start_reader(model: String, mut socket: OwnedReadHalf, shared: Arc<Shared>) {
    tokio::spawn(async move {
        loop {
            match read_frame_async::<_, FromWorker>(&mut socket).await {
                Ok(Some(Incoming::Message(message))) => route(&shared, message),
                // A frame we cannot read fails the requests it names; the rest carry on.
                Ok(Some(Incoming::Unreadable { ids, error })) => {
                    tracing::error!(%model, %error, "unreadable frame from worker");
                    for id in ids.iter() {
                        let failed = ApiError::internal(format!(
                            "the worker's answer could not be read: {error}"
                        ));
                        deliver(&shared, id, WorkerEvent::Failed(failed));
                    }
                }
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

/// Reap the child exactly once, log how it ended, and count it as a restart unless we
/// asked it to stop.
pub(super) fn start_reaper(
    model: String,
    mut child: Child,
    shared: Arc<Shared>,
    registry: Option<Arc<Registry>>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        let pid = child.id();
        let status = child.wait().await;
        let stopping = shared.stopping.load(Ordering::SeqCst);
        let killed_for = *shared.kill_reason.lock().unwrap_or_else(|e| e.into_inner());
        match (&status, killed_for) {
            (Ok(status), _) if stopping => tracing::info!(%model, %status, "worker exited"),
            (Ok(status), Some(reason)) => {
                tracing::warn!(%model, %status, reason, "worker killed; a new one starts on the next request")
            }
            (Ok(status), None) => {
                tracing::error!(%model, %status, "worker died; a new one starts on the next request")
            }
            (Err(e), _) => tracing::error!(%model, %e, "waiting for the worker failed"),
        }
        if !stopping {
            let reason = killed_for.unwrap_or("crashed");
            metrics
                .worker_restarts
                .with_label_values(&[&model, reason])
                .inc();
        }
        if let (Some(registry), Some(pid)) = (registry, pid) {
            registry.remove(pid);
        }
        shared.fail_all(&model);
        shared.exited.store(true, Ordering::SeqCst);
        shared.exit_notify.notify_waiters();
    });
}

fn route(shared: &Shared, message: FromWorker) {
    let (id, event) = match message {
        FromWorker::Accepted { id, prompt_tokens } => (id, WorkerEvent::Accepted { prompt_tokens }),
        FromWorker::Delta {
            id,
            text,
            reasoning,
            tool_calls,
            tokens,
            token_count,
        } => (
            id,
            WorkerEvent::Delta {
                text,
                reasoning,
                tool_calls,
                tokens,
                token_count,
            },
        ),
        FromWorker::Done {
            id,
            finish_reason,
            completion_tokens,
            cached_tokens,
            stop_index,
            ..
        } => (
            id,
            WorkerEvent::Done {
                finish_reason,
                completion_tokens,
                cached_tokens,
                stop_index,
            },
        ),
        FromWorker::Failed {
            id,
            status,
            mut error,
        } => {
            error.status = status;
            if let Some(caller) = shared.lock_calls().remove(&id) {
                let _ = caller.send(Err(error));
                return;
            }
            (id, WorkerEvent::Failed(error))
        }
        FromWorker::Tokenized { id, tokens, pieces } => {
            if let Some(caller) = shared.lock_calls().remove(&id) {
                let _ = caller.send(Ok(Answer::Tokens { tokens, pieces }));
            }
            return;
        }
        FromWorker::Detokenized { id, text } => {
            if let Some(caller) = shared.lock_calls().remove(&id) {
                let _ = caller.send(Ok(Answer::Text(text)));
            }
            return;
        }
        FromWorker::Embedded {
            id,
            dims,
            vectors,
            prompt_tokens,
        } => {
            if let Some(caller) = shared.lock_calls().remove(&id) {
                let _ = caller.send(Ok(Answer::Embeddings {
                    dims,
                    vectors,
                    prompt_tokens,
                }));
            }
            return;
        }
        FromWorker::Pong { nonce, status } => {
            if let Some(waiter) = shared.lock_pings().remove(&nonce) {
                let _ = waiter.send(status);
            }
            return;
        }
        FromWorker::Ready(_) | FromWorker::Fatal { .. } => return,
    };
    deliver(shared, id, event);
}

/// Hand an event to the request it belongs to; a final event ends the route.
fn deliver(shared: &Shared, id: u64, event: WorkerEvent) {
    let final_event = event.is_final();
    let mut routes = shared.lock_routes();
    if let Some((index, route)) = routes.get(&id) {
        let _ = route.send((*index, event));
    }
    if final_event {
        routes.remove(&id);
    }
}
