//! One worker process: start it, talk to it, notice when it dies, kill it when it hangs.

mod connection;
mod group;
mod spawn;

pub use group::{GroupError, RequestGroup};
pub use spawn::{spawn_worker, SpawnContext};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_api::embeddings::EmbedInput;
use hearth_api::logprobs::TokenOutput;
use hearth_api::tools::ToolCallDelta;
use hearth_api::{ApiError, GenerationParams, Priority};
use hearth_ipc::{PromptSpec, ToWorker, WorkerReady, WorkerStatus};
use tokio::sync::{mpsc, oneshot, Notify};

/// How long a worker has to answer a ping before it counts as hung.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a tokenize or detokenize may take (a huge chat prompt renders in well under it).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the orchestrator hears about one request.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    Accepted {
        prompt_tokens: usize,
    },
    Delta {
        text: String,
        /// `<think>` text, for models that reason aloud.
        reasoning: String,
        tool_calls: Vec<ToolCallDelta>,
        tokens: Vec<TokenOutput>,
        token_count: usize,
    },
    Done {
        finish_reason: String,
        completion_tokens: usize,
        /// Prompt tokens the worker found in its prompt cache.
        cached_tokens: usize,
        /// Which stop string ended it, if one did.
        stop_index: Option<usize>,
    },
    Failed(ApiError),
    /// The worker process went away (crashed, was killed) while this sequence ran. Unlike
    /// `Failed`, the request itself may be fine: one that produced nothing yet can be retried.
    Lost(ApiError),
}

impl WorkerEvent {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            WorkerEvent::Done { .. } | WorkerEvent::Failed(_) | WorkerEvent::Lost(_)
        )
    }
}

/// Where a request's events go: its group's channel, tagged with its choice index.
type Route = (usize, mpsc::UnboundedSender<(usize, WorkerEvent)>);

#[derive(Default)]
pub(crate) struct Shared {
    routes: Mutex<HashMap<u64, Route>>,
    pings: Mutex<HashMap<u64, oneshot::Sender<WorkerStatus>>>,
    /// Tokenize and detokenize requests waiting for their answer.
    calls: Mutex<HashMap<u64, oneshot::Sender<Result<Answer, ApiError>>>>,
    alive: AtomicBool,
    /// Set before a hung worker is killed, so its requests get 504 rather than 503.
    hung: AtomicBool,
    /// Set when we asked it to exit (unload, shutdown): its exit is not a restart.
    stopping: AtomicBool,
    /// Why we killed it, for the log and `worker_restarts_total`.
    kill_reason: Mutex<Option<&'static str>>,
    /// The process has been reaped.
    exited: AtomicBool,
    exit_notify: Notify,
}

impl Shared {
    fn lock_routes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pings(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<WorkerStatus>>> {
        self.pings.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CallReply>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection is gone: every request still routed here ends with an error.
    pub(crate) fn fail_all(&self, model: &str) {
        self.alive.store(false, Ordering::SeqCst);
        let event = if self.hung.load(Ordering::SeqCst) {
            WorkerEvent::Failed(ApiError::timeout(format!(
                "the worker for model '{model}' stopped responding and was killed"
            )))
        } else {
            WorkerEvent::Lost(ApiError::worker_failed(format!(
                "the worker for model '{model}' exited unexpectedly; retry the request"
            )))
        };
        for (_, (index, route)) in self.lock_routes().drain() {
            let _ = route.send((index, event.clone()));
        }
        self.lock_pings().clear();
        // Dropped senders: each waiting call sees the worker gone.
        self.lock_calls().clear();
    }
}

/// A worker's answer to a tokenize, detokenize or embed request.
#[derive(Debug)]
pub enum Answer {
    Tokens {
        tokens: Vec<u32>,
        pieces: Vec<Vec<u8>>,
    },
    Text(String),
    /// Unit vectors of `dims` floats, as base64 of their little-endian bytes.
    Embeddings {
        dims: usize,
        vectors: String,
        prompt_tokens: usize,
    },
}

/// Sentence embeddings from a worker.
#[derive(Debug)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// A call the worker has not answered: cancelled there when dropped.
struct Unanswered<'a> {
    worker: &'a Worker,
    id: Option<u64>,
}

impl Unanswered<'_> {
    fn answered(mut self) {
        if let Some(id) = self.id.take() {
            self.worker.shared.lock_calls().remove(&id);
        }
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.worker.shared.lock_calls().remove(&id);
            let _ = self.worker.outbox.send(ToWorker::Cancel { id });
        }
    }
}

