//! OpenAI's Responses API (`POST /v1/responses`) on top of the chat path. A request's
//! `instructions`, input items (messages, function calls and their outputs) and the stored
//! conversation it continues (`previous_response_id`) become the chat messages that mean the
//! same; `text.format`, function tools, `tool_choice` and sampling map onto the chat
//! request's fields, so templates, grammars, limits and the prompt cache are shared. What
//! the API offers and this server does not do (hosted tools, background runs, truncation,
//! reasoning effort, …) is refused with a 400 naming the field, never ignored.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::ApiError;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "default", "input": "Say hello.", "max_output_tokens": 8}))]
pub struct ResponsesRequest {
    pub model: String,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub instructions: Option<Value>,
    #[serde(default)]
    pub max_output_tokens: Option<Value>,
    #[serde(default)]
    pub temperature: Option<Value>,
    #[serde(default)]
    pub top_p: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// OpenAI's default is to store (`true`); stored responses live in a bounded store.
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub truncation: Option<Value>,
    #[serde(default)]
    pub include: Option<Value>,
    #[serde(default)]
    pub top_logprobs: Option<Value>,
    #[serde(default)]
    pub background: Option<Value>,
    #[serde(default)]
    pub conversation: Option<Value>,
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub max_tool_calls: Option<Value>,
}

/// A request as the chat path sees it.
#[derive(Debug)]
pub struct Converted {
    /// The OpenAI chat request that means the same.
    pub chat: Value,
    /// The conversation so far as chat messages — stored turns, then this request's input —
    /// without the instructions (which a follow-up does not inherit, as with OpenAI).
    pub conversation: Vec<Value>,
}

fn invalid(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_value(param, format!("{param}: {message}"))
}

fn set(value: &Option<Value>) -> bool {
    value.as_ref().is_some_and(|v| !v.is_null())
}

impl ResponsesRequest {
    pub fn streaming(&self) -> bool {
        self.stream == Some(true)
    }

    pub fn store(&self) -> bool {
        self.store != Some(false)
    }

