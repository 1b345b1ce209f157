//! OpenAI's Responses API: `POST /v1/responses` runs through the chat path (see
//! `hearth_api::responses`) and answers a `response` object or its event stream
//! (`response.created`, `response.output_item.added`, `response.output_text.delta`, …,
//! `response.completed`); `GET` and `DELETE /v1/responses/{id}` read and forget stored
//! responses, which `previous_response_id` continues.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::chat::{ChatCompletionRequest, Usage};
use hearth_api::responses::{assistant_turn, ResponsesRequest};
use hearth_api::ApiError;
use serde_json::{json, Value};

use super::chat::{start_chat, ChatStart};
use super::stream::{collect, sse, ChoiceResult, ChunkFormat, Piece};
use crate::error::HttpError;
use crate::extract::{RequestBody, RequestMeta};
use crate::ids;
use crate::response_store::{ResponseStore, Stored};
use crate::state::AppState;

pub async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request: ResponsesRequest = hearth_api::parse_body(&body)?;
    let history = match &request.previous_response_id {
        Some(id) => {
            state
                .responses
                .get(id)
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "previous_response_id",
                        format!(
                            "previous_response_id: no stored response '{}' (responses are kept \
                             in memory, the latest {} at most, and not across restarts)",
                            shortened(id),
                            crate::response_store::MAX_RESPONSES
                        ),
                    )
                })?
                .conversation
        }
        None => Vec::new(),
    };
    let converted = request.to_chat(&history)?;
    let chat: ChatCompletionRequest =
        hearth_api::request_from_value(&converted.chat).map_err(in_responses_terms)?;
    let ChatStart { started, .. } = start_chat(&state, &meta, &chat)
        .await
        .map_err(in_responses_terms)?;
    let head = Head {
        id: ids::response_id(),
        created_at: hearth_api::unix_now(),
        echo: echo(&request),
        store: request.store().then(|| state.responses.clone()),
        conversation: converted.conversation,
    };
    if request.streaming() {
        return Ok(sse(started, ResponseStream::new(head), false));
    }
    let (results, usage) = collect(started).await?;
    let result = results.into_iter().next().unwrap_or_default();
    let output = Output::from_result(&result);
    let response = head.finish(&output, &result.finish_reason, &usage);
    Ok(Json(response).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let stored = state.responses.get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(stored.response).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    if !state.responses.remove(&id) {
        return Err(not_found(&id).into());
    }
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
}

/// An id as an error message quotes it: a client's 2 MB "id" is not echoed back whole.
fn shortened(id: &str) -> String {
    match id.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &id[..at]),
        None => id.to_owned(),
    }
}

fn not_found(id: &str) -> ApiError {
    let mut error = ApiError::not_found(format!("No response found with id '{}'.", shortened(id)));
    error.code = Some("not_found".into());
    error
}

/// Errors of the shared chat path, naming this API's fields.
fn in_responses_terms(mut error: ApiError) -> ApiError {
    if let Some(param) = error.param.take() {
        let renamed = if param == "max_tokens" || param == "max_completion_tokens" {
            "max_output_tokens".to_owned()
        } else if let Some(rest) = param.strip_prefix("response_format.json_schema") {
            format!("text.format{rest}")
        } else if let Some(rest) = param.strip_prefix("response_format") {
            format!("text.format{rest}")
        } else if param.starts_with("tools[") {
            param.replacen(".function", "", 1)
        } else if param == "tool_choice.function.name" {
            "tool_choice.name".to_owned()
        } else if param == "messages" || param.starts_with("messages[") {
            // Messages are this API's input items (numbered differently once instructions
            // lead them).
            "input".to_owned()
        } else {
            param
        };
        error.message = error
            .message
            .replace("max_completion_tokens", "max_output_tokens");
        error.param = Some(renamed);
    }
    error
}

