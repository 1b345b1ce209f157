//! `/v1/chat/completions`: request, response and stream chunk.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::logprobs::ChatLogprobs;
use crate::params::{GenerationParams, SamplingFields, MAX_TOP_LOGPROBS};

#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Filled by `parse_request` from the same body.
    #[serde(skip)]
    pub sampling: SamplingFields,
    pub max_completion_tokens: Option<u32>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
}

/// A string, or a list of parts of which text parts are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

impl ChatCompletionRequest {
    /// Validate everything that does not need the model, and produce the generation params.
    pub fn params(&self) -> Result<GenerationParams, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_value(
                "messages",
                "messages must not be empty",
            ));
        }
        let top_logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (_, Some(n)) if n > MAX_TOP_LOGPROBS => {
                return Err(ApiError::invalid_value(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
                ))
            }
            (false, Some(_)) => {
                return Err(ApiError::invalid_value(
                    "top_logprobs",
                    "top_logprobs requires logprobs to be true",
                ))
            }
            (true, n) => Some(n.unwrap_or(0) as usize),
            (false, None) => None,
        };
        let max = self.max_completion_tokens.or(self.sampling.max_tokens);
        let param = if self.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        self.sampling.to_params(max, top_logprobs).map_err(|mut e| {
            if e.param.as_deref() == Some("max_tokens") {
                e.param = Some(param.to_owned());
            }
            e
        })
    }

    /// Messages as the chat template sees them: content flattened to text.
    pub fn template_messages(&self) -> Result<Vec<Value>, ApiError> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !ROLES.contains(&m.role.as_str()) {
                    return Err(ApiError::invalid_value(
                        &format!("messages[{i}].role"),
                        format!("unknown role '{}'; expected one of {}", m.role, ROLES.join(", ")),
                    ));
                }
                let content = match &m.content {
                    None => String::new(),
                    Some(MessageContent::Text(t)) => t.clone(),
                    Some(MessageContent::Parts(parts)) => {
                        let mut texts = Vec::new();
                        for (j, part) in parts.iter().enumerate() {
                            match (part.kind.as_str(), &part.text) {
                                ("text", Some(text)) => texts.push(text.as_str()),
                                ("text", None) => {
                                    return Err(ApiError::invalid_value(
                                        &format!("messages[{i}].content[{j}].text"),
                                        "a text part needs text",
                                    ))
                                }
                                (kind, _) => {
                                    return Err(ApiError::invalid_value(
                                        &format!("messages[{i}].content[{j}].type"),
                                        format!("content parts of type '{kind}' are not supported by this model"),
                                    ))
                                }
                            }
                        }
                        texts.join("\n")
                    }
                };
                // "developer" is OpenAI's newer name for the system role.
                let role = if m.role == "developer" { "system" } else { m.role.as_str() };
                let mut message = serde_json::json!({"role": role, "content": content});
                if let Some(name) = &m.name {
                    message["name"] = Value::String(name.clone());
                }
                if let Some(calls) = &m.tool_calls {
                    message["tool_calls"] = calls.clone();
                }
                if let Some(id) = &m.tool_call_id {
                    message["tool_call_id"] = Value::String(id.clone());
                }
                Ok(message)
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    /// Present (null) on every chunk when usage was asked for; set on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}
