//! `hearth worker` (hidden): one model in its own process, driven by the orchestrator over
//! a Unix socket. A thin loop around the engine: frames in, engine calls, events out.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{Context, Result};
use hearth_api::format::JsonFormat;
use hearth_api::logprobs::{TokenOutput, TopToken};
use hearth_api::{ApiError, GenerationParams};
use hearth_engine::{
    model_chat_template, ChatTemplate, Engine, EngineConfig, EngineError, Event, GeneratedToken,
    GenerationRequest, LoadOptions, Model, OutputFormat, PreparedRequest, RequestId,
    SamplingParams, TemplateInput,
};
use hearth_ipc::{
    read_frame, write_frame, FromWorker, Incoming, PromptSpec, ToWorker, WorkerReady, WorkerStatus,
};

use crate::cli::WorkerArgs;

/// Frames to the orchestrator come from two threads (this one and the engine's).
type Outbox = Arc<Mutex<UnixStream>>;

pub fn run(args: WorkerArgs) -> Result<()> {
    set_process_name(&format!("hearth-worker-{}", args.model_id));
    // Ctrl-C in a terminal signals the whole foreground group; the orchestrator decides when
    // a worker stops (it also starts us in a group of our own).
    ignore_interrupts();
    let stream = UnixStream::connect(&args.socket)
        .with_context(|| format!("connecting to {}", args.socket.display()))?;
    let outbox: Outbox = Arc::new(Mutex::new(stream.try_clone()?));
    let engine = match load(&args) {
        Ok(engine) => engine,
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
    let template = model_chat_template(engine.model()).ok();
    let info = engine.model().info();
    send(
        &outbox,
        &FromWorker::Ready(WorkerReady {
            pid: std::process::id(),
            architecture: info.architecture.clone(),
            vocab_size: info.vocab_size,
            context_per_slot: engine.config().context_per_slot,
            slots: engine.config().parallel,
            size_bytes: info.size_bytes,
        }),
    );
    let worker = Arc::new(Worker {
        engine,
        template,
        outbox,
        sequences: Arc::new(Mutex::new(HashMap::new())),
    });
    // Rendering, tokenizing and compiling grammars happen on their own thread: this one
    // must stay free to answer pings and cancels, however large a prompt is.
    let (jobs, inbox) = mpsc::channel::<Job>();
    let preparer = {
        let worker = worker.clone();
        std::thread::Builder::new()
            .name("hearth-prepare".into())
            .spawn(move || {
                for job in inbox {
                    worker.prepare_and_submit(job);
                }
            })?
    };
    let mut reader = BufReader::new(stream);
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
                prompt,
                choices,
            } => {
                let ids: Vec<u64> = (id..).take(choices.len()).collect();
                worker.track(&ids);
                if jobs
                    .send(Job {
                        ids,
                        prompt,
                        choices,
                    })
                    .is_err()
                {
                    break;
                }
            }
            ToWorker::Cancel { id } => worker.cancel(id),
            ToWorker::Ping { nonce } => worker.pong(nonce),
            ToWorker::Shutdown => break,
        }
    }
    drop(jobs);
    let _ = preparer.join();
    Ok(())
}

fn ignore_interrupts() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing SIG_IGN runs no code in the handler; nothing else sets SIGINT here.
    let _ = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) };
}