    /// Check the request and rewrite it as a chat request continuing `history` (the stored
    /// conversation of `previous_response_id`, empty without one).
    pub fn to_chat(&self, history: &[Value]) -> Result<Converted, ApiError> {
        self.refuse_what_we_do_not_do()?;
        let mut conversation = history.to_vec();
        match &self.input {
            None | Some(Value::Null) if history.is_empty() => {
                return Err(invalid("input", "field required"))
            }
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                conversation.push(json!({"role": "user", "content": text}));
            }
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    convert_item(item, &format!("input[{i}]"), &mut conversation)?;
                }
            }
            Some(_) => return Err(invalid("input", "must be a string or a list of items")),
        }
        if conversation.is_empty() {
            return Err(invalid("input", "at least one input item is required"));
        }
        check_calls_answered(&conversation)?;
        let mut messages = Vec::with_capacity(conversation.len() + 1);
        match &self.instructions {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                if !text.is_empty() {
                    messages.push(json!({"role": "system", "content": text}));
                }
            }
            Some(_) => return Err(invalid("instructions", "must be a string")),
        }
        messages.extend(conversation.iter().cloned());
        let mut chat = Map::new();
        chat.insert("model".into(), json!(self.model));
        chat.insert("messages".into(), Value::Array(messages));
        if let Some(max) = &self.max_output_tokens {
            if !max.is_null() {
                match max.as_u64() {
                    Some(n) if n >= 1 => {
                        chat.insert("max_tokens".into(), json!(n));
                    }
                    _ => return Err(invalid("max_output_tokens", "must be an integer >= 1")),
                }
            }
        }
        for (key, value) in [("temperature", &self.temperature), ("top_p", &self.top_p)] {
            if let Some(value) = value {
                chat.insert(key.into(), value.clone());
            }
        }
        if let Some(text) = &self.text {
            if let Some(format) = text_format(text)? {
                chat.insert("response_format".into(), format);
            }
        }
        if let Some(tools) = &self.tools {
            if !tools.is_null() {
                let Some(tools) = tools.as_array() else {
                    return Err(invalid("tools", "must be a list of tools"));
                };
                let tools = tools
                    .iter()
                    .enumerate()
                    .map(|(i, tool)| convert_tool(tool, i))
                    .collect::<Result<Vec<_>, _>>()?;
                chat.insert("tools".into(), Value::Array(tools));
            }
        }
        if let Some(choice) = &self.tool_choice {
            if !choice.is_null() {
                chat.insert("tool_choice".into(), convert_tool_choice(choice)?);
            }
        }
        if let Some(parallel) = self.parallel_tool_calls {
            chat.insert("parallel_tool_calls".into(), json!(parallel));
        }
        Ok(Converted {
            chat: Value::Object(chat),
            conversation,
        })
    }

    fn refuse_what_we_do_not_do(&self) -> Result<(), ApiError> {
        check_metadata(self.metadata.as_ref())?;
        if self.background == Some(Value::Bool(true)) {
            return Err(invalid(
                "background",
                "background responses are not supported by this server; stream instead",
            ));
        }
        for (field, value, what) in [
            (
                "conversation",
                &self.conversation,
                "stored conversations (use previous_response_id)",
            ),
            ("prompt", &self.prompt, "stored prompt templates"),
            (
                "max_tool_calls",
                &self.max_tool_calls,
                "a bound on built-in tool calls",
            ),
            (
                "top_logprobs",
                &self.top_logprobs,
                "log probabilities on this API (the chat API has them)",
            ),
        ] {
            if set(value) {
                return Err(invalid(
                    field,
                    format!("{what} are not supported by this server"),
                ));
            }
        }
        match self.truncation.as_ref().and_then(Value::as_str) {
            None | Some("disabled") => {}
            Some(_) => {
                return Err(invalid(
                    "truncation",
                    "only 'disabled' is supported: an input longer than the context is refused \
                     with context_length_exceeded, never cut",
                ))
            }
        }
        if let Some(include) = &self.include {
            if include.as_array().is_some_and(|a| !a.is_empty())
                || !include.is_array() && !include.is_null()
            {
                return Err(invalid(
                    "include",
                    "no additional output data (encrypted reasoning, logprobs, tool results) is \
                     available on this server",
                ));
            }
        }
        if let Some(reasoning) = &self.reasoning {
            let effort = reasoning.get("effort").filter(|v| !v.is_null());
            let summary = reasoning.get("summary").filter(|v| !v.is_null());
            if !reasoning.is_null() && !reasoning.is_object() {
                return Err(invalid("reasoning", "must be an object"));
            }
            if let Some(effort) = effort {
                return Err(invalid(
                    "reasoning.effort",
                    format_args!(
                        "{effort} cannot be applied: local models reason (or not) as their \
                         template makes them; leave it unset"
                    ),
                ));
            }
            if summary.is_some() {
                return Err(invalid(
                    "reasoning.summary",
                    "reasoning summaries are not produced by this server; a model's own \
                     reasoning comes back as a reasoning item",
                ));
            }
        }
        Ok(())
    }
}

/// OpenAI's bounds on `metadata`: at most 16 string values, keys up to 64 characters,
/// values up to 512 (it is stored and sent back with every response).
fn check_metadata(metadata: Option<&Value>) -> Result<(), ApiError> {
    let Some(metadata) = metadata.filter(|m| !m.is_null()) else {
        return Ok(());
    };
    let Some(pairs) = metadata.as_object() else {
        return Err(invalid("metadata", "must be an object of strings"));
    };
    if pairs.len() > 16 {
        return Err(invalid("metadata", "at most 16 keys"));
    }
    for (key, value) in pairs {
        if key.chars().count() > 64 {
            return Err(invalid("metadata", "keys are at most 64 characters"));
        }
        match value.as_str() {
            Some(text) if text.chars().count() <= 512 => {}
            Some(_) => return Err(invalid("metadata", "values are at most 512 characters")),
            None => return Err(invalid("metadata", "values must be strings")),
        }
    }
    Ok(())
}

