//! hearth's engine: a GGUF model on llama.cpp, chat templates, Rust sampling, and a
//! continuous-batching scheduler behind a submit/stream/cancel API.

mod backend;
mod cpu_gate;
pub mod detok;
pub mod embed;
mod engine;
mod error;
pub mod exec;
pub mod gguf;
mod handoff;
mod host_cache;
mod model;
pub mod placement;
mod pyjson;
mod pyvalue;
mod request;
pub mod sampling;
mod scheduler;
mod step_times;
pub mod stop;
mod structured;
mod template;
pub mod tools;
pub mod vision;

pub use engine::{
    default_threads, Engine, EngineConfig, EngineStats, EventSink, FlashAttention, PreparedRequest,
    Preparing, RequestHandle, StatsSnapshot,
};
pub use error::{EngineError, Result};
pub use model::{LoadOptions, Model, ModelInfo, Offload};
pub use placement::{
    CacheType, ContextShape, Device, GpuLayers, Placement, SplitMode, TensorSplit,
};
pub use request::{
    Event, FinishReason, GeneratedToken, GenerationRequest, Priority, RequestId, Usage,
};
pub use sampling::{SamplingParams, TokenLogprobs};
pub use step_times::StepTimes;
pub use structured::{
    Constraint, GrammarCompiler, LazyGrammar, OutputFormat, GRAMMAR_CACHE_CAPACITY,
};
pub use template::{ChatTemplate, TemplateInput};
pub use vision::{ImageLimits, Projector, PromptImage, PromptMedia};

/// The chat template stored in a model, ready to render.
pub fn model_chat_template(model: &Model) -> Result<ChatTemplate> {
    let info = model.info();
    let source = info
        .chat_template
        .as_deref()
        .ok_or(EngineError::NoChatTemplate)?;
    ChatTemplate::new(
        source,
        &model.token_text(info.bos_token),
        &model.token_text(info.eos_token),
    )
}