fn out_of_turn() -> ApiError {
    ApiError::internal("the worker answered out of turn")
}

pub(crate) type CallReply = oneshot::Sender<Result<Answer, ApiError>>;

/// What the periodic pings have seen.
#[derive(Debug, Clone)]
pub struct Liveness {
    pub last_pong: Instant,
    pub last_status: Option<WorkerStatus>,
    /// When the engine's step counter last moved (or the worker was last idle).
    pub progress_at: Instant,
}

pub struct Worker {
    pub model_id: String,
    pub pid: u32,
    pub ready: WorkerReady,
    outbox: mpsc::UnboundedSender<ToWorker>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    liveness: Mutex<Liveness>,
}

impl Worker {
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Note a ping's answer: the engine made progress if its step count moved or it has
    /// nothing to do.
    pub fn record_pong(&self, status: WorkerStatus) {
        let mut liveness = self.liveness.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let moved = liveness
            .last_status
            .as_ref()
            .is_none_or(|s| s.steps != status.steps);
        if moved || status.running + status.waiting == 0 {
            liveness.progress_at = now;
        }
        liveness.last_pong = now;
        liveness.last_status = Some(status);
    }

    /// Kill it for `reason` (e.g. `unresponsive`, `stalled`): its requests fail at once and
    /// the next request gets a fresh worker.
    pub fn kill_for(&self, reason: &'static str) {
        if !self.is_alive() {
            return;
        }
        tracing::error!(model = %self.model_id, pid = self.pid, reason, "killing worker");
        *self
            .shared
            .kill_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.shared.hung.store(true, Ordering::SeqCst);
        self.kill();
        self.shared.fail_all(&self.model_id);
    }

    /// Ask it to exit and wait up to `grace`; kill it if it has not. Not counted as a restart.
    pub async fn stop(&self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.outbox.send(ToWorker::Shutdown);
        if !self.wait_exit(grace).await {
            self.kill();
            self.wait_exit(Duration::from_secs(5)).await;
        }
    }

