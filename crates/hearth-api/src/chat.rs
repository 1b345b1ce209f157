//! `/v1/chat/completions`: request, response and stream chunk.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::logprobs::ChatLogprobs;
use crate::params::{GenerationParams, SamplingFields, MAX_TOP_LOGPROBS};
use crate::tools::{parse_tools, FunctionCall, ToolCall, ToolFields, ToolUse};

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "default", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}))]
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
    pub parallel_tool_calls: Option<bool>,
    /// Legacy function calling, mapped onto `tools`.
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    /// Output modalities: only `["text"]` is served.
    pub modalities: Option<Value>,
    /// Audio output settings: refused, no audio is generated.
    pub audio: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
    /// Legacy: an assistant's one call (`functions` API).
    pub function_call: Option<Value>,
}

/// A string, or a list of parts of which text parts are read.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `{"url": …, "detail": …}` (or the URL alone): a `data:` URL, an http(s) URL, or a
    /// `file://` URL under the server's `--allowed-media-dir`.
    #[schema(value_type = Option<Object>)]
    pub image_url: Option<Value>,
}

/// An image part of a chat request: where it is (for errors) and its URL.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePart {
    /// `messages[i].content[j].image_url`.
    pub param: String,
    pub url: String,
}

/// The URL of an image part, checked for shape.
fn image_url(value: Option<&Value>, param: &str) -> Result<String, ApiError> {
    let (url, detail) = match value {
        Some(Value::String(url)) => (Some(url.as_str()), None),
        Some(Value::Object(object)) => (
            object.get("url").and_then(Value::as_str),
            object.get("detail"),
        ),
        _ => (None, None),
    };
    let Some(url) = url.filter(|u| !u.is_empty()).map(str::to_owned) else {
        return Err(ApiError::invalid_value(
            param,
            "an image_url part needs image_url.url: a data: URL, an http(s) URL or a file:// URL",
        ));
    };
    // Detail tells OpenAI's models how many tiles to read; ours read an image one way.
    match detail {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) if ["auto", "low", "high"].contains(&d.as_str()) => {}
        Some(_) => {
            return Err(ApiError::invalid_value(
                &format!("{param}.detail"),
                "detail must be one of auto, low, high",
            ))
        }
    }
    Ok(url)
}

