//! `hearth worker` (hidden): one model in its own process, driven by the orchestrator over
//! a Unix socket. A thin loop around the engine: frames in, engine calls, events out.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{Context, Result};
use hearth_api::embeddings::EmbedInput;
use hearth_api::format::JsonFormat;
use hearth_api::logprobs::{TokenOutput, TopToken};
use hearth_api::tools::{ToolCallDelta, ToolChoice, ToolUse};
use hearth_api::{ApiError, GenerationParams, Priority};
use hearth_engine::tools::{
    call_grammar, generic_tool_prompt, CallMode, CallTool, ReplyDelta, ReplyParser, ToolSyntax,
};
use hearth_engine::{
    model_chat_template, ChatTemplate, Engine, EngineConfig, EngineError, Event, FinishReason,
    GeneratedToken, GenerationRequest, ImageLimits, LoadOptions, Model, OutputFormat, Placement,
    PreparedRequest, Projector, PromptMedia, RequestId, SamplingParams, TemplateInput,
};
use hearth_ipc::media::{claim_fds, FdReceiver};
use hearth_ipc::{
    image_marker_text, read_frame, write_frame, FromWorker, GpuMemory, Incoming, MediaBytes,
    PromptSpec, ToWorker, WorkerReady, WorkerStatus,
};

use crate::cli::{Switch, WorkerArgs};
use hearth_engine::embed::{EmbedConfig, Embedder};

/// Frames to the orchestrator come from two threads (this one and the engine's).
type Outbox = Arc<Mutex<UnixStream>>;
/// Set to cancel an embedding job.
type EmbedFlag = Arc<std::sync::atomic::AtomicBool>;

/// Inputs decoded together by the embedding context (each its own sequence).
const EMBED_BATCH_INPUTS: u32 = 64;

