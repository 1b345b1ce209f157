//! Anthropic's Messages API (`POST /v1/messages`) on top of the chat path. A request is
//! checked in Anthropic's terms, then rewritten as the OpenAI chat request that means the
//! same — system prompt, text, tool uses and their results, tools and `tool_choice`,
//! sampling — so templates, tool grammars, limits and the prompt cache are shared. Replies,
//! stream events and errors go back in Anthropic's shapes (the server builds them with the
//! helpers here).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::ApiError;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}))]
pub struct MessagesRequest {
    pub model: String,
    /// Required by Anthropic's API (no default).
    pub max_tokens: u32,
    pub messages: Vec<Value>,
    #[serde(default)]
    pub system: Option<Value>,
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub tools: Option<Vec<ToolDefinition>>,
    pub tool_choice: Option<ToolChoice>,
    pub thinking: Option<Thinking>,
    /// Anthropic-hosted features this server does not have: refused, not ignored.
    #[serde(default)]
    pub mcp_servers: Option<Value>,
    #[serde(default)]
    pub container: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ToolDefinition {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// `custom` (or absent) for a client tool; Anthropic's server tools (web search, code
    /// execution, …) have their own types and are not run here.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Thinking {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub budget_tokens: Option<u32>,
}

impl MessagesRequest {
    pub fn streaming(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether the reply may carry `thinking` blocks (a model that reasons gets them only
    /// when asked, as Claude does).
    pub fn thinking(&self) -> bool {
        self.thinking.as_ref().is_some_and(|t| t.kind == "enabled")
    }

    /// The OpenAI chat request that means the same.
    pub fn to_chat(&self) -> Result<Value, ApiError> {
        if self.max_tokens == 0 {
            return Err(ApiError::invalid_value(
                "max_tokens",
                "max_tokens: must be at least 1",
            ));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=1.0).contains(&t) {
                return Err(ApiError::invalid_value(
                    "temperature",
                    "temperature: must be between 0 and 1",
                ));
            }
        }
        if let Some(thinking) = &self.thinking {
            match (thinking.kind.as_str(), thinking.budget_tokens) {
                ("disabled", _) => {}
                ("enabled", Some(budget)) if budget >= 1024 && budget < self.max_tokens => {}
                ("enabled", _) => {
                    return Err(ApiError::invalid_value(
                        "thinking.budget_tokens",
                        "thinking.budget_tokens: required with thinking enabled, at least 1024 \
                         and less than max_tokens",
                    ))
                }
                _ => {
                    return Err(ApiError::invalid_value(
                        "thinking.type",
                        "thinking.type: must be 'enabled' or 'disabled'",
                    ))
                }
            }
        }
        for (field, value) in [
            ("mcp_servers", &self.mcp_servers),
            ("container", &self.container),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::invalid_value(
                    field,
                    format!("{field}: Anthropic-hosted {field} are not available on this server"),
                ));
            }
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid_value(
                "messages",
                "messages: at least one message is required",
            ));
        }
        let last = self.messages.len() - 1;
        if self.messages[last].get("role").and_then(Value::as_str) == Some("assistant") {
            return Err(ApiError::invalid_value(
                &format!("messages[{last}]"),
                format!(
                    "messages[{last}]: a final assistant message (a prefill to continue) is not \
                     supported by this server; end with a user message"
                ),
            ));
        }
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            let text = text_of(system, "system")?;
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
        for (i, message) in self.messages.iter().enumerate() {
            convert_message(message, i, &mut messages)?;
        }
        let mut chat = Map::new();
        chat.insert("model".into(), json!(self.model));
        chat.insert("messages".into(), Value::Array(messages));
        chat.insert("max_tokens".into(), json!(self.max_tokens));
        for (key, value) in [
            ("temperature", self.temperature.map(|v| json!(v))),
            ("top_p", self.top_p.map(|v| json!(v))),
            ("top_k", self.top_k.map(|v| json!(v))),
            ("stop", self.stop_sequences.as_ref().map(|v| json!(v))),
        ] {
            if let Some(value) = value {
                chat.insert(key.into(), value);
            }
        }
        if let Some(tools) = &self.tools {
            let tools = tools
                .iter()
                .enumerate()
                .map(|(i, tool)| convert_tool(tool, i))
                .collect::<Result<Vec<_>, _>>()?;
            chat.insert("tools".into(), Value::Array(tools));
        }
        if let Some(choice) = &self.tool_choice {
            let (value, parallel) = convert_tool_choice(choice)?;
            chat.insert("tool_choice".into(), value);
            if let Some(parallel) = parallel {
                chat.insert("parallel_tool_calls".into(), json!(parallel));
            }
        }
        Ok(Value::Object(chat))
    }
}