/// Messages (and content parts) per request.
pub const MAX_MESSAGES: usize = 2048;

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

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
    /// the tool definitions the template sees and how calls are made, when tools are given.
    pub fn tool_use(&self) -> Result<Option<(Vec<Value>, ToolUse)>, ApiError> {
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
        let tools = parse_tools(ToolFields {
            tools: self.tools.as_ref(),
            tool_choice: self.tool_choice.as_ref(),
            parallel_tool_calls: self.parallel_tool_calls,
            functions: self.functions.as_ref(),
            function_call: self.function_call.as_ref(),
        })?;
        if let Some((_, tool_use)) = &tools {
            let constrained = self.sampling.response_format.as_ref().is_some_and(|f| {
                f.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != "text")
            }) || self.sampling.guided.is_set();
            if constrained && tool_use.calls_possible() {
                return Err(ApiError::invalid_value(
                    "response_format",
                    "response_format (or guided_*) cannot be combined with tool calls; \
                     send tool_choice \"none\" or leave the format out",
                ));
            }
        }
        Ok(tools)
    }

    /// Messages as the chat template sees them: content flattened to text. Image parts are
    /// refused (see `template_messages_with_images`).
    pub fn template_messages(&self) -> Result<Vec<Value>, ApiError> {
        self.render_messages(None).map(|(messages, _)| messages)
    }

    /// Messages as the chat template sees them, each image part replaced by `marker`, its
    /// number and `>` (joined to the text parts around it by newlines, as text parts are),
    /// and the images in order. Images are read in user messages only.
    pub fn template_messages_with_images(
        &self,
        marker: &str,
    ) -> Result<(Vec<Value>, Vec<ImagePart>), ApiError> {
        self.render_messages(Some(marker))
    }

    /// Whether any message holds an image part.
    pub fn has_images(&self) -> bool {
        self.messages.iter().any(|m| match &m.content {
            Some(MessageContent::Parts(parts)) => parts.iter().any(|p| p.kind == "image_url"),
            _ => false,
        })
    }

    fn render_messages(
        &self,
        marker: Option<&str>,
    ) -> Result<(Vec<Value>, Vec<ImagePart>), ApiError> {
        // Rendering a template costs more than linear time in the number of messages (20k
        // took 5 s, 100k minutes, in the worker, whatever the prompt's length in tokens):
        // bound them, and their parts, well above any conversation a context can hold.
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid_value(
                "messages",
                format!(
                    "at most {MAX_MESSAGES} messages per request (got {})",
                    self.messages.len()
                ),
            ));
        }
        let parts: usize = self
            .messages
            .iter()
            .map(|m| match &m.content {
                Some(MessageContent::Parts(parts)) => parts.len(),
                _ => 0,
            })
            .sum();
        if parts > MAX_MESSAGES {
            return Err(ApiError::invalid_value(
                "messages",
                format!("at most {MAX_MESSAGES} content parts per request (got {parts})"),
            ));
        }
        // (call id, function name) of the calls seen so far, for tool messages.
        let mut call_names: Vec<(String, String)> = Vec::new();
        let mut images = Vec::new();
        let messages = self.messages
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
                        let mut texts: Vec<std::borrow::Cow<'_, str>> = Vec::new();
                        for (j, part) in parts.iter().enumerate() {
                            match (part.kind.as_str(), &part.text) {
                                ("text", Some(text)) => texts.push(text.into()),
                                ("image_url", _) => {
                                    let param = format!("messages[{i}].content[{j}].image_url");
                                    let Some(marker) = marker else {
                                        return Err(ApiError::invalid_value(
                                            &format!("messages[{i}].content[{j}].type"),
                                            "image parts are not supported by this endpoint",
                                        ));
                                    };
                                    if m.role != "user" {
                                        return Err(ApiError::invalid_value(
                                            &format!("messages[{i}].content[{j}].type"),
                                            "images are read in user messages only",
                                        ));
                                    }
                                    let url = image_url(part.image_url.as_ref(), &param)?;
                                    texts.push(format!("{marker}{}>", images.len()).into());
                                    images.push(ImagePart { param, url });
                                }
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
                // "developer" is OpenAI's newer name for the system role; the legacy
                // "function" role is a tool result.
                let role = match m.role.as_str() {
                    "developer" => "system",
                    "function" => "tool",
                    other => other,
                };
                let mut message = serde_json::json!({"role": role, "content": content});
                if let Some(name) = &m.name {
                    message["name"] = Value::String(name.clone());
                }
                // The legacy `function_call` is a tool call with an id of ours, which the
                // next `function` message answers.
                let legacy_call = m
                    .function_call
                    .as_ref()
                    .filter(|c| !c.is_null() && m.tool_calls.is_none());
                let legacy_calls = legacy_call.map(|call| {
                    serde_json::json!([{"id": format!("call_fn{i}"), "type": "function", "function": call}])
                });
                let tool_calls = m.tool_calls.as_ref().or(legacy_calls.as_ref());
                if let Some(calls) = tool_calls.filter(|c| !c.is_null()) {
                    if m.role != "assistant" {
                        return Err(ApiError::invalid_value(
                            &format!("messages[{i}].tool_calls"),
                            "only assistant messages carry tool_calls",
                        ));
                    }
                    let calls = template_tool_calls(i, calls)?;
                    for call in &calls {
                        if let (Some(id), Some(name)) = (
                            call.get("id").and_then(Value::as_str),
                            call.pointer("/function/name").and_then(Value::as_str),
                        ) {
                            call_names.push((id.to_owned(), name.to_owned()));
                        }
                    }
                    message["tool_calls"] = Value::Array(calls);
                }
                if m.role == "function" {
                    let name = m.name.as_deref().unwrap_or_default();
                    let id = call_names
                        .iter()
                        .rev()
                        .find(|(id, called)| id.starts_with("call_fn") && (called == name || name.is_empty()))
                        .map(|(id, _)| id.clone());
                    let Some(id) = id else {
                        return Err(ApiError::invalid_value(
                            &format!("messages[{i}].name"),
                            "a function message needs the name of a function_call made before it",
                        ));
                    };
                    message["tool_call_id"] = Value::String(id);
                } else if m.role == "tool" {
                    let Some(id) = &m.tool_call_id else {
                        return Err(ApiError::invalid_value(
                            &format!("messages[{i}].tool_call_id"),
                            "a tool message needs the tool_call_id of the call it answers",
                        ));
                    };
                    message["tool_call_id"] = Value::String(id.clone());
                    // Templates that show the function's name (Llama, Gemma) find it here even
                    // when the client, like OpenAI's SDK, sends only the call id.
                    if m.name.is_none() {
                        if let Some((_, name)) = call_names.iter().rev().find(|(c, _)| c == id) {
                            message["name"] = Value::String(name.clone());
                        }
                    }
                } else if let Some(id) = &m.tool_call_id {
                    message["tool_call_id"] = Value::String(id.clone());
                }
                Ok(message)
            })
            .collect::<Result<Vec<Value>, ApiError>>()?;
        Ok((messages, images))
    }
}

/// An assistant message's `tool_calls` as templates expect them: OpenAI sends `arguments` as
/// JSON text, while chat templates were written for (and models trained on) an object, so
/// text that parses as a JSON object becomes that object (as vLLM and llama.cpp do).
fn template_tool_calls(i: usize, calls: &Value) -> Result<Vec<Value>, ApiError> {
    let Some(list) = calls.as_array() else {
        return Err(ApiError::invalid_value(
            &format!("messages[{i}].tool_calls"),
            "tool_calls must be a list",
        ));
    };
    list.iter()
        .enumerate()
        .map(|(j, call)| {
            let at = |field: &str| format!("messages[{i}].tool_calls[{j}]{field}");
            let mut call = call.clone();
            let Some(function) = call.get_mut("function").filter(|f| f.is_object()) else {
                return Err(ApiError::invalid_value(
                    &at(".function"),
                    "each tool call needs a function with a name and arguments",
                ));
            };
            if !function.get("name").is_some_and(Value::is_string) {
                return Err(ApiError::invalid_value(
                    &at(".function.name"),
                    "a tool call's function needs a name",
                ));
            }
            match function.get("arguments") {
                Some(Value::String(text)) => {
                    if let Ok(object @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
                        function["arguments"] = object;
                    }
                }
                Some(Value::Object(_)) => {}
                None | Some(Value::Null) => function["arguments"] = serde_json::json!({}),
                Some(_) => {
                    return Err(ApiError::invalid_value(
                        &at(".function.arguments"),
                        "arguments must be JSON text (or an object)",
                    ))
                }
            }
            if call.get("type").is_none() {
                call["type"] = Value::String("function".into());
            }
            Ok(call)
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    /// `null` when the reply is only tool calls.
    pub content: Option<String>,
    /// The model's `<think>` text, for models that write it (vLLM's and llama.cpp's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Legacy function calling: the one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt: how much of it came from the prompt cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails::default(),
        }
    }

    pub fn with_cached(mut self, cached_tokens: usize) -> Usage {
        self.prompt_tokens_details.cached_tokens = cached_tokens;
        self
    }
}
