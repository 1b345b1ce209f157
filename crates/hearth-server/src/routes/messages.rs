//! `POST /v1/messages`: Anthropic's Messages API, run through the chat path (see
//! `hearth_api::anthropic`), answered as a `message` or as Anthropic's event stream
//! (`message_start`, `content_block_start/delta/stop`, `message_delta`, `message_stop`).

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::anthropic::{self, MessagesRequest};
use hearth_api::chat::{ChatCompletionRequest, Usage};
use hearth_api::ApiError;
use serde_json::{json, Value};

use super::chat::{start_chat, ChatStart};
use super::stream::{collect, sse, ChoiceResult, ChunkFormat, Piece};
use crate::error::HttpError;
use crate::extract::{RequestBody, RequestMeta};
use crate::state::AppState;

pub async fn messages(
    State(state): State<AppState>,
    meta: RequestMeta,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request: MessagesRequest = hearth_api::parse_body(&body)?;
    let chat: ChatCompletionRequest = hearth_api::request_from_value(&request.to_chat()?)?;
    let ChatStart { started, .. } = start_chat(&state, &meta, &chat).await?;
    let head = MessageHead {
        id: crate::ids::message_id(),
        model: request.model.clone(),
        thinking: request.thinking(),
        stop_sequences: request.stop_sequences.clone().unwrap_or_default(),
    };
    if request.streaming() {
        let input_tokens = started.usage_prompt_tokens();
        return Ok(sse(started, MessageStream::new(head, input_tokens), false));
    }
    let (results, usage) = collect(started).await?;
    let result = results.into_iter().next().unwrap_or_default();
    Ok(Json(head.message(result, usage)).into_response())
}

struct MessageHead {
    id: String,
    model: String,
    /// Reasoning goes back as `thinking` blocks only when the request enabled thinking.
    thinking: bool,
    stop_sequences: Vec<String>,
}

impl MessageHead {
    fn message(&self, result: ChoiceResult, usage: Usage) -> Value {
        let mut content = Vec::new();
        if self.thinking && !result.reasoning.is_empty() {
            content
                .push(json!({"type": "thinking", "thinking": result.reasoning, "signature": ""}));
        }
        if result.tool_calls.is_empty() || !result.text.trim().is_empty() {
            content.push(json!({"type": "text", "text": result.text}));
        }
        for call in &result.tool_calls {
            content.push(json!({
                "type": "tool_use",
                "id": anthropic::tool_use_id(&call.id),
                "name": call.function.name,
                "input": anthropic::tool_input(&call.function.arguments),
            }));
        }
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason(&result.finish_reason, result.stop_index),
            "stop_sequence": self.stop_sequence(result.stop_index),
            "usage": usage_of(&usage),
        })
    }

    fn stop_reason(&self, finish_reason: &str, stop_index: Option<usize>) -> &'static str {
        match stop_index {
            Some(_) => "stop_sequence",
            None => anthropic::stop_reason(finish_reason),
        }
    }

    /// The stop sequence that ended the reply.
    fn stop_sequence(&self, stop_index: Option<usize>) -> Value {
        stop_index
            .and_then(|i| self.stop_sequences.get(i))
            .map_or(Value::Null, |s| json!(s))
    }
}

fn usage_of(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.prompt_tokens_details.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// The content block being written in a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its index among the reply's calls.
    Tool(u32),
}

struct MessageStream {
    head: MessageHead,
    input_tokens: usize,
    /// The block open now and its index; blocks are numbered in the order they open.
    open: Option<(Block, usize)>,
    next_index: usize,
    stop_reason: &'static str,
    stop_sequence: Value,
}

impl MessageStream {
    fn new(head: MessageHead, input_tokens: usize) -> MessageStream {
        MessageStream {
            head,
            input_tokens,
            open: None,
            next_index: 0,
            stop_reason: "end_turn",
            stop_sequence: Value::Null,
        }
    }