/// The request fields a response repeats back, with OpenAI's defaults.
fn echo(request: &ResponsesRequest) -> Value {
    let or = |value: &Option<Value>, default: Value| {
        value
            .as_ref()
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    json!({
        "instructions": or(&request.instructions, Value::Null),
        "max_output_tokens": or(&request.max_output_tokens, Value::Null),
        "model": request.model,
        "parallel_tool_calls": request.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": null, "summary": null},
        "store": request.store(),
        "temperature": or(&request.temperature, json!(1.0)),
        "text": or(&request.text, json!({"format": {"type": "text"}})),
        "tool_choice": or(&request.tool_choice, json!("auto")),
        "tools": or(&request.tools, json!([])),
        "top_p": or(&request.top_p, json!(1.0)),
        "truncation": "disabled",
        "metadata": or(&request.metadata, json!({})),
        "user": null,
    })
}

/// What a response is made of, before it has output item ids.
#[derive(Default)]
struct Output {
    reasoning: String,
    text: String,
    /// (call id, name, arguments)
    calls: Vec<(String, String, String)>,
}

impl Output {
    fn from_result(result: &ChoiceResult) -> Output {
        Output {
            reasoning: result.reasoning.clone(),
            text: result.text.clone(),
            calls: result
                .tool_calls
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        c.function.name.clone(),
                        c.function.arguments.clone(),
                    )
                })
                .collect(),
        }
    }

    /// The output items, in the order they are streamed: reasoning, text, calls.
    fn items(&self, status: &str) -> Vec<Value> {
        let mut items = Vec::new();
        if !self.reasoning.is_empty() {
            items.push(reasoning_item(
                &ids::output_item_id("rs"),
                &self.reasoning,
                status,
            ));
        }
        if self.calls.is_empty() || !self.text.trim().is_empty() {
            items.push(message_item(
                &ids::output_item_id("msg"),
                &self.text,
                status,
            ));
        }
        // A reply cut short by max_output_tokens may end inside a call's arguments.
        for (call_id, name, arguments) in &self.calls {
            items.push(call_item(
                &ids::output_item_id("fc"),
                call_id,
                name,
                arguments,
                status,
            ));
        }
        items
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    })
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    })
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

fn usage_of(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
        "output_tokens": usage.completion_tokens,
        // Reasoning is not counted apart from the reply (the worker does not split them).
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

/// One response being made: its id, the request's echoed fields, and where it is stored.
struct Head {
    id: String,
    created_at: u64,
    echo: Value,
    store: Option<Arc<ResponseStore>>,
    /// The conversation up to this response, as chat messages.
    conversation: Vec<Value>,
}

impl Head {
    fn object(&self, status: &str, output: Vec<Value>, usage: Option<&Usage>) -> Value {
        let mut response = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "output": output,
            "usage": usage.map(usage_of),
        });
        if let (Some(response), Some(echo)) = (response.as_object_mut(), self.echo.as_object()) {
            for (key, value) in echo {
                response.insert(key.clone(), value.clone());
            }
        }
        if status == "incomplete" {
            response["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        response
    }

    /// The finished response (stored when asked).
    fn finish(&self, output: &Output, finish_reason: &str, usage: &Usage) -> Value {
        let status = status_of(finish_reason);
        let response = self.object(status, output.items(item_status(status)), Some(usage));
        self.keep(&response, output);
        response
    }

    fn keep(&self, response: &Value, output: &Output) {
        let Some(store) = &self.store else {
            return;
        };
        let mut conversation = self.conversation.clone();
        conversation.push(assistant_turn(&output.text, &output.calls));
        store.insert(
            &self.id,
            Stored {
                response: response.clone(),
                conversation,
            },
        );
    }
}

fn status_of(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "incomplete",
        _ => "completed",
    }
}

fn item_status(status: &str) -> &'static str {
    if status == "incomplete" {
        "incomplete"
    } else {
        "completed"
    }
}

/// The output item being written in a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Reasoning,
    Message,
    /// A tool call, by its index among the reply's calls.
    Call(u32),
}

struct Item {
    kind: Kind,
    id: String,
    text: String,
    call_id: String,
    name: String,
}

struct ResponseStream {
    head: Head,
    items: Vec<Item>,
    /// Whether the last item is still being written.
    open: bool,
    finish_reason: String,
    sequence: std::sync::atomic::AtomicU64,
}