    /// Wait until the process is reaped; false if `timeout` passed first.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let reaped = async {
            loop {
                let notified = self.shared.exit_notify.notified();
                if self.shared.exited.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, reaped).await.is_ok()
    }

    /// Start every prompt's choices (one sequence per params); the events of all sequences
    /// arrive on one channel, indexed in order (prompt by prompt, choice by choice). Each
    /// prompt crosses to the worker once, however many choices it has.
    pub fn generate(
        self: &Arc<Self>,
        prompts: Vec<(Arc<PromptSpec>, Vec<GenerationParams>)>,
        priority: Priority,
    ) -> Result<RequestGroup, ApiError> {
        if !self.is_alive() {
            return Err(ApiError::worker_failed(format!(
                "the worker for model '{}' is not running; retry the request",
                self.model_id
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut ids = Vec::new();
        for (prompt, choices) in prompts {
            let count = choices.len() as u64;
            let first = self.next_id.fetch_add(count.max(1), Ordering::Relaxed);
            {
                let mut routes = self.shared.lock_routes();
                for id in first..first + count {
                    routes.insert(id, (ids.len(), tx.clone()));
                    ids.push(id);
                }
            }
            let message = ToWorker::Generate {
                id: first,
                prompt,
                choices,
                priority,
            };
            if self.outbox.send(message).is_err() {
                self.shared.fail_all(&self.model_id);
            }
        }
        Ok(RequestGroup::new(self.clone(), ids, rx))
    }

    /// Stop a request; the worker frees its slot at the next step.
    pub fn cancel(&self, id: u64) {
        if self.shared.lock_routes().remove(&id).is_some() {
            let _ = self.outbox.send(ToWorker::Cancel { id });
        }
    }

    /// Tokenize a prompt as a generation would (chat prompts rendered by the template).
    pub async fn tokenize(
        &self,
        prompt: PromptSpec,
        add_special: bool,
        with_pieces: bool,
    ) -> Result<(Vec<u32>, Vec<Vec<u8>>), ApiError> {
        match self
            .call(|id| ToWorker::Tokenize {
                id,
                prompt,
                add_special,
                with_pieces,
            })
            .await?
        {
            Answer::Tokens { tokens, pieces } => Ok((tokens, pieces)),
            _ => Err(out_of_turn()),
        }
    }

    pub async fn detokenize(&self, tokens: Vec<u32>) -> Result<String, ApiError> {
        match self.call(|id| ToWorker::Detokenize { id, tokens }).await? {
            Answer::Text(text) => Ok(text),
            _ => Err(out_of_turn()),
        }
    }

    /// Embed `inputs`, waiting at most `timeout` (a large batch takes a while on a CPU).
    pub async fn embed(
        &self,
        inputs: Vec<EmbedInput>,
        timeout: Duration,
    ) -> Result<Embeddings, ApiError> {
        let count = inputs.len();
        match self
            .call_within(timeout, |id| ToWorker::Embed { id, inputs })
            .await?
        {
            Answer::Embeddings {
                dims,
                vectors,
                prompt_tokens,
            } => {
                let floats = hearth_api::embeddings::base64_to_f32s(&vectors)
                    .filter(|f| dims > 0 && f.len() == dims * count)
                    .ok_or_else(|| ApiError::internal("the worker's embeddings were malformed"))?;
                Ok(Embeddings {
                    vectors: floats.chunks(dims).map(<[f32]>::to_vec).collect(),
                    prompt_tokens,
                })
            }
            _ => Err(out_of_turn()),
        }
    }

    /// One request-and-answer with the worker (no slot, no events).
    async fn call(&self, message: impl FnOnce(u64) -> ToWorker) -> Result<Answer, ApiError> {
        self.call_within(CALL_TIMEOUT, message).await
    }

    async fn call_within(
        &self,
        timeout: Duration,
        message: impl FnOnce(u64) -> ToWorker,
    ) -> Result<Answer, ApiError> {
        let lost = || {
            ApiError::worker_failed(format!(
                "the worker for model '{}' went away; retry the request",
                self.model_id
            ))
        };
        if !self.is_alive() {
            return Err(lost());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.lock_calls().insert(id, tx);
        if self.outbox.send(message(id)).is_err() {
            self.shared.lock_calls().remove(&id);
            return Err(lost());
        }
        // Dropped unanswered (the client went away, or the time ran out): the worker stops
        // the work (an embedding batch may take minutes) and the call is forgotten.
        let pending = Unanswered {
            worker: self,
            id: Some(id),
        };
        let answer = tokio::time::timeout(timeout, rx).await;
        if answer.as_ref().is_ok_and(|a| a.is_ok()) {
            pending.answered();
        }
        match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(lost()),
            Err(_) => Err(ApiError::timeout(format!(
                "the worker for model '{}' did not answer within {} s",
                self.model_id,
                timeout.as_secs()
            ))),
        }
    }

    /// The worker's answer to a ping, or `None` if it gave none within `PING_TIMEOUT`.
    pub async fn ping(&self) -> Option<WorkerStatus> {
        let nonce = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.lock_pings().insert(nonce, tx);
        if self.outbox.send(ToWorker::Ping { nonce }).is_err() {
            return None;
        }
        let answer = tokio::time::timeout(PING_TIMEOUT, rx).await.ok()?.ok();
        self.shared.lock_pings().remove(&nonce);
        answer
    }

    /// Kill the worker if it no longer answers pings. Returns true if it was killed.
    pub async fn kill_if_hung(&self) -> bool {
        if !self.is_alive() || self.ping().await.is_some() {
            return false;
        }
        // Dead from now on: the next request must get a fresh worker, not this one.
        self.kill_for("unresponsive");
        true
    }

    /// SIGKILL; the task that owns the child reaps it.
    pub fn kill(&self) {
        self.shared.alive.store(false, Ordering::SeqCst);
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}
