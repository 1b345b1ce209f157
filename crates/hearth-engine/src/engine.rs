//! The engine handle: submit requests, receive their events, cancel them.
//!
//! One OS thread owns the llama.cpp context and runs the scheduler; callers talk to it
//! through a command channel and get events back through a sink of their choosing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use serde::Serialize;

use crate::backend::backend;
use crate::error::{EngineError, Result};
use crate::exec::LlamaBackend;
use crate::model::Model;
use crate::placement::{CacheType, ContextShape};
use crate::request::{Event, GenerationRequest, RequestId};
use crate::scheduler::{Command, Scheduler, Submission};
use crate::step_times::{StepClock, StepTimes};
use crate::stop::MAX_STOP_STRINGS;
use crate::structured::Constraint;
use crate::vision::Projector;

/// Receives a request's events, on the engine thread or (on a GPU) one of its sampling
/// threads: one sequence's events in order, from one thread at a time. Returning `false`
/// means nobody is listening any more: the engine cancels the request and frees its slot.
pub type EventSink = Box<dyn FnMut(Event) -> bool + Send>;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together (llama.cpp sequence slots).
    pub parallel: usize,
    /// Context tokens each sequence may use (prompt plus completion).
    pub context_per_slot: u32,
    /// Most tokens decoded in one step: one per running sequence plus a prefill chunk.
    pub batch_size: u32,
    /// CPU threads for llama.cpp.
    pub threads: usize,
    /// One KV buffer shared by all slots: faster batched decode, but a sequence's output
    /// may then depend on what it was batched with.
    pub kv_unified: bool,
    /// A lock file shared with other workers: decode only while holding it (see `cpu_gate`).
    pub cpu_gate: Option<std::path::PathBuf>,
    /// Keep finished sequences' KV in their slots and start new requests from the longest
    /// cached prefix of their prompt.
    pub prompt_cache: bool,
    /// Bytes of host memory for prompt caches moved out of their slots (0: none).
    pub prompt_cache_ram: usize,
    /// A waiting high-priority request pauses the newest lowest-priority sequence when
    /// every slot is busy (its KV waits in host memory; it resumes where it was).
    pub preemption: bool,
    /// Flash attention (see `FlashAttention`).
    pub flash_attention: FlashAttention,
    /// Element types of the KV cache's keys and values.
    pub cache_type_k: CacheType,
    pub cache_type_v: CacheType,
    /// The model's vision projector: prompts may hold images.
    pub projector: Option<Arc<Projector>>,
    /// Greedy requests' tokens are chosen by the device that computed their logits (an
    /// argmax in llama.cpp's graph, after the request's logit bias) instead of on the host
    /// from logits copied out; requests that need the logits (sampled, penalised,
    /// constrained, with logprobs or images) are chosen on the host either way. Same tokens
    /// (an exact tie between two logits aside). Off by default: on an H100 (8B, 49k
    /// vocabulary) llama.cpp's sampling graph cost more per step than the copy and the
    /// host's argmax it saves (docs/benchmarks.md, "GPU: greedy tokens chosen on the GPU").
    pub greedy_on_device: bool,
}

/// Whether llama.cpp computes attention with its fused flash-attention kernels.
///
/// Neither choice makes every output independent of what runs beside it on the CPU (see
/// docs/architecture.md, "Exactness"). On: one per-row kernel serves a decode token, a cache
/// hit's re-read token and short prompt chunks alike, so repeats and cache hits match cold
/// runs — but a lone sequence switches to a split-KV kernel once it attends over 512 cells
/// (diverging from its batched twin after ~200 tokens) and 64+ query rows use a tiled one.
/// Off: no kernel depends on the attended window, so long batched generations match their
/// solo runs (tested over 600 tokens) — but one-row passes (decode, a re-read token) and
/// tiled multi-row prefill round differently, so a cache hit can change a reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FlashAttention {
    /// llama.cpp's choice (on where the backend supports it).
    #[default]
    Auto,
    On,
    Off,
}

impl EngineConfig {
    /// The context this configuration makes: what a model's layers are fitted around.
    pub fn context_shape(&self) -> ContextShape {
        ContextShape {
            n_ctx: self.context_per_slot.saturating_mul(self.parallel as u32),
            n_batch: self.batch_size,
            n_seq: self.parallel as u32,
            // kv_unified is off by default: each sequence gets its own cells, which keeps a
            // sequence's greedy output identical whether it runs alone or batched. On,
            // batched decode measured ~15-20% faster here, but outputs then depend on batch
            // composition.
            kv_unified: self.kv_unified,
            flash_attention: self.flash_attention,
            cache_type_k: self.cache_type_k,
            cache_type_v: self.cache_type_v,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            parallel: 4,
            context_per_slot: 4096,
            batch_size: 512,
            threads: default_threads(),
            kv_unified: false,
            cpu_gate: None,
            prompt_cache: true,
            prompt_cache_ram: 0,
            preemption: true,
            flash_attention: FlashAttention::Auto,
            cache_type_k: CacheType::F16,
            cache_type_v: CacheType::F16,
            projector: None,
            greedy_on_device: false,
        }
    }
}