pub fn run(args: WorkerArgs) -> Result<()> {
    set_process_name(&format!("hearth-worker-{}", args.model_id));
    // Ctrl-C in a terminal signals the whole foreground group; the orchestrator decides when
    // a worker stops (it also starts us in a group of our own).
    ignore_interrupts();
    let stream = UnixStream::connect(&args.socket)
        .with_context(|| format!("connecting to {}", args.socket.display()))?;
    let outbox: Outbox = Arc::new(Mutex::new(stream.try_clone()?));
    let (model, engine, projector, vram_bytes) = match load(&args) {
        Ok(loaded) => loaded,
        Err(e) => {
            send(
                &outbox,
                &FromWorker::Fatal {
                    message: format!("{e:#}"),
                },
            );
            return Err(e);
        }
    };
    let template = model_chat_template(&model).ok();
    let syntax = template.as_ref().map(|t| {
        let source = model.info().chat_template.as_deref().unwrap_or("");
        ToolSyntax::detect(source, t.supports_tools())
    });
    let info = model.info();
    send(
        &outbox,
        &FromWorker::Ready(WorkerReady {
            pid: std::process::id(),
            architecture: info.architecture.clone(),
            vocab_size: info.vocab_size,
            context_per_slot: args.ctx_size,
            slots: engine.as_ref().map_or(0, |e| e.config().parallel),
            size_bytes: info.size_bytes,
            pooling: info.pooling.clone(),
            causal: info.causal,
            vision: projector.is_some(),
            gpu_layers: model.offload().gpu_layers,
            layers: model.offload().layers,
            vram_bytes,
        }),
    );
    let embed_config = EmbedConfig {
        pooling: args.pooling.engine(),
        threads: args.threads.unwrap_or_else(hearth_engine::default_threads),
        batch_tokens: args.ctx_size,
        batch_inputs: EMBED_BATCH_INPUTS,
    };
    let worker = Arc::new(Worker {
        model,
        engine,
        projector,
        template,
        syntax,
        outbox,
        sequences: Arc::new(Mutex::new(HashMap::new())),
        embed_config,
        embedder: std::sync::OnceLock::new(),
        embeds: Arc::default(),
    });
    // Rendering, tokenizing and compiling grammars happen on threads of their own: this one
    // must stay free to answer pings and cancels, however large a prompt is. Several, so a
    // burst of requests is prepared side by side (one such thread took 1-7 ms per 400-token
    // chat here, and 8 clients arriving together waited for each other's). Requests reach
    // the engine in the order their preparation ends: a short one may overtake a long one.
    let (jobs, inbox) = mpsc::channel::<Work>();
    let inbox = Arc::new(Mutex::new(inbox));
    let preparers = (0..preparing_threads())
        .map(|i| {
            let worker = worker.clone();
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name(format!("hearth-prepare-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take the next piece of work.
                    let next = inbox.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(work) = next else {
                        return;
                    };
                    match work {
                        Work::Generate(job) => worker.prepare_and_submit(job),
                        Work::Tokenize {
                            id,
                            prompt,
                            add_special,
                            with_pieces,
                        } => worker.answer_tokenize(id, prompt, add_special, with_pieces),
                        Work::Detokenize { id, tokens } => worker.answer_detokenize(id, &tokens),
                        Work::Embed { id, inputs } => worker.embed(id, inputs),
                    }
                })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    // Read with recvmsg: images' shared memory arrives as descriptors beside the frames.
    let receiver = FdReceiver::new(stream);
    let fd_queue = receiver.queue();
    let mut reader = BufReader::new(receiver);
    // The orchestrator closing the socket is our signal to exit. A frame we cannot read
    // fails the requests it names, nothing more.
    while let Some(incoming) = read_frame::<_, ToWorker>(&mut reader)? {
        let message = match incoming {
            Incoming::Message(message) => message,
            Incoming::Unreadable { ids, error } => {
                tracing::error!(%error, first = ids.first, count = ids.count, "unreadable frame");
                for id in ids.iter() {
                    worker.fail(
                        id,
                        ApiError::internal(format!(
                            "the worker could not read this request: {error}"
                        )),
                    );
                }
                continue;
            }
        };
        match message {
            ToWorker::Generate {
                id,
                mut prompt,
                choices,
                priority,
            } => {
                let ids: Vec<u64> = (id..).take(choices.len()).collect();
                // Just read, the prompt has no other owner.
                if let Some(PromptSpec::Chat { images, .. }) = Arc::get_mut(&mut prompt) {
                    if let Err(e) = claim_fds(images, &fd_queue) {
                        for id in ids {
                            worker.fail(id, ApiError::internal(e.clone()));
                        }
                        continue;
                    }
                }
                worker.track(&ids);
                if jobs
                    .send(Work::Generate(Job {
                        ids,
                        prompt,
                        choices,
                        priority,
                        preparing: worker.engine.as_ref().map(Engine::preparing),
                    }))
                    .is_err()
                {
                    break;
                }
            }
            ToWorker::Cancel { id } => worker.cancel(id),
            ToWorker::Tokenize {
                id,
                prompt,
                add_special,
                with_pieces,
            } => {
                let work = Work::Tokenize {
                    id,
                    prompt,
                    add_special,
                    with_pieces,
                };
                if jobs.send(work).is_err() {
                    break;
                }
            }
            ToWorker::Detokenize { id, tokens } => {
                if jobs.send(Work::Detokenize { id, tokens }).is_err() {
                    break;
                }
            }
            ToWorker::Embed { id, inputs } => {
                // Known from now, so a cancel that comes before the preparing thread gets
                // to it is not lost.
                worker.track_embed(id);
                if jobs.send(Work::Embed { id, inputs }).is_err() {
                    break;
                }
            }
            ToWorker::Ping { nonce } => worker.pong(nonce),
            ToWorker::Shutdown => break,
        }
    }
    drop(jobs);
    for preparer in preparers {
        let _ = preparer.join();
    }
    Ok(())
}

/// Threads that prepare requests: a few, not one per CPU (llama.cpp's own threads want the
/// cores while a burst is prepared).
fn preparing_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

fn ignore_interrupts() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_IGN runs no code in the handler; nothing else sets SIGINT here.
    let _ = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) };
}

/// What a worker serves with: the model, its engine unless only its vocabulary was loaded
/// (`--vocab-only`), its vision projector if it has one, and the GPU memory it took.
type Loaded = (Arc<Model>, Option<Engine>, Option<Arc<Projector>>, u64);

fn load(args: &WorkerArgs) -> Result<Loaded> {
    let config = engine_config(args);
    if args.vocab_only {
        // No device is touched: querying a GPU's memory would create a CUDA context (hundreds
        // of MB of VRAM) in a process that only counts tokens.
        let model = Model::load(
            &args.model,
            &LoadOptions {
                grammar_cache_size: args.grammar_cache_size,
                vocab_only: true,
                ..LoadOptions::default()
            },
        )?;
        return Ok((Arc::new(model), None, None, 0));
    }
    // Asking a GPU for its free memory creates a CUDA context on it: not for a CPU-only run.
    let on_gpu = args.gpu_layers != hearth_engine::GpuLayers::Count(0);
    let free_before = if on_gpu { gpu_free_bytes() } else { 0 };
    let model = Arc::new(Model::load(
        &args.model,
        &LoadOptions {
            placement: Placement {
                gpu_layers: args.gpu_layers,
                main_gpu: args.main_gpu,
                split_mode: args.split_mode.engine(),
                tensor_split: args.tensor_split.clone().unwrap_or_default(),
                // The projector loads after the model fits: leave it its file and 512 MiB of
                // encoder buffers.
                reserve_bytes: args.mmproj.as_ref().map_or(0, |p| {
                    std::fs::metadata(p).map_or(0, |m| m.len() as usize) + (512 << 20)
                }),
            },
            context: Some(config.context_shape()),
            grammar_cache_size: args.grammar_cache_size,
            vocab_only: false,
        },
    )?);
    let threads = args.threads.unwrap_or_else(hearth_engine::default_threads);
    let projector = match &args.mmproj {
        Some(path) => Some(Arc::new(Projector::load(
            path,
            &model,
            threads,
            ImageLimits {
                max_side: args.max_image_side,
                ..ImageLimits::default()
            },
        )?)),
        None => None,
    };
    let config = EngineConfig {
        projector: projector.clone(),
        ..config
    };
    let engine = Engine::start(model.clone(), config)?;
    // Measured, not estimated: what the GPUs lost while the weights, KV cache, compute
    // buffers and projector were allocated (another process allocating at the same time
    // would be counted too).
    let vram = if model.gpu_layers() > 0 {
        free_before.saturating_sub(gpu_free_bytes())
    } else {
        0
    };
    Ok((model, Some(engine), projector, vram))
}

