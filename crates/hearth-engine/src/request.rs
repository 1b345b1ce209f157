//! What goes into the engine (a request) and what comes out (events).

pub use hearth_api::Priority;
use serde::{Deserialize, Serialize};

use crate::sampling::{SamplingParams, TokenLogprobs};
use crate::structured::OutputFormat;
use crate::vision::PromptMedia;

/// Identifies a submitted request for cancellation.
pub type RequestId = u64;

/// One sequence to generate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenerationRequest {
    /// Prompt tokens (see `Model::tokenize` and `ChatTemplate`); an image's cells hold
    /// placeholder tokens (`vision::placeholders`).
    pub prompt: Vec<u32>,
    /// The prompt's images, in order, each over its placeholders.
    #[serde(skip)]
    pub media: Vec<PromptMedia>,
    pub sampling: SamplingParams,
    /// `None` generates until an end-of-turn token or the end of the context.
    pub max_tokens: Option<usize>,
    /// Up to four stop strings; text is cut before the first match.
    pub stop: Vec<String>,
    /// Constrain the output to JSON (grammar-masked decoding).
    #[serde(default)]
    pub format: Option<OutputFormat>,
    /// Waiting requests run in priority order; with pre-emption on, a high one pauses the
    /// newest lowest-priority sequence when every slot is busy.
    #[serde(default)]
    pub priority: Priority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-turn token.
    Stop,
    /// The request's stop string with this index matched (reported as "stop" to OpenAI
    /// clients; Anthropic's name it).
    StopString(usize),
    /// max_tokens reached or the context is full.
    Length,
    /// The caller cancelled or went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop | FinishReason::StopString(_) => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens found in the prompt cache (not prefilled again).
    #[serde(default)]
    pub cached_tokens: usize,
}

/// A token the model produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedToken {
    pub id: u32,
    pub logprobs: Option<TokenLogprobs>,
}

/// Events of one request, in order: any number of deltas, then exactly one `Done` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// New text (complete UTF-8, never part of a stop string) and the tokens sampled since
    /// the last delta. Text can lag tokens while a stop string might still match.
    Delta {
        text: String,
        tokens: Vec<GeneratedToken>,
    },
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    Error(String),
}

impl Event {
    pub fn is_final(&self) -> bool {
        !matches!(self, Event::Delta { .. })
    }
}
