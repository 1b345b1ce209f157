//! Token log-probabilities: the neutral form a worker reports, and OpenAI's two wire forms
//! (chat's `logprobs.content[]`, completions' parallel arrays).

use serde::{Deserialize, Serialize};

/// One token as a worker reports it, with its text already decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenOutput {
    pub id: u32,
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: Option<f32>,
    /// Most likely alternatives, best first.
    pub top: Vec<TopToken>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopToken {
    pub id: u32,
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Chat: `choices[].logprobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a TokenOutput>) -> ChatLogprobs {
        ChatLogprobs {
            content: tokens
                .into_iter()
                .filter_map(|t| {
                    Some(ChatTokenLogprob {
                        token: t.text.clone(),
                        logprob: t.logprob?,
                        bytes: t.bytes.clone(),
                        top_logprobs: t
                            .top
                            .iter()
                            .map(|a| ChatTopLogprob {
                                token: a.text.clone(),
                                logprob: a.logprob,
                                bytes: a.bytes.clone(),
                            })
                            .collect(),
                    })
                })
                .collect(),
        }
    }
}

/// Completions: `choices[].logprobs` (the legacy parallel-array form).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// `offset` is where the first token's text starts in the choice's text.
    pub fn push(&mut self, token: &TokenOutput, offset: usize) {
        let Some(logprob) = token.logprob else {
            return;
        };
        self.tokens.push(token.text.clone());
        self.token_logprobs.push(logprob);
        self.top_logprobs.push(
            token
                .top
                .iter()
                .map(|a| (a.text.clone(), serde_json::json!(a.logprob)))
                .collect(),
        );
        self.text_offset.push(offset);
    }
}