/// Every function call of the conversation has its output after it, and every output
/// answers a call before it (as OpenAI checks: a model shown a call without its result, or
/// a result of no call, would be reading a conversation that never happened).
fn check_calls_answered(conversation: &[Value]) -> Result<(), ApiError> {
    let mut open: Vec<&str> = Vec::new();
    let mut made: Vec<&str> = Vec::new();
    for message in conversation {
        match message["role"].as_str() {
            Some("tool") => {
                let id = message["tool_call_id"].as_str().unwrap_or_default();
                if !made.contains(&id) {
                    return Err(invalid(
                        "input",
                        format_args!("function_call_output '{id}' answers no function call"),
                    ));
                }
                open.retain(|&open_id| open_id != id);
            }
            _ => {
                if let Some(id) = open.first() {
                    return Err(invalid(
                        "input",
                        format_args!("no function_call_output found for function call '{id}'"),
                    ));
                }
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    let id = call["id"].as_str().unwrap_or_default();
                    made.push(id);
                    open.push(id);
                }
            }
        }
    }
    match open.first() {
        Some(id) => Err(invalid(
            "input",
            format_args!("no function_call_output found for function call '{id}'"),
        )),
        None => Ok(()),
    }
}

/// `text.format` as the chat API's `response_format` (None for plain text).
fn text_format(text: &Value) -> Result<Option<Value>, ApiError> {
    if text.is_null() {
        return Ok(None);
    }
    let Some(text) = text.as_object() else {
        return Err(invalid("text", "must be an object"));
    };
    match text
        .get("verbosity")
        .and_then(|v| v.as_str().or(v.is_null().then_some("medium")))
    {
        None if text.contains_key("verbosity") => {
            return Err(invalid(
                "text.verbosity",
                "must be 'low', 'medium' or 'high'",
            ))
        }
        None | Some("medium") => {}
        Some(_) => {
            return Err(invalid(
                "text.verbosity",
                "only 'medium' is supported: a local model's verbosity is not adjustable",
            ))
        }
    }
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(value) = format.get(key) {
                    schema.insert(key.into(), value.clone());
                }
            }
            if !schema.contains_key("schema") {
                return Err(invalid("text.format.schema", "field required"));
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(invalid(
            "text.format.type",
            "must be 'text', 'json_object' or 'json_schema'",
        )),
    }
}

/// One input item as chat messages. Function calls join the assistant message before them
/// (a response's output — text, then calls — is often sent back as it came).
fn convert_item(item: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let Some(object) = item.as_object() else {
        return Err(invalid(at, "must be an object"));
    };
    let kind = match object.get("type").and_then(Value::as_str) {
        Some(kind) => kind,
        None if object.contains_key("role") => "message",
        None => return Err(invalid(&format!("{at}.type"), "field required")),
    };
    match kind {
        "message" => out.push(convert_message(item, at)?),
        "function_call" => {
            let call_id = string_field(item, "call_id", at)?;
            let name = string_field(item, "name", at)?;
            let arguments = string_field(item, "arguments", at)?;
            let call = json!({
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            });
            match out.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    let calls = last
                        .as_object_mut()
                        .expect("messages are objects")
                        .entry("tool_calls")
                        .or_insert_with(|| json!([]));
                    calls.as_array_mut().expect("a list").push(call);
                }
                _ => out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = string_field(item, "call_id", at)?;
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => {
                    text_parts(parts, &format!("{at}.output"), &["input_text"])?
                }
                _ => {
                    return Err(invalid(
                        &format!("{at}.output"),
                        "must be a string or a list of input_text parts",
                    ))
                }
            };
            out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // A model's earlier reasoning is not shown to it again.
        "reasoning" => {}
        "item_reference" => {
            return Err(invalid(
                &format!("{at}.type"),
                "item references are not supported; send the item itself or use \
                 previous_response_id",
            ))
        }
        other => {
            return Err(invalid(
                &format!("{at}.type"),
                format_args!("'{other}' items are not supported by this server"),
            ))
        }
    }
    Ok(())
}