/// Physical-core count is what llama.cpp scales with; logical CPUs is the best we can read.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
}

/// Counters the engine thread keeps current, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    /// KV cells in use across all slots.
    pub kv_used: AtomicUsize,
    pub steps: AtomicU64,
    /// Sequences paused for high-priority ones, now and in all.
    pub paused: AtomicUsize,
    pub preemptions: AtomicU64,
    /// Sequences moved to another slot to keep the running ones consecutive (`pack`).
    pub slot_moves: AtomicU64,
    /// Tokens chosen by the device (greedy requests; `EngineConfig::greedy_on_device`).
    pub device_choices: AtomicU64,
    /// Requests the caller is still preparing (rendering, tokenizing; `Engine::preparing`):
    /// an idle engine waits a moment for them, so a burst starts in one step.
    pub preparing: AtomicUsize,
    /// Prompt caches saved in host memory.
    pub host_cache_bytes: AtomicUsize,
    pub host_cache_entries: AtomicUsize,
    /// Tokens each slot's KV holds (a running sequence's, or a free slot's cache).
    pub slot_tokens: std::sync::Mutex<Vec<usize>>,
    /// Time spent in each phase of the steps so far.
    pub step_clock: StepClock,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsSnapshot {
    pub running: usize,
    pub waiting: usize,
    pub slots: usize,
    pub kv_used: usize,
    pub kv_capacity: usize,
    /// Engine steps taken so far: a running request with no new steps is stuck.
    pub steps: u64,
    pub paused: usize,
    pub preemptions: u64,
    pub slot_moves: u64,
    pub device_choices: u64,
    pub host_cache_bytes: usize,
    pub host_cache_entries: usize,
    pub slot_tokens: Vec<usize>,
    pub step_times: StepTimes,
}

/// A validated request with its compiled constraint, ready to submit.
pub struct PreparedRequest {
    request: GenerationRequest,
    constraint: Option<Constraint>,
}

impl PreparedRequest {
    pub fn prompt_len(&self) -> usize {
        self.request.prompt.len()
    }
}

/// A request in flight: its id (for `Engine::cancel`) and its events.
pub struct RequestHandle {
    pub id: RequestId,
    pub events: mpsc::Receiver<Event>,
}