    /// Make `block` the open one (closing another), with its start event; its index.
    fn enter(&mut self, block: Block, start: Value, out: &mut Vec<Value>) -> usize {
        if let Some((open, index)) = self.open {
            if open == block {
                return index;
            }
            out.push(json!({"type": "content_block_stop", "index": index}));
        }
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((block, index));
        out.push(json!({"type": "content_block_start", "index": index, "content_block": start}));
        index
    }
}

impl ChunkFormat for MessageStream {
    fn opening(&mut self, _index: usize) -> Vec<Value> {
        vec![json!({
            "type": "message_start",
            "message": {
                "id": self.head.id,
                "type": "message",
                "role": "assistant",
                "model": self.head.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
            },
        })]
    }

    fn delta(&mut self, _index: usize, piece: Piece<'_>) -> Vec<Value> {
        let mut out = Vec::new();
        if self.head.thinking && !piece.reasoning.is_empty() {
            let start = json!({"type": "thinking", "thinking": "", "signature": ""});
            let index = self.enter(Block::Thinking, start, &mut out);
            out.push(json!({
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "thinking_delta", "thinking": piece.reasoning},
            }));
        }
        if !piece.text.is_empty() {
            let index = self.enter(Block::Text, json!({"type": "text", "text": ""}), &mut out);
            out.push(json!({
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": piece.text},
            }));
        }
        for call in piece.tool_calls {
            let index = match (&call.id, &call.name) {
                (Some(id), Some(name)) => {
                    let start = json!({
                        "type": "tool_use",
                        "id": anthropic::tool_use_id(id),
                        "name": name,
                        "input": {},
                    });
                    self.enter(Block::Tool(call.index), start, &mut out)
                }
                // More arguments of the call being written.
                _ => match self.open {
                    Some((Block::Tool(open), index)) if open == call.index => index,
                    _ => continue,
                },
            };
            if !call.arguments.is_empty() {
                out.push(json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": call.arguments},
                }));
            }
        }
        out
    }

    fn finish(&mut self, _index: usize, finish_reason: &str, stop: Option<usize>) -> Vec<Value> {
        self.stop_reason = self.head.stop_reason(finish_reason, stop);
        self.stop_sequence = self.head.stop_sequence(stop);
        Vec::new()
    }

    fn close(&mut self, usage: Usage, _include_usage: bool) -> Vec<Value> {
        let mut out = Vec::new();
        match self.open.take() {
            Some((_, index)) => out.push(json!({"type": "content_block_stop", "index": index})),
            // Nothing was written: one empty text block, as a reply always has content.
            None => {
                out.push(json!({"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}));
                out.push(json!({"type": "content_block_stop", "index": 0}));
            }
        }
        out.push(json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": usage_of(&usage),
        }));
        out.push(json!({"type": "message_stop"}));
        out
    }

    fn done_marker(&self) -> bool {
        false
    }

    fn named_events(&self) -> bool {
        true
    }

    fn error(&self, error: &ApiError) -> Value {
        anthropic::error_body(error)
    }
}

/// Middleware: every error under `/v1/messages` — the handler's, and those of the layers in
/// front of it (API key, rate limit, body size, content type, unknown path) — in Anthropic's
/// shape, `{"type": "error", "error": {"type", "message"}}`, status and headers kept.
pub async fn shape_errors(request: Request, next: Next) -> Response {
    let anthropic_path = request.uri().path().starts_with("/v1/messages");
    let response = next.run(request).await;
    if !anthropic_path || response.status().as_u16() < 400 {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Our own error bodies (which may echo a long value back): read them whole.
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        parts.headers.remove(header::CONTENT_LENGTH);
        let error = ApiError::new(parts.status.as_u16(), "", None, "request failed");
        return Response::from_parts(parts, anthropic::error_body(&error).to_string().into());
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let message = value["error"]["message"]
        .as_str()
        .unwrap_or("request failed")
        .to_owned();
    let error = ApiError::new(parts.status.as_u16(), "", None, message);
    let body = anthropic::error_body(&error).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}