fn convert_message(item: &Value, at: &str) -> Result<Value, ApiError> {
    let role = item.get("role").and_then(Value::as_str).unwrap_or("");
    let chat_role = match role {
        "user" | "assistant" | "system" => role,
        // Chat templates know system prompts; OpenAI treats developer messages as such.
        "developer" => "system",
        _ => {
            return Err(invalid(
                &format!("{at}.role"),
                "must be 'user', 'assistant', 'system' or 'developer'",
            ))
        }
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => json!(text),
        Some(Value::Array(parts)) if role == "user" => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let here = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text") => out.push(json!({
                        "type": "text",
                        "text": string_field(part, "text", &here)?,
                    })),
                    Some("input_image") => {
                        if part.get("file_id").is_some_and(|v| !v.is_null()) {
                            return Err(invalid(
                                &format!("{here}.file_id"),
                                "uploaded files are not available on this server; send the \
                                 image as image_url (a data URL or an http(s) URL)",
                            ));
                        }
                        let url = string_field(part, "image_url", &here)?;
                        let mut image = json!({"url": url});
                        if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
                            image["detail"] = detail.clone();
                        }
                        out.push(json!({"type": "image_url", "image_url": image}));
                    }
                    other => {
                        return Err(invalid(
                            &format!("{here}.type"),
                            format_args!(
                                "'{}' parts are not supported in user messages (input_text, \
                                 input_image are)",
                                other.unwrap_or("")
                            ),
                        ))
                    }
                }
            }
            Value::Array(out)
        }
        Some(Value::Array(parts)) => {
            let allowed: &[&str] = if role == "assistant" {
                &["output_text", "refusal"]
            } else {
                &["input_text"]
            };
            json!(text_parts(parts, &format!("{at}.content"), allowed)?)
        }
        _ => {
            return Err(invalid(
                &format!("{at}.content"),
                "must be a string or a list of content parts",
            ))
        }
    };
    Ok(json!({"role": chat_role, "content": content}))
}

/// The text of `parts`, each of one of the `allowed` types.
fn text_parts(parts: &[Value], at: &str, allowed: &[&str]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        if !allowed.contains(&kind) {
            return Err(invalid(
                &format!("{here}.type"),
                format_args!(
                    "'{kind}' parts are not supported here ({})",
                    allowed.join(", ")
                ),
            ));
        }
        let key = if kind == "refusal" { "refusal" } else { "text" };
        text.push_str(string_field(part, key, &here)?);
    }
    Ok(text)
}

fn string_field<'a>(value: &'a Value, key: &str, at: &str) -> Result<&'a str, ApiError> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{at}.{key}"), "must be a string"))
}

fn convert_tool(tool: &Value, i: usize) -> Result<Value, ApiError> {
    let at = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = string_field(tool, "name", &at)?;
            let mut function = Map::new();
            function.insert("name".into(), json!(name));
            for key in ["description", "parameters", "strict"] {
                if let Some(value) = tool.get(key).filter(|v| !v.is_null()) {
                    function.insert(key.into(), value.clone());
                }
            }
            Ok(json!({"type": "function", "function": function}))
        }
        Some(other) => Err(invalid(
            &format!("{at}.type"),
            format_args!(
                "'{other}' tools are hosted by OpenAI and not available on this server; \
                 declare a function tool and run it yourself"
            ),
        )),
        None => Err(invalid(&format!("{at}.type"), "field required")),
    }
}

