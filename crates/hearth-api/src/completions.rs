//! `/v1/completions`: request, response and stream chunk.

use serde::{Deserialize, Serialize};

use crate::chat::Usage;
use crate::error::ApiError;
use crate::logprobs::CompletionLogprobs;
use crate::params::{GenerationParams, SamplingFields};

/// Most alternatives the legacy completions API allows.
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "default", "prompt": "Once upon a time", "max_tokens": 8}))]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptInput,
    /// Filled by `parse_request` from the same body.
    #[serde(skip)]
    pub sampling: SamplingFields,
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<u32>,
}

/// A string, a list of strings, a token list, or a list of token lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One prompt to complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl CompletionRequest {
    pub fn params(&self) -> Result<GenerationParams, ApiError> {
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_value("suffix", "suffix is not supported"));
        }
        if self.echo.unwrap_or(false) {
            return Err(ApiError::invalid_value("echo", "echo is not supported"));
        }
        if let Some(best_of) = self.best_of {
            if best_of != self.sampling.n.unwrap_or(1) {
                return Err(ApiError::invalid_value("best_of", "best_of must equal n"));
            }
        }
        let logprobs = match self.logprobs {
            Some(n) if n > MAX_COMPLETION_LOGPROBS => {
                return Err(ApiError::invalid_value(
                    "logprobs",
                    format!("logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {n}"),
                ))
            }
            other => other.map(|n| n as usize),
        };
        // OpenAI's completions default is 16 tokens.
        self.sampling
            .to_params(Some(self.sampling.max_tokens.unwrap_or(16)), logprobs)
    }

    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        let prompts: Vec<Prompt> = match &self.prompt {
            PromptInput::Text(t) => vec![Prompt::Text(t.clone())],
            PromptInput::Texts(ts) => ts.iter().cloned().map(Prompt::Text).collect(),
            PromptInput::Tokens(ts) => vec![Prompt::Tokens(ts.clone())],
            PromptInput::TokenLists(ls) => ls.iter().cloned().map(Prompt::Tokens).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid_value(
                "prompt",
                "prompt must not be empty",
            ));
        }
        if prompts.len() > 16 {
            return Err(ApiError::invalid_value(
                "prompt",
                "at most 16 prompts per request",
            ));
        }
        Ok(prompts)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}