/// One Anthropic message as chat messages: a user turn's `tool_result` blocks become `tool`
/// messages (in order, before its text), an assistant turn's `tool_use` blocks its
/// `tool_calls`.
fn convert_message(message: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let at = format!("messages[{i}]");
    let role = message.get("role").and_then(Value::as_str).unwrap_or("");
    if !matches!(role, "user" | "assistant") {
        return Err(ApiError::invalid_value(
            &format!("{at}.role"),
            format!(
                "{at}.role: must be 'user' or 'assistant' (a system prompt goes in the \
                 top-level 'system' field)"
            ),
        ));
    }
    let Some(content) = message.get("content") else {
        return Err(ApiError::invalid_value(
            &format!("{at}.content"),
            format!("{at}.content: field required"),
        ));
    };
    let blocks: Vec<Value> = match content {
        Value::String(text) if !text.is_empty() => vec![json!({"type": "text", "text": text})],
        Value::Array(blocks) if !blocks.is_empty() => blocks.clone(),
        Value::String(_) | Value::Array(_) => {
            return Err(ApiError::invalid_value(
                &format!("{at}.content"),
                format!("{at}.content: all messages must have non-empty content"),
            ))
        }
        _ => {
            return Err(ApiError::invalid_value(
                &format!("{at}.content"),
                format!("{at}.content: must be a string or a list of content blocks"),
            ))
        }
    };
    let mut parts: Vec<Value> = Vec::new();
    let mut calls: Vec<Value> = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match (role, kind) {
            (_, "text") => {
                let text = block.get("text").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid_value(&here, format!("{here}.text: must be a string"))
                })?;
                parts.push(json!({"type": "text", "text": text}));
            }
            ("user", "image") => parts.push(image_part(block, &here)?),
            ("user", "tool_result") => {
                let id = string_field(block, "tool_use_id", &here)?;
                let mut text = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(content) => text_of(content, &format!("{here}.content"))?,
                };
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            ("assistant", "tool_use") => {
                let id = string_field(block, "id", &here)?;
                let name = string_field(block, "name", &here)?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                if !input.is_object() {
                    return Err(ApiError::invalid_value(
                        &format!("{here}.input"),
                        format!("{here}.input: must be an object"),
                    ));
                }
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            // Earlier reasoning is not shown to the model again (as with Claude).
            ("assistant", "thinking" | "redacted_thinking") => {}
            _ => {
                return Err(ApiError::invalid_value(
                    &format!("{here}.type"),
                    format!("{here}.type: '{kind}' blocks are not supported in {role} messages"),
                ))
            }
        }
    }
    if role == "assistant" {
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        // Only calls: no content, as OpenAI's clients send it (templates render it so).
        let content = if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            json!(text)
        };
        let mut message = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        out.push(message);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// An image block as the chat API's `image_url` part.
fn image_part(block: &Value, at: &str) -> Result<Value, ApiError> {
    let source = block.get("source").cloned().unwrap_or(Value::Null);
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = string_field(&source, "media_type", &format!("{at}.source"))?;
            let data = string_field(&source, "data", &format!("{at}.source"))?;
            format!("data:{media};base64,{data}")
        }
        Some("url") => string_field(&source, "url", &format!("{at}.source"))?.to_owned(),
        _ => {
            return Err(ApiError::invalid_value(
                &format!("{at}.source"),
                format!("{at}.source: must be a base64 or url image source"),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn string_field<'a>(value: &'a Value, key: &str, at: &str) -> Result<&'a str, ApiError> {
    value.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_value(
            &format!("{at}.{key}"),
            format!("{at}.{key}: must be a string"),
        )
    })
}