fn convert_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(json!(mode))
        }
        Value::Object(object) if object.get("type") == Some(&json!("function")) => {
            let name = string_field(choice, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid(
            "tool_choice",
            "must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

/// The assistant turn a response adds to its conversation, as a chat message.
pub fn assistant_turn(text: &str, calls: &[(String, String, String)]) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if calls.is_empty() || !text.trim().is_empty() { json!(text) } else { Value::Null },
    });
    if !calls.is_empty() {
        message["tool_calls"] = calls
            .iter()
            .map(|(id, name, arguments)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
            })
            .collect();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn items_become_the_chat_messages_that_mean_the_same() {
        let r = request(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use metric units."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "4 C"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "19 C"}]},
            ],
            "max_output_tokens": 50,
            "temperature": 0,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "weather"},
            "parallel_tool_calls": false,
        }));
        let converted = r.to_chat(&[]).unwrap();
        let chat = &converted.chat;
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            messages[1],
            json!({"role": "system", "content": "Use metric units."})
        );
        assert_eq!(
            messages[2]["content"][0],
            json!({"type": "text", "text": "Weather?"})
        );
        assert_eq!(messages[3]["content"], "Checking.");
        assert_eq!(
            messages[3]["tool_calls"].as_array().unwrap().len(),
            2,
            "calls join the text"
        );
        assert_eq!(
            messages[4],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "4 C"})
        );
        assert_eq!(messages[5]["content"], "19 C");
        assert_eq!(messages.len(), 6);
        assert_eq!(
            converted.conversation.len(),
            5,
            "instructions are not inherited"
        );
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["response_format"]["json_schema"]["name"], "w");
        assert_eq!(chat["tools"][0]["function"]["name"], "weather");
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(chat["parallel_tool_calls"], false);
    }

    #[test]
    fn a_follow_up_continues_the_stored_conversation() {
        let history = vec![
            json!({"role": "user", "content": "Hi"}),
            assistant_turn("Hello!", &[]),
        ];
        let r = request(json!({"model": "m", "input": "And you?", "instructions": "New rules."}));
        let converted = r.to_chat(&history).unwrap();
        let messages = converted.chat["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0]["content"], "New rules.");
        assert_eq!(messages[3]["content"], "And you?");
        // No new input is fine when continuing; none at all is not.
        assert!(request(json!({"model": "m"})).to_chat(&history).is_ok());
        let e = request(json!({"model": "m"})).to_chat(&[]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
    }

    #[test]
    fn what_we_do_not_do_is_a_400_naming_the_field() {
        for (body, param) in [
            (json!({"background": true}), "background"),
            (json!({"truncation": "auto"}), "truncation"),
            (
                json!({"include": ["reasoning.encrypted_content"]}),
                "include",
            ),
            (json!({"reasoning": {"effort": "high"}}), "reasoning.effort"),
            (
                json!({"reasoning": {"summary": "auto"}}),
                "reasoning.summary",
            ),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"conversation": "conv_1"}), "conversation"),
            (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
            (json!({"text": {"verbosity": "low"}}), "text.verbosity"),
            (
                json!({"text": {"format": {"type": "xml"}}}),
                "text.format.type",
            ),
            (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
            (
                json!({"tool_choice": {"type": "file_search"}}),
                "tool_choice",
            ),
            (json!({"max_output_tokens": 0}), "max_output_tokens"),
            (json!({"input": 7}), "input"),
            (
                json!({"input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].file_id",
            ),
            (
                json!({"input": [{"type": "function_call_output", "call_id": "no", "output": "x"}]}),
                "input",
            ),
            (
                json!({"input": [
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"role": "user", "content": "and?"}]}),
                "input",
            ),
            (json!({"metadata": {"k": 1}}), "metadata"),
            (json!({"metadata": {"k": "v".repeat(513)}}), "metadata"),
            (
                json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
                "input[0].call_id",
            ),
        ] {
            let mut body = body;
            body["model"] = json!("m");
            if body.get("input").is_none() {
                body["input"] = json!("hi");
            }
            let e = request(body.clone()).to_chat(&[]).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        // Accepted as sent by the SDK and common clients.
        let ok = request(json!({
            "model": "m", "input": "hi", "store": false, "include": [], "truncation": "disabled",
            "reasoning": {"effort": null}, "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "metadata": {"k": "v"},
        }));
        assert!(ok.to_chat(&[]).is_ok());
        assert!(!ok.store());
    }
}
