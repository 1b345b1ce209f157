//! Messages between the orchestrator and a worker.

use hearth_api::embeddings::EmbedInput;
use hearth_api::logprobs::TokenOutput;
use hearth_api::tools::{ToolCallDelta, ToolUse};
use hearth_api::{ApiError, GenerationParams, Priority};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

use crate::codec::{FrameIds, Framed};
use crate::media::MediaBytes;

/// What to generate from: the worker owns the tokenizer and chat template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PromptSpec {
    Chat {
        messages: Vec<Value>,
        /// Tool definitions as the template renders them (OpenAI's shape).
        tools: Option<Vec<Value>>,
        /// How calls are made and reported, when tools were given.
        #[serde(default)]
        tool_use: Option<ToolUse>,
        /// The images the messages' markers stand for, in order (see `image_marker`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        images: Vec<MediaBytes>,
        /// The text standing for the `k`-th image in the messages is this followed by `k`
        /// and `>`: chosen at random per request, so no text a client writes can pose as one.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        image_marker: String,
        /// What the images hold on the orchestrator's side while the request lives.
        #[serde(skip)]
        keep: crate::media::Keep,
    },
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// One prompt, rendered and tokenized once, generated once per entry of `choices`: the
    /// sequences get ids `id`, `id + 1`, … in order.
    Generate {
        id: u64,
        /// Shared with the request that keeps it for a retry (serialised as the value).
        prompt: Arc<PromptSpec>,
        choices: Vec<GenerationParams>,
        /// The request's `X-Priority`: a high one may pause lower-priority sequences.
        #[serde(default)]
        priority: Priority,
    },
    Cancel {
        id: u64,
    },
    /// Render (chat) and tokenize a prompt; answered by `Tokenized` or `Failed`.
    Tokenize {
        id: u64,
        prompt: PromptSpec,
        /// Text prompts: add the model's BOS/EOS as it wants them.
        add_special: bool,
        /// Send each token's bytes back too.
        #[serde(default)]
        with_pieces: bool,
    },
    /// Token ids to text; answered by `Detokenized` or `Failed`.
    Detokenize {
        id: u64,
        tokens: Vec<u32>,
    },
    /// Sentence embeddings of `inputs`; answered by `Embedded` or `Failed`.
    Embed {
        id: u64,
        inputs: Vec<EmbedInput>,
    },
    Ping {
        nonce: u64,
    },
    /// Finish nothing more; exit.
    Shutdown,
}

/// Sent once, after the model loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReady {
    pub pid: u32,
    pub architecture: String,
    pub vocab_size: u32,
    /// Context tokens per sequence.
    pub context_per_slot: u32,
    pub slots: usize,
    pub size_bytes: u64,
    /// The GGUF's pooling for embeddings (`mean`, `cls`, …); `None` for generative models.
    #[serde(default)]
    pub pooling: Option<String>,
    /// False for encoders (BERT), which embed and do not generate.
    #[serde(default = "causal_default")]
    pub causal: bool,
    /// A vision projector is loaded: chat prompts may hold images.
    #[serde(default)]
    pub vision: bool,
    /// Layers offloaded to GPUs, of `layers`.
    #[serde(default)]
    pub gpu_layers: u32,
    #[serde(default)]
    pub layers: u32,
    /// GPU memory the worker took while loading (the drop in the GPUs' free memory).
    #[serde(default)]
    pub vram_bytes: u64,
}

/// One GPU's memory, as a worker sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuMemory {
    /// Backend name (`CUDA0`).
    pub name: String,
    /// What the driver calls it.
    pub description: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