fn engine_config(args: &WorkerArgs) -> EngineConfig {
    EngineConfig {
        parallel: args.parallel,
        context_per_slot: args.ctx_size,
        threads: args.threads.unwrap_or_else(hearth_engine::default_threads),
        kv_unified: args.kv_unified,
        prompt_cache: !args.no_prompt_cache,
        prompt_cache_ram: args.prompt_cache_ram << 20,
        preemption: !args.no_preemption,
        flash_attention: args.flash_attn.engine(),
        cache_type_k: args.cache_type_k.engine(),
        cache_type_v: args.cache_type_v.engine(),
        cpu_gate: args.cpu_gate.clone(),
        greedy_on_device: args.greedy_on_device == Switch::On,
        ..EngineConfig::default()
    }
}

/// Free memory over all GPUs (0 without any).
fn gpu_free_bytes() -> u64 {
    hearth_engine::placement::gpus()
        .iter()
        .map(|g| g.free_bytes)
        .sum()
}

/// The GPUs' memory now, for pongs (none in a vocabulary-only worker, which must not touch
/// a device).
fn gpu_memory(engine: Option<&Engine>) -> Vec<GpuMemory> {
    // Nothing offloaded (or only counting tokens): the devices are not ours to wake.
    if engine.is_none_or(|e| e.model().gpu_layers() == 0) {
        return Vec::new();
    }
    hearth_engine::placement::gpus()
        .into_iter()
        .map(|g| GpuMemory {
            name: g.name,
            description: g.description,
            total_bytes: g.total_bytes,
            free_bytes: g.free_bytes,
        })
        .collect()
}

/// `ps` and `top` show the worker as `hearth-worker-<model>` (argv[0] is set by the parent;
/// the kernel's 15-byte comm is set here).
fn set_process_name(name: &str) {
    let short: String = name.chars().take(15).collect();
    if let Ok(name) = std::ffi::CString::new(short) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

fn send(outbox: &Outbox, message: &FromWorker) -> bool {
    let mut stream = outbox.lock().unwrap_or_else(|e| e.into_inner());
    write_frame(&mut *stream, message).is_ok()
}

/// What the preparing threads do, taken in arrival order.
enum Work {
    Generate(Job),
    Tokenize {
        id: u64,
        prompt: PromptSpec,
        add_special: bool,
        with_pieces: bool,
    },
    Detokenize {
        id: u64,
        tokens: Vec<u32>,
    },
    Embed {
        id: u64,
        inputs: Vec<EmbedInput>,
    },
}

/// One prompt's sequences, waiting for the preparing thread.
struct Job {
    ids: Vec<u64>,
    prompt: Arc<PromptSpec>,
    choices: Vec<GenerationParams>,
    priority: Priority,
    /// Tells the engine this request is on its way, until it is submitted (or failed).
    preparing: Option<hearth_engine::Preparing>,
}

/// Where one sequence (orchestrator id) is. `Preparing` → `Running` when submitted to the
/// engine; a cancel while preparing leaves `Cancelled` for the preparing thread to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SequenceState {
    Preparing,
    Cancelled,
    Running(RequestId),
}

type Sequences = Arc<Mutex<HashMap<u64, SequenceState>>>;

struct Worker {
    model: Arc<Model>,
    /// `None` in a vocabulary-only worker, which tokenizes and nothing else.
    engine: Option<Engine>,
    /// The vision projector (`--mmproj`): chat prompts may hold images.
    projector: Option<Arc<Projector>>,
    template: Option<ChatTemplate>,
    /// The call syntax and reasoning style read from the template.
    syntax: Option<ToolSyntax>,
    outbox: Outbox,
    sequences: Sequences,
    embed_config: EmbedConfig,
    /// The embedding context, made on the first `/v1/embeddings` request (or why it cannot
    /// be: a generative model without `--pooling`).
    embedder: std::sync::OnceLock<Result<Embedder, String>>,
    /// Embedding jobs in progress: setting the flag cancels one (its client went away).
    embeds: Arc<Mutex<HashMap<u64, EmbedFlag>>>,
}