/// The text of a string or a list of text blocks (a system prompt, a tool result).
fn text_of(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (j, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(string_field(block, "text", &format!("{at}[{j}]"))?);
                    }
                    other => {
                        return Err(ApiError::invalid_value(
                            &format!("{at}[{j}].type"),
                            format!(
                                "{at}[{j}].type: only text blocks are supported here, not {}",
                                other.map_or("a block without a type".to_owned(), |k| format!(
                                    "'{k}'"
                                ))
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid_value(
            at,
            format!("{at}: must be a string or a list of text blocks"),
        )),
    }
}

fn convert_tool(tool: &ToolDefinition, i: usize) -> Result<Value, ApiError> {
    if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "custom") {
        return Err(ApiError::invalid_value(
            &format!("tools[{i}].type"),
            format!(
                "tools[{i}].type: '{kind}' is one of Anthropic's server tools, which this \
                 server does not run; define a client tool with an input_schema instead"
            ),
        ));
    }
    let Some(schema) = &tool.input_schema else {
        return Err(ApiError::invalid_value(
            &format!("tools[{i}].input_schema"),
            format!("tools[{i}].input_schema: field required"),
        ));
    };
    let mut function = json!({"name": tool.name, "parameters": schema});
    if let Some(description) = &tool.description {
        function["description"] = json!(description);
    }
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` as the chat API's, and `parallel_tool_calls` when it says.
fn convert_tool_choice(choice: &ToolChoice) -> Result<(Value, Option<bool>), ApiError> {
    let value = match choice.kind.as_str() {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => {
            let Some(name) = &choice.name else {
                return Err(ApiError::invalid_value(
                    "tool_choice.name",
                    "tool_choice.name: required when tool_choice.type is 'tool'",
                ));
            };
            json!({"type": "function", "function": {"name": name}})
        }
        other => {
            return Err(ApiError::invalid_value(
                "tool_choice.type",
                format!("tool_choice.type: must be auto, any, tool or none, not '{other}'"),
            ))
        }
    };
    Ok((value, choice.disable_parallel_tool_use.map(|d| !d)))
}

/// The chat path's finish reason as Anthropic's `stop_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        _ => "end_turn",
    }
}

/// A tool call id in Anthropic's spelling (`toolu_…`).
pub fn tool_use_id(call_id: &str) -> String {
    match call_id.strip_prefix("call_") {
        Some(rest) => format!("toolu_{rest}"),
        None => call_id.to_owned(),
    }
}

/// A tool call's arguments (JSON text, as the chat path reports them) as the `input`
/// object Anthropic's clients expect.
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => json!({}),
    }
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// `{"type": "error", "error": {"type", "message"}}`.
pub fn error_body(error: &ApiError) -> Value {
    json!({
        "type": "error",
        "error": {"type": error_type(error.status), "message": error.message},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> MessagesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_conversation_with_tools_becomes_the_chat_request_that_means_the_same() {
        let chat = request(json!({
            "model": "m",
            "max_tokens": 64,
            "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "tools": [{"name": "get_weather", "description": "Weather",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "…", "signature": "x"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                    {"type": "text", "text": "And tomorrow?"}
                ]}
            ]
        }))
        .to_chat()
        .unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "max_tokens": 64,
                "temperature": 0.5,
                "stop": ["END"],
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_1",
                        "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                    {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]}
                ]
            })
        );
    }

    #[test]
    fn what_anthropic_refuses_or_we_do_not_run_is_a_400_naming_the_field() {
        let base =
            json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            request(body).to_chat().unwrap_err()
        };
        assert_eq!(
            with("max_tokens", json!(0)).param.as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            with("temperature", json!(1.5)).param.as_deref(),
            Some("temperature")
        );
        let e = with("messages", json!([{"role": "system", "content": "x"}]));
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = with(
            "messages",
            json!([{"role": "user", "content": [{"type": "document", "source": {}}]}]),
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        let e = with(
            "tools",
            json!([{"type": "web_search_20250305", "name": "web_search"}]),
        );
        assert!(e.message.contains("server tools"), "{}", e.message);
        let e = with("tool_choice", json!({"type": "tool"}));
        assert_eq!(e.param.as_deref(), Some("tool_choice.name"));
        assert_eq!(
            with("messages", json!([])).param.as_deref(),
            Some("messages")
        );
        let e = with(
            "messages",
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
        );
        assert_eq!(e.param.as_deref(), Some("messages[1]"));
        let e = with("messages", json!([{"role": "user", "content": []}]));
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = with(
            "thinking",
            json!({"type": "enabled", "budget_tokens": 2000}),
        );
        assert_eq!(e.param.as_deref(), Some("thinking.budget_tokens"));
        let e = with("mcp_servers", json!([{}]));
        assert_eq!(e.param.as_deref(), Some("mcp_servers"));
    }

    #[test]
    fn errors_and_reasons_use_anthropic_words() {
        assert_eq!(stop_reason("stop"), "end_turn");
        assert_eq!(stop_reason("length"), "max_tokens");
        assert_eq!(stop_reason("tool_calls"), "tool_use");
        assert_eq!(tool_use_id("call_abc"), "toolu_abc");
        assert_eq!(tool_input("{\"a\":1}"), json!({"a": 1}));
        assert_eq!(tool_input("not json"), json!({}));
        let body = error_body(&ApiError::invalid_request("bad", None));
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
        );
        assert_eq!(error_type(429), "rate_limit_error");
        assert_eq!(error_type(503), "overloaded_error");
    }
}