fn causal_default() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub running: usize,
    pub waiting: usize,
    pub slots: usize,
    pub kv_used: usize,
    pub kv_capacity: usize,
    /// Structured-output grammars compiled, and requests that reused a cached one.
    pub grammars_compiled: u64,
    pub grammar_cache_hits: u64,
    /// Engine steps so far; unchanged while requests run means the engine is stuck.
    #[serde(default)]
    pub steps: u64,
    /// Sequences paused for high-priority ones now, and pauses so far.
    #[serde(default)]
    pub paused: usize,
    #[serde(default)]
    pub preemptions: u64,
    /// Sequences moved between slots to keep the running ones consecutive.
    #[serde(default)]
    pub slot_moves: u64,
    /// Tokens the GPU chose itself (greedy requests, `--greedy-on-device`).
    #[serde(default)]
    pub device_choices: u64,
    /// Prompt caches in host memory.
    #[serde(default)]
    pub host_cache_bytes: usize,
    #[serde(default)]
    pub host_cache_entries: usize,
    /// Tokens of KV each slot holds (running or cached), by slot.
    #[serde(default)]
    pub slot_tokens: Vec<usize>,
    /// The GPUs the worker sees, and their memory now.
    #[serde(default)]
    pub gpus: Vec<GpuMemory>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    Ready(WorkerReady),
    /// The request passed validation and was queued; `prompt_tokens` is its length.
    Accepted {
        id: u64,
        prompt_tokens: usize,
    },
    Delta {
        id: u64,
        /// New content (never reasoning text or call syntax).
        text: String,
        /// New `<think>` text, for models that reason before answering.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reasoning: String,
        /// New pieces of tool calls.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallDelta>,
        /// Per-token detail, sent only when logprobs were asked for.
        tokens: Vec<TokenOutput>,
        /// Tokens behind this text (always sent: latency metrics count them).
        #[serde(default)]
        token_count: usize,
    },
    Done {
        id: u64,
        finish_reason: String,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens taken from the prompt cache.
        #[serde(default)]
        cached_tokens: usize,
        /// Which of the request's stop strings ended it, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_index: Option<usize>,
    },
    /// The request failed; `status` is the HTTP status the client should see.
    Failed {
        id: u64,
        status: u16,
        error: ApiError,
    },
    Pong {
        nonce: u64,
        status: WorkerStatus,
    },
    /// The tokens of a `Tokenize` prompt, and each one's bytes (a piece may be part of a
    /// character).
    Tokenized {
        id: u64,
        tokens: Vec<u32>,
        pieces: Vec<Vec<u8>>,
    },
    Detokenized {
        id: u64,
        text: String,
    },
    /// One unit-length vector of `dims` floats per input, in order, as base64 of their
    /// little-endian bytes (a frame's JSON would be ~3x larger as numbers).
    Embedded {
        id: u64,
        dims: usize,
        vectors: String,
        prompt_tokens: usize,
    },
    /// The worker cannot serve (the model failed to load) and is exiting.
    Fatal {
        message: String,
    },
}

impl PromptSpec {
    /// The images a prompt carries.
    pub fn images(&self) -> &[MediaBytes] {
        match self {
            PromptSpec::Chat { images, .. } => images,
            _ => &[],
        }
    }
}

/// The text standing for image `k` in a chat prompt's messages.
pub fn image_marker_text(marker: &str, k: usize) -> String {
    format!("{marker}{k}>")
}

impl ToWorker {
    /// Descriptors that travel with this message (its images' shared memory).
    pub fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        match self {
            ToWorker::Generate { prompt, .. } => crate::media::media_fds(prompt.images()),
            _ => Vec::new(),
        }
    }
}

impl Framed for ToWorker {
    fn frame_ids(&self) -> FrameIds {
        match self {
            ToWorker::Generate { id, choices, .. } => FrameIds {
                first: *id,
                count: u32::try_from(choices.len()).unwrap_or(u32::MAX),
            },
            ToWorker::Cancel { id }
            | ToWorker::Tokenize { id, .. }
            | ToWorker::Detokenize { id, .. }
            | ToWorker::Embed { id, .. } => FrameIds::one(*id),
            ToWorker::Ping { .. } | ToWorker::Shutdown => FrameIds::NONE,
        }
    }
}

impl Framed for FromWorker {
    fn frame_ids(&self) -> FrameIds {
        match self {
            FromWorker::Accepted { id, .. }
            | FromWorker::Delta { id, .. }
            | FromWorker::Done { id, .. }
            | FromWorker::Failed { id, .. }
            | FromWorker::Tokenized { id, .. }
            | FromWorker::Detokenized { id, .. }
            | FromWorker::Embedded { id, .. } => FrameIds::one(*id),
            FromWorker::Ready(_) | FromWorker::Pong { .. } | FromWorker::Fatal { .. } => {
                FrameIds::NONE
            }
        }
    }
}