impl ResponseStream {
    fn new(head: Head) -> ResponseStream {
        ResponseStream {
            head,
            items: Vec::new(),
            open: false,
            finish_reason: "stop".into(),
            sequence: Default::default(),
        }
    }

    fn event(&self, mut event: Value) -> Value {
        let n = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        event["sequence_number"] = json!(n);
        event
    }

    /// Make an item of `kind` the open one (closing another), announcing it; its index.
    fn enter(&mut self, kind: Kind, call: Option<(&str, &str)>, out: &mut Vec<Value>) -> usize {
        if self.open && self.items.last().is_some_and(|i| i.kind == kind) {
            return self.items.len() - 1;
        }
        self.close_open(out);
        let prefix = match kind {
            Kind::Reasoning => "rs",
            Kind::Message => "msg",
            Kind::Call(_) => "fc",
        };
        let (call_id, name) = call.unwrap_or_default();
        self.items.push(Item {
            kind,
            id: ids::output_item_id(prefix),
            text: String::new(),
            call_id: call_id.to_owned(),
            name: name.to_owned(),
        });
        self.open = true;
        let index = self.items.len() - 1;
        let item = &self.items[index];
        let added = match kind {
            Kind::Reasoning => json!({
                "type": "reasoning", "id": item.id, "summary": [], "content": [],
                "status": "in_progress",
            }),
            Kind::Message => json!({
                "type": "message", "id": item.id, "status": "in_progress",
                "role": "assistant", "content": [],
            }),
            Kind::Call(_) => call_item(&item.id, call_id, name, "", "in_progress"),
        };
        out.push(self.event(json!({
            "type": "response.output_item.added",
            "output_index": index,
            "item": added,
        })));
        if kind == Kind::Message {
            out.push(self.event(json!({
                "type": "response.content_part.added",
                "item_id": self.items[index].id,
                "output_index": index,
                "content_index": 0,
                "part": output_text(""),
            })));
        }
        index
    }

    /// Finish the open item: its `.done` events.
    fn close_open(&mut self, out: &mut Vec<Value>) {
        if !self.open {
            return;
        }
        self.open = false;
        let index = self.items.len() - 1;
        let status = item_status(status_of(&self.finish_reason));
        let item = &self.items[index];
        let (id, text) = (item.id.clone(), item.text.clone());
        let done = match item.kind {
            Kind::Reasoning => {
                out.push(self.event(json!({
                    "type": "response.reasoning_text.done",
                    "item_id": id, "output_index": index, "content_index": 0, "text": text,
                })));
                reasoning_item(&id, &text, status)
            }
            Kind::Message => {
                out.push(self.event(json!({
                    "type": "response.output_text.done",
                    "item_id": id, "output_index": index, "content_index": 0, "text": text,
                    "logprobs": [],
                })));
                out.push(self.event(json!({
                    "type": "response.content_part.done",
                    "item_id": id, "output_index": index, "content_index": 0,
                    "part": output_text(&text),
                })));
                message_item(&id, &text, status)
            }
            Kind::Call(_) => {
                let (call_id, name) = (item.call_id.clone(), item.name.clone());
                out.push(self.event(json!({
                    "type": "response.function_call_arguments.done",
                    "item_id": id, "output_index": index, "name": name, "arguments": text,
                })));
                call_item(&id, &call_id, &name, &text, status)
            }
        };
        out.push(self.event(json!({
            "type": "response.output_item.done",
            "output_index": index,
            "item": done,
        })));
    }

    fn output(&self) -> (Output, Vec<Value>) {
        let status = item_status(status_of(&self.finish_reason));
        let mut output = Output::default();
        let mut items = Vec::new();
        for item in &self.items {
            match item.kind {
                Kind::Reasoning => {
                    output.reasoning.push_str(&item.text);
                    items.push(reasoning_item(&item.id, &item.text, status));
                }
                Kind::Message => {
                    output.text.push_str(&item.text);
                    items.push(message_item(&item.id, &item.text, status));
                }
                Kind::Call(_) => {
                    output
                        .calls
                        .push((item.call_id.clone(), item.name.clone(), item.text.clone()));
                    items.push(call_item(
                        &item.id,
                        &item.call_id,
                        &item.name,
                        &item.text,
                        status,
                    ));
                }
            }
        }
        (output, items)
    }
}