fn load(args: &WorkerArgs) -> Result<Engine> {
    let model = Model::load(
        &args.model,
        &LoadOptions {
            gpu_layers: args.gpu_layers,
            grammar_cache_size: args.grammar_cache_size,
        },
    )?;
    let config = EngineConfig {
        parallel: args.parallel,
        context_per_slot: args.ctx_size,
        threads: args.threads.unwrap_or_else(hearth_engine::default_threads),
        kv_unified: args.kv_unified,
        cpu_gate: args.cpu_gate.clone(),
        ..EngineConfig::default()
    };
    Ok(Engine::start(Arc::new(model), config)?)
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

/// One prompt's sequences, waiting for the preparing thread.
struct Job {
    ids: Vec<u64>,
    prompt: Arc<PromptSpec>,
    choices: Vec<GenerationParams>,
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
    engine: Engine,
    template: Option<ChatTemplate>,
    outbox: Outbox,
    sequences: Sequences,
}

fn lock(sequences: &Sequences) -> std::sync::MutexGuard<'_, HashMap<u64, SequenceState>> {
    sequences.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
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

    /// Render and tokenize once, then prepare and submit every choice. A panic here (a bug)
    /// fails this request's sequences, not the worker.
    fn prepare_and_submit(&self, job: Job) {
        let ids = job.ids.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_job(job)));
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
        // Just deserialised, the prompt has no other owner: unwrapping it copies nothing.
        let tokens = self.tokenize(Arc::unwrap_or_clone(job.prompt))?;
        // Validate every choice before accepting any, so a request fails as a whole.
        let mut prepared = Vec::with_capacity(job.choices.len());
        for params in job.choices {
            let with_logprobs = params.top_logprobs.is_some();
            let request = generation_request(tokens.clone(), params);
            let param = if request.format.is_some() {
                "response_format"
            } else {
                "prompt"
            };
            let ready = self
                .engine
                .prepare(request)
                .map_err(|e| engine_error(e, param))?;
            prepared.push((ready, with_logprobs));
        }
        for (id, (ready, with_logprobs)) in job.ids.into_iter().zip(prepared) {
            self.submit(id, ready, with_logprobs)?;
        }
        Ok(())
    }

    fn tokenize(&self, prompt: PromptSpec) -> Result<Vec<u32>, ApiError> {
        let model = self.engine.model();
        Ok(match prompt {
            PromptSpec::Chat { messages, tools } => {
                let template = self.template.as_ref().ok_or_else(|| {
                    ApiError::invalid_request(
                        "this model has no chat template; use /v1/completions",
                        Some("messages"),
                    )
                })?;
                if tools.is_some() && !template.supports_tools() {
                    return Err(ApiError::invalid_request(
                        "this model's chat template cannot express tools; send the request \
                         without 'tools' or use a model whose template supports them",
                        Some("tools"),
                    ));
                }
                let text = template
                    .render(&TemplateInput {
                        messages,
                        tools,
                        add_generation_prompt: true,
                    })
                    .map_err(|e| engine_error(e, "messages"))?;
                // Templates write BOS themselves (HF tokenizes chat with add_special_tokens=False).
                model.tokenize(&text, false, true)
            }
            PromptSpec::Text(text) => model.tokenize(&text, true, false),
            PromptSpec::Tokens(tokens) => tokens,
        })
    }

    /// Tell the orchestrator the sequence is accepted and hand it to the engine, unless it
    /// was cancelled while being prepared.
    fn submit(
        &self,
        id: u64,
        prepared: PreparedRequest,
        with_logprobs: bool,
    ) -> Result<(), ApiError> {
        let model = self.engine.model().clone();
        let outbox = self.outbox.clone();
        let sequences = self.sequences.clone();
        let prompt_tokens = prepared.prompt_len();
        let sink = Box::new(move |event: Event| {
            let message = match event {
                Event::Delta { text, tokens } => FromWorker::Delta {
                    id,
                    text,
                    token_count: tokens.len(),
                    tokens: if with_logprobs {
                        tokens.iter().map(|t| token_output(&model, t)).collect()
                    } else {
                        vec![]
                    },
                },
                Event::Done {
                    finish_reason,
                    usage,
                } => {
                    lock(&sequences).remove(&id);
                    FromWorker::Done {
                        id,
                        finish_reason: finish_reason.as_str().to_owned(),
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
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
            .engine
            .submit_prepared(prepared, sink)
            .map_err(|e| engine_error(e, "prompt"))?;
        sequences.insert(id, SequenceState::Running(engine_id));
        Ok(())
    }

    fn cancel(&self, id: u64) {
        let mut sequences = lock(&self.sequences);
        match sequences.get(&id).copied() {
            Some(SequenceState::Running(engine_id)) => {
                sequences.remove(&id);
                drop(sequences);
                self.engine.cancel(engine_id);
            }
            Some(SequenceState::Preparing) => {
                sequences.insert(id, SequenceState::Cancelled);
            }
            Some(SequenceState::Cancelled) | None => {}
        }
    }

    fn pong(&self, nonce: u64) {
        let stats = self.engine.stats();
        let (grammars_compiled, grammar_cache_hits) = self.engine.model().grammar_counters();
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
                },
            },
        );
    }
}

/// The engine's request for one choice: the wire parameters mapped onto the engine's.
fn generation_request(prompt: Vec<u32>, params: GenerationParams) -> GenerationRequest {
    GenerationRequest {
        prompt,
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