pub struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    commands: mpsc::Sender<Command>,
    stats: Arc<EngineStats>,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Create the context and start the engine thread.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Engine> {
        if config.parallel == 0 || config.context_per_slot < 16 || config.batch_size == 0 {
            return Err(EngineError::InvalidRequest(
                "parallel, context size and batch size must be positive".into(),
            ));
        }
        let (commands, inbox) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let thread = {
            let model = model.clone();
            let config = config.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("hearth-engine".into())
                .spawn(move || run_engine_thread(model, config, inbox, stats, ready_tx))
                .map_err(|e| EngineError::ContextFailed(e.to_string()))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Engine {
                model,
                config,
                commands,
                stats,
                next_id: AtomicU64::new(1),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(EngineError::ContextFailed("engine thread exited".into()))
            }
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Check a request against the model and this engine's limits.
    pub fn validate(&self, request: &GenerationRequest) -> Result<()> {
        if request.prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let vocab = self.model.info().vocab_size;
        self.validate_media(request)?;
        let mut text = request
            .prompt
            .iter()
            .enumerate()
            .filter(|&(i, _)| !request.media.iter().any(|m| m.start <= i && i < m.end()));
        if let Some((_, bad)) = text.find(|&(_, &t)| t >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "prompt token {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let context = self.config.context_per_slot as usize;
        if request.prompt.len() >= context {
            return Err(EngineError::ContextLengthExceeded {
                prompt_tokens: request.prompt.len(),
                context_tokens: context,
            });
        }
        // Asking for more than the context can hold is an error, as with OpenAI and vLLM, not
        // a silent clamp: the caller would otherwise read `length` as the model's choice.
        if let Some(max_tokens) = request.max_tokens {
            if request.prompt.len() + max_tokens > context {
                return Err(EngineError::CompletionExceedsContext {
                    prompt_tokens: request.prompt.len(),
                    max_tokens,
                    context_tokens: context,
                });
            }
        }
        if request.stop.len() > MAX_STOP_STRINGS {
            return Err(EngineError::InvalidRequest(format!(
                "at most {MAX_STOP_STRINGS} stop strings are allowed"
            )));
        }
        if request.max_tokens == Some(0) {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        request
            .sampling
            .validate(vocab)
            .map_err(EngineError::InvalidRequest)
    }

    /// Images lie in order inside the prompt, each over as many cells as it takes, and text
    /// follows the last (its last token's logits start the reply).
    fn validate_media(&self, request: &GenerationRequest) -> Result<()> {
        if request.media.is_empty() {
            return Ok(());
        }
        if self.config.projector.is_none() {
            return Err(EngineError::InvalidRequest(
                "this model has no vision projector".into(),
            ));
        }
        let mut after = 0;
        for media in &request.media {
            let fits = media.start >= after
                && media.end() < request.prompt.len()
                && media.image.as_ref().is_some_and(|i| i.tokens == media.len);
            if !fits {
                return Err(EngineError::InvalidRequest(
                    "images must lie in order inside the prompt, with text after the last".into(),
                ));
            }
            after = media.end();
        }
        Ok(())
    }

    /// Validate a request and compile its output grammar, without submitting it: everything
    /// that can reject a request happens here, before a caller tells its client "accepted".
    pub fn prepare(&self, request: GenerationRequest) -> Result<PreparedRequest> {
        self.validate(&request)?;
        // Compiled on the caller's thread, so a slow schema never stalls decoding.
        let constraint = match &request.format {
            Some(format) => Some(self.model.grammars()?.matcher(format)?),
            None => None,
        };
        Ok(PreparedRequest {
            request,
            constraint,
        })
    }

    /// Submit a prepared request; its events go to `sink` (see `EventSink`).
    pub fn submit_prepared(&self, prepared: PreparedRequest, sink: EventSink) -> Result<RequestId> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.commands
            .send(Command::Submit(Box::new(Submission {
                id,
                request: prepared.request,
                constraint: prepared.constraint,
                sink,
            })))
            .map_err(|_| {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                EngineError::EngineStopped
            })?;
        Ok(id)
    }

    /// Submit a request; its events go to `sink` (see `EventSink`).
    pub fn submit_with_sink(
        &self,
        request: GenerationRequest,
        sink: EventSink,
    ) -> Result<RequestId> {
        let prepared = self.prepare(request)?;
        self.submit_prepared(prepared, sink)
    }

    /// Submit a request; its events arrive on the handle's channel. Dropping the handle
    /// cancels the request.
    pub fn submit(&self, request: GenerationRequest) -> Result<RequestHandle> {
        let (tx, rx) = mpsc::channel();
        let id = self.submit_with_sink(request, Box::new(move |event| tx.send(event).is_ok()))?;
        Ok(RequestHandle { id, events: rx })
    }

    /// Stop a request; its slot is free before the next step. Unknown ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.commands.send(Command::Cancel(id));
    }

    /// Say that a request is on its way (being rendered and tokenized) until the returned
    /// guard is dropped — after its `submit_prepared`, or once it failed. An idle engine
    /// holds its next step for such requests, up to a few milliseconds (`Scheduler::gather`).
    pub fn preparing(&self) -> Preparing {
        self.stats.preparing.fetch_add(1, Ordering::AcqRel);
        Preparing(self.stats.clone())
    }

    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            running: self.stats.running.load(Ordering::Relaxed),
            waiting: self.stats.waiting.load(Ordering::Relaxed),
            slots: self.config.parallel,
            kv_used: self.stats.kv_used.load(Ordering::Relaxed),
            kv_capacity: self.config.parallel * self.config.context_per_slot as usize,
            steps: self.stats.steps.load(Ordering::Relaxed),
            paused: self.stats.paused.load(Ordering::Relaxed),
            preemptions: self.stats.preemptions.load(Ordering::Relaxed),
            slot_moves: self.stats.slot_moves.load(Ordering::Relaxed),
            device_choices: self.stats.device_choices.load(Ordering::Relaxed),
            host_cache_bytes: self.stats.host_cache_bytes.load(Ordering::Relaxed),
            host_cache_entries: self.stats.host_cache_entries.load(Ordering::Relaxed),
            slot_tokens: self
                .stats
                .slot_tokens
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
            step_times: self.stats.step_clock.snapshot(),
        }
    }
}

/// A request on its way to the engine (`Engine::preparing`).
#[derive(Debug)]
pub struct Preparing(Arc<EngineStats>);

impl Drop for Preparing {
    fn drop(&mut self) {
        // Release: a submission sent before this is seen by whoever sees the count drop.
        self.0.preparing.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_engine_thread(
    model: Arc<Model>,
    config: EngineConfig,
    inbox: mpsc::Receiver<Command>,
    stats: Arc<EngineStats>,
    ready: mpsc::Sender<Result<()>>,
) {
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(i32::MAX);
    let params = config
        .context_shape()
        .params()
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let context = match model.llama.new_context(backend(), params) {
        Ok(context) => context,
        Err(e) => {
            let _ = ready.send(Err(EngineError::ContextFailed(e.to_string())));
            return;
        }
    };
    // Every layer on a GPU: decode returns once the pass is launched. (With some layers on
    // the CPU the pass is mostly the host's own work.)
    let offloaded = model.offload().gpu_layers >= model.offload().layers;
    let mut backend = LlamaBackend::new(
        context,
        config.batch_size as usize,
        config.projector.clone(),
        offloaded,
        model.llama.n_vocab().max(0) as usize,
        config.greedy_on_device,
    );
    if model.gpu_layers() > 0 {
        backend.warm_up();
    }
    let _ = ready.send(Ok(()));
    Scheduler::new(&*model, backend, &config, stats).run(inbox);
}