impl ChunkFormat for ResponseStream {
    fn opening(&mut self, _index: usize) -> Vec<Value> {
        let response = self.head.object("in_progress", Vec::new(), None);
        vec![
            self.event(json!({"type": "response.created", "response": response})),
            self.event(json!({"type": "response.in_progress", "response": response})),
        ]
    }

    fn delta(&mut self, _index: usize, piece: Piece<'_>) -> Vec<Value> {
        let mut out = Vec::new();
        if !piece.reasoning.is_empty() {
            let index = self.enter(Kind::Reasoning, None, &mut out);
            self.items[index].text.push_str(piece.reasoning);
            let id = self.items[index].id.clone();
            out.push(self.event(json!({
                "type": "response.reasoning_text.delta",
                "item_id": id, "output_index": index, "content_index": 0,
                "delta": piece.reasoning,
            })));
        }
        if !piece.text.is_empty() {
            let index = self.enter(Kind::Message, None, &mut out);
            self.items[index].text.push_str(piece.text);
            let id = self.items[index].id.clone();
            out.push(self.event(json!({
                "type": "response.output_text.delta",
                "item_id": id, "output_index": index, "content_index": 0,
                "delta": piece.text, "logprobs": [],
            })));
        }
        for call in piece.tool_calls {
            let index = match (&call.id, &call.name) {
                (Some(id), Some(name)) => {
                    self.enter(Kind::Call(call.index), Some((id, name)), &mut out)
                }
                // More arguments of the call being written.
                _ => match self.items.last() {
                    Some(item) if self.open && item.kind == Kind::Call(call.index) => {
                        self.items.len() - 1
                    }
                    _ => continue,
                },
            };
            if !call.arguments.is_empty() {
                self.items[index].text.push_str(&call.arguments);
                let id = self.items[index].id.clone();
                out.push(self.event(json!({
                    "type": "response.function_call_arguments.delta",
                    "item_id": id, "output_index": index, "delta": call.arguments,
                })));
            }
        }
        out
    }

    fn finish(&mut self, _index: usize, finish_reason: &str, _stop: Option<usize>) -> Vec<Value> {
        finish_reason.clone_into(&mut self.finish_reason);
        Vec::new()
    }

    fn close(&mut self, usage: Usage, _include_usage: bool) -> Vec<Value> {
        let mut out = Vec::new();
        if self.items.is_empty() {
            // Nothing was written: an empty message, as the response always has one.
            self.enter(Kind::Message, None, &mut out);
        }
        self.close_open(&mut out);
        let (output, items) = self.output();
        let status = status_of(&self.finish_reason);
        let response = self.head.object(status, items, Some(&usage));
        self.head.keep(&response, &output);
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(json!({"type": kind, "response": response})));
        out
    }

    fn done_marker(&self) -> bool {
        false
    }

    fn named_events(&self) -> bool {
        true
    }

    fn error(&self, error: &ApiError) -> Value {
        self.event(json!({
            "type": "error",
            "code": error.code.clone().unwrap_or_else(|| error.kind.clone()),
            "message": error.message,
            "param": error.param,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_errors_name_this_apis_fields() {
        for (chat, ours) in [
            ("max_tokens", "max_output_tokens"),
            ("max_completion_tokens", "max_output_tokens"),
            ("response_format.json_schema.schema", "text.format.schema"),
            ("tools[2].function.parameters", "tools[2].parameters"),
            ("tool_choice.function.name", "tool_choice.name"),
            ("messages", "input"),
            ("messages[3].content", "input"),
            ("temperature", "temperature"),
        ] {
            let e = in_responses_terms(ApiError::invalid_value(chat, "x"));
            assert_eq!(e.param.as_deref(), Some(ours));
        }
    }
}