fn lock(sequences: &Sequences) -> std::sync::MutexGuard<'_, HashMap<u64, SequenceState>> {
    sequences.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    /// The engine; a vocabulary-only worker has none and only tokenizes.
    fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine
            .as_ref()
            .ok_or_else(|| ApiError::internal("this worker only counts tokens"))
    }

    fn track(&self, ids: &[u64]) {
        let mut sequences = lock(&self.sequences);
        for &id in ids {
            sequences.insert(id, SequenceState::Preparing);
        }
    }

    fn fail(&self, id: u64, error: ApiError) {
        lock(&self.sequences).remove(&id);
        send(
            &self.outbox,
            &FromWorker::Failed {
                id,
                status: error.status,
                error,
            },
        );
    }

    /// `/tokenize`: the prompt's tokens as a generation would see them, and their text.
    fn answer_tokenize(&self, id: u64, prompt: PromptSpec, add_special: bool, with_pieces: bool) {
        let model = &self.model;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match prompt {
            // As a completion reads its prompt: special-token text is not parsed.
            PromptSpec::Text(text) => Ok(model.tokenize(&text, add_special, false)),
            prompt => self.tokenize(prompt).map(|p| p.tokens),
        }));
        match outcome {
            Ok(Ok(tokens)) => {
                let pieces = if with_pieces {
                    tokens
                        .iter()
                        .map(|&t| model.token_bytes(t).to_vec())
                        .collect()
                } else {
                    Vec::new()
                };
                self.answer(id, &FromWorker::Tokenized { id, tokens, pieces });
            }
            Ok(Err(error)) => self.fail(id, error),
            Err(_) => self.fail(id, ApiError::internal("the worker failed while tokenizing")),
        }
    }

    /// `/v1/embeddings`: tokenize here, embed on the embedding thread, which answers.
    fn embeds(&self) -> std::sync::MutexGuard<'_, HashMap<u64, EmbedFlag>> {
        self.embeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn track_embed(&self, id: u64) {
        self.embeds().insert(id, Arc::default());
    }

    /// The cancel flag of an embedding request, unless it was cancelled before it started.
    fn embed_flag(&self, id: u64) -> Option<EmbedFlag> {
        let mut embeds = self.embeds();
        let flag = embeds.get(&id).cloned().unwrap_or_default();
        if flag.load(std::sync::atomic::Ordering::Relaxed) {
            embeds.remove(&id);
            return None;
        }
        Some(flag)
    }

    fn embed(&self, id: u64, inputs: Vec<EmbedInput>) {
        let Some(cancel) = self.embed_flag(id) else {
            return; // its caller went away before it started
        };
        let fail = |error: ApiError| {
            self.embeds().remove(&id);
            self.fail(id, error);
        };
        if let Err(error) = self.engine() {
            return fail(error);
        }
        let embedder = self.embedder.get_or_init(|| {
            Embedder::start(self.model.clone(), self.embed_config.clone())
                .map_err(|e| e.to_string())
        });
        let embedder = match embedder {
            Ok(embedder) => embedder,
            Err(reason) => return fail(ApiError::invalid_value("model", reason.clone())),
        };
        let model = &self.model;
        let vocab = model.info().vocab_size;
        let mut tokens = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            let ids = match input {
                // With the model's special tokens ([CLS] … [SEP] for BERT), and special-token
                // text read as the token, as Hugging Face tokenizers (and so the
                // sentence-transformers a model was trained with) do.
                EmbedInput::Text(text) => model.tokenize(&text, true, true),
                EmbedInput::Tokens(ids) => ids,
            };
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                let error = ApiError::invalid_value(
                    "input",
                    format!("input[{i}]: token {bad} is outside the vocabulary (size {vocab})"),
                );
                return fail(error);
            }
            if ids.len() > embedder.max_tokens() {
                let mut error = ApiError::context_length_exceeded(ids.len(), embedder.max_tokens());
                error.message = format!("input[{i}]: {}", error.message);
                error.param = Some("input".into());
                return fail(error);
            }
            if ids.is_empty() {
                return fail(ApiError::invalid_value(
                    "input",
                    format!("input[{i}]: no tokens"),
                ));
            }
            tokens.push(ids);
        }
        let dims = embedder.dims();
        if tokens.len().saturating_mul(dims) > hearth_api::embeddings::MAX_FLOATS {
            let error = ApiError::invalid_value(
                "input",
                format!(
                    "input: {} inputs of {dims} dimensions are more than one request may \
                     return; send at most {}",
                    tokens.len(),
                    hearth_api::embeddings::MAX_FLOATS / dims.max(1)
                ),
            );
            return fail(error);
        }
        let prompt_tokens: usize = tokens.iter().map(Vec::len).sum();
        if prompt_tokens > hearth_api::embeddings::MAX_TOKENS {
            let error = ApiError::invalid_value(
                "input",
                format!(
                    "input: {prompt_tokens} tokens in all; at most {} per request",
                    hearth_api::embeddings::MAX_TOKENS
                ),
            );
            return fail(error);
        }
        let outbox = self.outbox.clone();
        // The flag stays in `embeds` (put there when the request arrived) until the reply.
        let embeds = self.embeds.clone();
        embedder.submit(tokens, cancel, move |result| {
            embeds.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            let message = match result {
                Ok(vectors) => FromWorker::Embedded {
                    id,
                    dims,
                    vectors: hearth_api::embeddings::f32s_to_base64(&vectors.concat()),
                    prompt_tokens,
                },
                // Nobody is waiting for it.
                Err(EngineError::Cancelled) => return,
                Err(e) => {
                    let error = ApiError::internal(format!("embedding failed: {e}"));
                    FromWorker::Failed {
                        id,
                        status: error.status,
                        error,
                    }
                }
            };
            if !send(&outbox, &message) {
                let error = ApiError::internal("the embeddings were too large to send back");
                send(
                    &outbox,
                    &FromWorker::Failed {
                        id,
                        status: error.status,
                        error,
                    },
                );
            }
        });
    }

    /// `/detokenize`: ids to text (bytes that are not UTF-8 become U+FFFD).
    fn answer_detokenize(&self, id: u64, tokens: &[u32]) {
        let model = &self.model;
        let vocab = model.info().vocab_size;
        if let Some(bad) = tokens.iter().position(|&t| t >= vocab) {
            let error = ApiError::invalid_value(
                &format!("tokens[{bad}]"),
                format!(
                    "token {} is outside the vocabulary (size {vocab})",
                    tokens[bad]
                ),
            );
            return self.fail(id, error);
        }
        let bytes: Vec<u8> = tokens
            .iter()
            .flat_map(|&t| model.token_bytes(t).iter().copied())
            .collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.answer(id, &FromWorker::Detokenized { id, text });
    }

    /// Send a tokenize/detokenize answer; one too large for a frame fails the call at once
    /// (rather than leaving the caller to time out).
    fn answer(&self, id: u64, message: &FromWorker) {
        if !send(&self.outbox, message) {
            self.fail(
                id,
                ApiError::new(
                    413,
                    "invalid_request_error",
                    Some("answer_too_large"),
                    format!(
                        "the answer would be over the {} MiB a worker may send; ask for \
                         fewer tokens (or without with_pieces)",
                        hearth_ipc::MAX_FRAME_BYTES >> 20
                    ),
                ),
            );
        }
    }

    /// Render and tokenize once, then prepare and submit every choice. A panic here (a bug)
    /// fails this request's sequences, not the worker.
    fn prepare_and_submit(&self, job: Job) {
        let ids = job.ids.clone();
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_job(job)));
        tracing::debug!(
            id = ids.first().copied().unwrap_or_default(),
            prepare_us = started.elapsed().as_micros() as u64,
            "prepared"
        );
        let error = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(_) => ApiError::internal("the worker failed while preparing this request"),
        };
        for id in ids {
            let unsent = matches!(
                lock(&self.sequences).get(&id),
                Some(SequenceState::Preparing | SequenceState::Cancelled)
            );
            if unsent {
                self.fail(id, error.clone());
            }
        }
    }

    fn run_job(&self, job: Job) -> Result<(), ApiError> {
        let Job {
            ids,
            prompt,
            choices,
            priority,
            preparing,
        } = job;
        let engine = self.engine()?;
        if !self.model.info().causal {
            return Err(ApiError::embedding_model_only());
        }
        // Just deserialised, the prompt has no other owner: unwrapping it copies nothing.
        let prompt = self.tokenize(Arc::unwrap_or_clone(prompt))?;
        let grammar = prompt.reply.as_ref().and_then(|r| r.grammar.clone());
        // Validate every choice before accepting any, so a request fails as a whole.
        let mut prepared = Vec::with_capacity(choices.len());
        for params in choices {
            let with_logprobs = params.top_logprobs.is_some();
            let mut request = generation_request(prompt.tokens.clone(), params, priority);
            request.media = prompt.media.clone();
            let param = if grammar.is_some() {
                request.format = grammar.clone();
                "tools"
            } else if request.format.is_some() {
                "response_format"
            } else {
                "prompt"
            };
            let ready = engine
                .prepare(request)
                .map_err(|e| engine_error(e, param))?;
            prepared.push((ready, with_logprobs));
        }
        for (id, (ready, with_logprobs)) in ids.into_iter().zip(prepared) {
            let parser = prompt.reply.as_ref().map(ReplySetup::parser);
            self.submit(id, ready, with_logprobs, parser)?;
        }
        // Submitted: an idle engine holding its step for this request may go now.
        drop(preparing);
        Ok(())
    }

    fn tokenize(&self, prompt: PromptSpec) -> Result<Prompt, ApiError> {
        let model = &self.model;
        let tokens = match prompt {
            PromptSpec::Chat {
                mut messages,
                tools,
                tool_use,
                images,
                image_marker,
                ..
            } => {
                let (Some(template), Some(syntax)) = (self.template.as_ref(), self.syntax) else {
                    return Err(ApiError::invalid_request(
                        "this model has no chat template; use /v1/completions",
                        Some("messages"),
                    ));
                };
                // A template that cannot show tools gets them in a system message of ours —
                // unless no call may be made (`tool_choice: none`), when telling the model how
                // to call would only make it write calls that come back as text.
                let tools = match tools {
                    Some(tools) if !syntax.template_renders_tools => {
                        if tool_use.as_ref().is_some_and(ToolUse::calls_possible) {
                            add_system_text(&mut messages, &generic_tool_prompt(&tools));
                        }
                        None
                    }
                    tools => tools,
                };
                let text = template
                    .render(&TemplateInput {
                        messages,
                        tools,
                        add_generation_prompt: true,
                    })
                    .map_err(|e| engine_error(e, "messages"))?;
                let reply = self.reply_setup(&syntax, tool_use.as_ref(), &text);
                if !images.is_empty() {
                    let (tokens, media) = self.with_images(&text, &images, &image_marker)?;
                    return Ok(Prompt {
                        tokens,
                        media,
                        reply,
                    });
                }
                // Templates write BOS themselves (HF tokenizes chat with add_special_tokens=False).
                let tokens = model.tokenize(&text, false, true);
                return Ok(Prompt {
                    tokens,
                    media: Vec::new(),
                    reply,
                });
            }
            PromptSpec::Text(text) => model.tokenize(&text, true, false),
            PromptSpec::Tokens(tokens) => tokens,
        };
        Ok(Prompt {
            tokens,
            media: Vec::new(),
            reply: None,
        })
    }

    /// A rendered chat prompt whose markers stand for `images`: text around them tokenized
    /// as usual, each image read by the projector into placeholder tokens and its chunks.
    fn with_images(
        &self,
        rendered: &str,
        images: &[MediaBytes],
        marker: &str,
    ) -> Result<(Vec<u32>, Vec<PromptMedia>), ApiError> {
        let Some(projector) = &self.projector else {
            return Err(ApiError::model_not_multimodal());
        };
        let mut tokens = Vec::new();
        let mut media = Vec::with_capacity(images.len());
        let mut rest = rendered;
        for (k, bytes) in images.iter().enumerate() {
            let here = image_marker_text(marker, k);
            // Named `images[k]`: the orchestrator puts back the part the client sent.
            let param = format!("images[{k}]");
            let Some((before, after)) = rest.split_once(&here) else {
                return Err(ApiError::invalid_value(
                    &param,
                    "this model's chat template left this image out (templates may drop \
                     some messages); send images in user messages",
                ));
            };
            tokens.extend(self.model.tokenize(before, false, true));
            let bytes = bytes.read().map_err(ApiError::internal)?;
            let image = projector
                .image(&bytes)
                .map_err(|e| ApiError::invalid_value(&param, e.to_string()))?;
            let image = Arc::new(image);
            media.push(PromptMedia::new(tokens.len(), image.clone()));
            tokens.extend(hearth_engine::vision::placeholders(
                image.hash,
                image.tokens,
            ));
            rest = after;
        }
        if rest.contains(marker) {
            return Err(ApiError::invalid_request(
                "the chat template repeated an image; send each image once",
                Some("messages"),
            ));
        }
        tokens.extend(self.model.tokenize(rest, false, true));
        Ok((tokens, media))
    }

    /// How a chat reply is parsed (and constrained): calls when tools are in use, reasoning
    /// when the model thinks aloud; `None` for plain replies.
    fn reply_setup(
        &self,
        syntax: &ToolSyntax,
        tool_use: Option<&ToolUse>,
        rendered: &str,
    ) -> Option<ReplySetup> {
        let calls = tool_use.filter(|t| t.calls_possible());
        if calls.is_none() && !syntax.reasoning {
            return None;
        }
        // DeepSeek-R1 templates open the think block in the prompt itself.
        let opens_in_reasoning = syntax.reasoning && rendered.trim_end().ends_with("<think>");
        let grammar = calls.map(|tool_use| {
            let tools: Vec<CallTool> = tool_use
                .tools
                .iter()
                .map(|t| CallTool {
                    name: t.name.clone(),
                    parameters: t.parameters.clone(),
                    strict: t.strict,
                })
                .collect();
            let mode = match &tool_use.choice {
                ToolChoice::Auto | ToolChoice::None => CallMode::Auto,
                ToolChoice::Required => CallMode::Required,
                ToolChoice::Named(name) => CallMode::Named(name.clone()),
            };
            let model = &self.model;
            let single_token = |text: &str| match model.tokenize(text, false, true)[..] {
                [id] => Some(id),
                _ => None,
            };
            call_grammar(
                syntax,
                &tools,
                &mode,
                tool_use.parallel,
                opens_in_reasoning,
                &single_token,
            )
        });
        Some(ReplySetup {
            syntax: *syntax,
            tools: calls
                .map(|t| t.tools.iter().map(|t| t.name.clone()).collect())
                .unwrap_or_default(),
            calls_enabled: calls.is_some(),
            opens_in_reasoning,
            grammar,
        })
    }

    /// Tell the orchestrator the sequence is accepted and hand it to the engine, unless it
    /// was cancelled while being prepared.
    fn submit(
        &self,
        id: u64,
        prepared: PreparedRequest,
        with_logprobs: bool,
        mut parser: Option<ReplyParser>,
    ) -> Result<(), ApiError> {
        let model = self.model.clone();
        let outbox = self.outbox.clone();
        let sequences = self.sequences.clone();
        let prompt_tokens = prepared.prompt_len();
        let sink = Box::new(move |event: Event| {
            let message = match event {
                Event::Delta { text, tokens } => {
                    let reply = match parser.as_mut() {
                        Some(parser) => parser.push(&text),
                        None => ReplyDelta {
                            content: text,
                            ..ReplyDelta::default()
                        },
                    };
                    delta_message(id, reply, &tokens, with_logprobs.then_some(&*model))
                }
                Event::Done {
                    finish_reason,
                    usage,
                } => {
                    lock(&sequences).remove(&id);
                    let mut reason = finish_reason.as_str();
                    if let Some(parser) = parser.as_mut() {
                        let rest = parser.finish();
                        if !rest.is_empty() && !send(&outbox, &delta_message(id, rest, &[], None)) {
                            return false;
                        }
                        // A reply that made calls and ended by itself ended to run them (a
                        // stop string that cut a call short is just a stop).
                        if parser.calls() > 0
                            && parser.calls_complete()
                            && finish_reason == FinishReason::Stop
                        {
                            reason = "tool_calls";
                        }
                    }
                    FromWorker::Done {
                        id,
                        finish_reason: reason.to_owned(),
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                        cached_tokens: usage.cached_tokens,
                        stop_index: match finish_reason {
                            FinishReason::StopString(which) => Some(which),
                            _ => None,
                        },
                    }
                }
                Event::Error(message) => {
                    lock(&sequences).remove(&id);
                    FromWorker::Failed {
                        id,
                        status: 500,
                        error: ApiError::internal(message),
                    }
                }
            };
            send(&outbox, &message)
        });
        // Hold the map while submitting so a fast finish cannot remove the id before it is in.
        let mut sequences = lock(&self.sequences);
        match sequences.get(&id) {
            Some(SequenceState::Preparing) => {}
            // Cancelled (or unknown): the orchestrator has stopped listening.
            _ => {
                sequences.remove(&id);
                return Ok(());
            }
        }
        send(&self.outbox, &FromWorker::Accepted { id, prompt_tokens });
        let engine_id = self
            .engine()?
            .submit_prepared(prepared, sink)
            .map_err(|e| engine_error(e, "prompt"))?;
        sequences.insert(id, SequenceState::Running(engine_id));
        Ok(())
    }

    fn cancel(&self, id: u64) {
        if let Some(job) = self.embeds().get(&id) {
            job.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let mut sequences = lock(&self.sequences);
        match sequences.get(&id).copied() {
            Some(SequenceState::Running(engine_id)) => {
                sequences.remove(&id);
                drop(sequences);
                if let Some(engine) = &self.engine {
                    engine.cancel(engine_id);
                }
            }
            Some(SequenceState::Preparing) => {
                sequences.insert(id, SequenceState::Cancelled);
            }
            Some(SequenceState::Cancelled) | None => {}
        }
    }

    fn pong(&self, nonce: u64) {
        let stats = self.engine.as_ref().map(Engine::stats).unwrap_or_default();
        let (grammars_compiled, grammar_cache_hits) = self.model.grammar_counters();
        send(
            &self.outbox,
            &FromWorker::Pong {
                nonce,
                status: WorkerStatus {
                    running: stats.running,
                    waiting: stats.waiting,
                    slots: stats.slots,
                    kv_used: stats.kv_used,
                    steps: stats.steps,
                    kv_capacity: stats.kv_capacity,
                    grammars_compiled,
                    grammar_cache_hits,
                    paused: stats.paused,
                    preemptions: stats.preemptions,
                    slot_moves: stats.slot_moves,
                    device_choices: stats.device_choices,
                    host_cache_bytes: stats.host_cache_bytes,
                    host_cache_entries: stats.host_cache_entries,
                    slot_tokens: stats.slot_tokens,
                    gpus: gpu_memory(self.engine.as_ref()),
                },
            },
        );
    }
}

