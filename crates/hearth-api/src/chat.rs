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
    pub tool_choice: Option<Value>,
    /// Legacy function calling; refused until tool calls are parsed.
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    /// Output modalities: only `["text"]` is served.
    pub modalities: Option<Value>,
    /// Audio output settings: refused, no audio is generated.
    pub audio: Option<Value>,
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

    /// Features this server does not offer are refused by name rather than ignored; returns
    /// the tool definitions the template should see (none when `tool_choice` is "none").
    pub fn tools_for_template(&self) -> Result<Option<Vec<Value>>, ApiError> {
        for (param, value) in [
            ("functions", &self.functions),
            ("function_call", &self.function_call),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::invalid_value(
                    param,
                    format!("'{param}' (legacy function calling) is not supported; use 'tools'"),
                ));
            }
        }
        if self.audio.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid_value(
                "audio",
                "audio output is not supported: this server generates text only",
            ));
        }
        if let Some(modalities) = self.modalities.as_ref().filter(|v| !v.is_null()) {
            let text_only = modalities
                .as_array()
                .is_some_and(|m| !m.is_empty() && m.iter().all(|v| v == "text"));
            if !text_only {
                return Err(ApiError::invalid_value(
                    "modalities",
                    "only the \"text\" modality is supported",
                ));
            }
        }
        let choice = self.tool_choice.as_ref().filter(|v| !v.is_null());
        match choice.map(|c| c.as_str()) {
            None | Some(Some("auto")) => {}
            Some(Some("none")) => return Ok(None),
            Some(_) => {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    "tool_choice may be \"auto\" or \"none\" here: forcing a tool call is not supported yet",
                ))
            }
        }
        let Some(tools) = &self.tools else {
            if choice.is_some() {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    "tool_choice is only allowed when tools are given",
                ));
            }
            return Ok(None);
        };
        for (i, tool) in tools.iter().enumerate() {
            let named = tool.get("type").and_then(Value::as_str) == Some("function")
                && tool
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
            if !named {
                return Err(ApiError::invalid_value(
                    &format!("tools[{i}]"),
                    "each tool must be {\"type\": \"function\", \"function\": {\"name\": …}}",
                ));
            }
        }
        Ok(Some(tools.clone()))
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
