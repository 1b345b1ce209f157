//! `hearth worker` (hidden): one model in its own process, driven by the orchestrator over
//! a Unix socket. A thin loop around the engine: frames in, engine calls, events out.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hearth_api::format::JsonFormat;
use hearth_api::logprobs::{TokenOutput, TopToken};
use hearth_api::{ApiError, GenerationParams};
use hearth_engine::{
    model_chat_template, ChatTemplate, Engine, EngineConfig, EngineError, Event, GeneratedToken,
    GenerationRequest, LoadOptions, Model, OutputFormat, RequestId, SamplingParams, TemplateInput,
};
use hearth_ipc::{
    read_frame, write_frame, FromWorker, PromptSpec, ToWorker, WorkerReady, WorkerStatus,
};

use crate::cli::WorkerArgs;

/// Frames to the orchestrator come from two threads (this one and the engine's).
type Outbox = Arc<Mutex<UnixStream>>;

pub fn run(args: WorkerArgs) -> Result<()> {
    set_process_name(&format!("hearth-worker-{}", args.model_id));
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
    let worker = Worker {
        engine,
        template,
        outbox,
        ids: Arc::new(Mutex::new(HashMap::new())),
    };
    let mut reader = BufReader::new(stream);
    // The orchestrator closing the socket is our signal to exit.
    while let Some(message) = read_frame::<_, ToWorker>(&mut reader)? {
        match message {
            ToWorker::Generate { id, prompt, params } => worker.generate(id, prompt, *params),
            ToWorker::Cancel { id } => worker.cancel(id),
            ToWorker::Ping { nonce } => worker.pong(nonce),
            ToWorker::Shutdown => break,
        }
    }
    Ok(())
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

struct Worker {
    engine: Engine,
    template: Option<ChatTemplate>,
    outbox: Outbox,
    /// Orchestrator request id → engine request id, while the request runs.
    ids: Arc<Mutex<HashMap<u64, RequestId>>>,
}

impl Worker {
    fn generate(&self, id: u64, prompt: PromptSpec, params: GenerationParams) {
        if let Err(error) = self.try_generate(id, prompt, params) {
            send(
                &self.outbox,
                &FromWorker::Failed {
                    id,
                    status: error.status,
                    error,
                },
            );
        }
    }

    fn try_generate(
        &self,
        id: u64,
        prompt: PromptSpec,
        params: GenerationParams,
    ) -> Result<(), ApiError> {
        let model = self.engine.model().clone();
        let tokens = match prompt {
            PromptSpec::Chat { messages, tools } => {
                let template = self.template.as_ref().ok_or_else(|| {
                    ApiError::invalid_request(
                        "this model has no chat template; use /v1/completions",
                        Some("messages"),
                    )
                })?;
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
        };
        let with_logprobs = params.top_logprobs.is_some();
        let request = GenerationRequest {
            prompt: tokens,
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
        };
        let param = if request.format.is_some() {
            "response_format"
        } else {
            "prompt"
        };
        let prepared = self
            .engine
            .prepare(request)
            .map_err(|e| engine_error(e, param))?;
        send(
            &self.outbox,
            &FromWorker::Accepted {
                id,
                prompt_tokens: prepared.prompt_len(),
            },
        );
        let outbox = self.outbox.clone();
        let ids = self.ids.clone();
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
                    ids.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    FromWorker::Done {
                        id,
                        finish_reason: finish_reason.as_str().to_owned(),
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                    }
                }
                Event::Error(message) => {
                    ids.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
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
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let engine_id = self
            .engine
            .submit_prepared(prepared, sink)
            .map_err(|e| engine_error(e, "prompt"))?;
        ids.insert(id, engine_id);
        Ok(())
    }

    fn cancel(&self, id: u64) {
        let engine_id = self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(engine_id) = engine_id {
            self.engine.cancel(engine_id);
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
        EngineError::InvalidRequest(message) => ApiError::invalid_request(message, Some(param)),
        EngineError::Template(message) => {
            ApiError::invalid_request(format!("chat template error: {message}"), Some("messages"))
        }
        other => ApiError::internal(other.to_string()),
    }
}