/// A tokenized prompt and how its replies are parsed.
struct Prompt {
    tokens: Vec<u32>,
    /// Images over placeholder tokens of `tokens`.
    media: Vec<PromptMedia>,
    reply: Option<ReplySetup>,
}

/// What each sequence of a chat prompt needs to split its reply, and the call grammar.
struct ReplySetup {
    syntax: ToolSyntax,
    tools: Vec<String>,
    calls_enabled: bool,
    opens_in_reasoning: bool,
    grammar: Option<OutputFormat>,
}

impl ReplySetup {
    fn parser(&self) -> ReplyParser {
        ReplyParser::new(
            &self.syntax,
            self.tools.clone(),
            self.calls_enabled,
            self.opens_in_reasoning,
        )
    }
}

/// Add text to the system message (after what it says), or open with a system message.
fn add_system_text(messages: &mut Vec<serde_json::Value>, text: &str) {
    match messages.first_mut() {
        Some(first) if first.get("role").and_then(|r| r.as_str()) == Some("system") => {
            let existing = first
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_owned();
            first["content"] = serde_json::Value::String(if existing.is_empty() {
                text.to_owned()
            } else {
                format!("{existing}\n\n{text}")
            });
        }
        _ => messages.insert(0, serde_json::json!({"role": "system", "content": text})),
    }
}

