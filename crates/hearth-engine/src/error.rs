//! The engine's error type: every failure a caller can act on, with a message a user can read.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file not found: {0}")]
    ModelNotFound(PathBuf),
    #[error("cannot read model file {path}: {reason}")]
    ModelUnreadable { path: PathBuf, reason: String },
    #[error("{path} is not a GGUF model file ({reason})")]
    NotGguf { path: PathBuf, reason: String },
    #[error("llama.cpp could not load {0} (truncated or corrupt GGUF, unsupported architecture, or out of memory)")]
    LoadFailed(PathBuf),
    #[error("cannot load the vision projector {path}: {reason}")]
    ProjectorFailed { path: PathBuf, reason: String },
    /// An image that cannot be decoded or read by the projector (a 400 for its request).
    #[error("the image cannot be read: {0}")]
    BadImage(String),
    /// `--gpu-layers auto` found no placement that fits.
    #[error("{path} does not fit this machine: {reason}")]
    DoesNotFit { path: PathBuf, reason: String },
    #[error("could not create an inference context: {0}")]
    ContextFailed(String),
    #[error("the model has no chat template; use a raw completion or supply a template")]
    NoChatTemplate,
    #[error("chat template error: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("prompt is {prompt_tokens} tokens, but the context of this model allows {context_tokens} tokens per sequence")]
    ContextLengthExceeded {
        prompt_tokens: usize,
        context_tokens: usize,
    },
    #[error("prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is more than the {context_tokens} tokens of context this model allows per sequence")]
    CompletionExceedsContext {
        prompt_tokens: usize,
        max_tokens: usize,
        context_tokens: usize,
    },
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("the engine has stopped")]
    EngineStopped,
    #[error("cancelled")]
    Cancelled,
    /// A generative model asked for embeddings without a pooling to make them with.
    #[error("this model does not make embeddings: its GGUF names no pooling (a generative model); serve it with --pooling mean, cls or last")]
    NoPooling,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