/// A delta frame: content, reasoning and call pieces, and the tokens behind them.
fn delta_message(
    id: u64,
    reply: ReplyDelta,
    tokens: &[GeneratedToken],
    logprobs_of: Option<&Model>,
) -> FromWorker {
    FromWorker::Delta {
        id,
        text: reply.content,
        reasoning: reply.reasoning,
        tool_calls: reply
            .calls
            .into_iter()
            .map(|c| ToolCallDelta {
                index: c.index,
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        token_count: tokens.len(),
        tokens: match logprobs_of {
            Some(model) => tokens.iter().map(|t| token_output(model, t)).collect(),
            None => vec![],
        },
    }
}

/// The engine's request for one choice: the wire parameters mapped onto the engine's.
fn generation_request(
    prompt: Vec<u32>,
    params: GenerationParams,
    priority: Priority,
) -> GenerationRequest {
    GenerationRequest {
        prompt,
        media: Vec::new(),
        priority,
        sampling: SamplingParams {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            frequency_penalty: params.frequency_penalty,
            presence_penalty: params.presence_penalty,
            logit_bias: params.logit_bias.iter().copied().collect(),
            seed: params.seed,
            top_logprobs: params.top_logprobs,
        },
        max_tokens: params.max_tokens,
        stop: params.stop,
        format: params.json.map(|json| match json {
            JsonFormat::Object => OutputFormat::JsonObject,
            JsonFormat::Schema(schema) => OutputFormat::JsonSchema(schema),
            JsonFormat::Regex(rx) => OutputFormat::Regex(rx),
            JsonFormat::Choice(choices) => OutputFormat::Choice(choices),
        }),
    }
}

fn token_output(model: &Model, token: &GeneratedToken) -> TokenOutput {
    let piece = |id: u32| {
        let bytes = model.token_bytes(id).to_vec();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let (text, bytes) = piece(token.id);
    let logprobs = token.logprobs.as_ref();
    TokenOutput {
        id: token.id,
        text,
        bytes,
        logprob: logprobs.map(|l| l.logprob),
        top: logprobs
            .map(|l| {
                l.top
                    .iter()
                    .map(|&(id, logprob)| {
                        let (text, bytes) = piece(id);
                        TopToken {
                            id,
                            text,
                            bytes,
                            logprob,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Engine errors as the client should see them.
fn engine_error(error: EngineError, param: &str) -> ApiError {
    match error {
        EngineError::ContextLengthExceeded {
            prompt_tokens,
            context_tokens,
        } => ApiError::context_length_exceeded(prompt_tokens, context_tokens),
        EngineError::CompletionExceedsContext {
            prompt_tokens,
            max_tokens,
            context_tokens,
        } => ApiError::completion_exceeds_context(prompt_tokens, max_tokens, context_tokens),
        EngineError::InvalidRequest(message) => ApiError::invalid_request(message, Some(param)),
        EngineError::Template(message) => {
            ApiError::invalid_request(format!("chat template error: {message}"), Some("messages"))
        }
        other => ApiError::internal(other.to_string()),
    }
}
