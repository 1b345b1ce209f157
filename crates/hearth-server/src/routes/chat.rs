//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::chat::{AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest};
use hearth_api::logprobs::ChatLogprobs;
use hearth_api::params::check_request_size;
use hearth_api::{parse_request, ApiError};
use hearth_ipc::PromptSpec;
use serde_json::{json, Value};

use super::stream::{collect, sse, ChoiceResult, OpenAiChunks, Piece, ResponseHead};
use crate::error::HttpError;
use crate::extract::{RequestBody, RequestMeta};
use crate::generate::{start, Started};
use crate::ids::chat_completion_id;
use crate::state::AppState;

pub async fn chat_completions(
    State(state): State<AppState>,
    meta: RequestMeta,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request = parse_request::<ChatCompletionRequest>(&body)?;
    let ChatStart {
        started,
        calls,
        logprobs,
    } = start_chat(&state, &meta, &request).await?;
    let meta = Meta {
        head: ResponseHead::new(
            chat_completion_id(),
            &request.model,
            "chat.completion.chunk",
        ),
        logprobs,
        calls,
    };
    if request.sampling.streaming() {
        return Ok(sse(started, meta, request.sampling.include_usage()));
    }
    let (results, usage) = collect(started).await?;
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| meta.choice(index, r))
        .collect();
    Ok(Json(ChatCompletion {
        id: meta.head.id,
        object: "chat.completion".into(),
        created: meta.head.created,
        model: meta.head.model,
        system_fingerprint: meta.head.fingerprint,
        choices,
        usage,
    })
    .into_response())
}

/// A chat request running on its worker.
pub(super) struct ChatStart {
    pub started: Started,
    /// Tool calls may come back: `Some(legacy)`, where legacy replies use `function_call`.
    pub calls: Option<bool>,
    pub logprobs: bool,
}

/// Validate a chat request, render nothing yet (the worker does), and start its choices.
/// Shared by the APIs that map onto chat (Anthropic's Messages).
pub(super) async fn start_chat(
    state: &AppState,
    meta: &RequestMeta,
    request: &ChatCompletionRequest,
) -> Result<ChatStart, ApiError> {
    let params = request.params()?;
    let n = request.sampling.choices()?;
    // A random marker per request stands for each image in the rendered prompt: no text a
    // client sends can pose as one.
    let image_marker = format!("<hearth-image-{:032x}-", rand::random::<u128>());
    let (messages, image_parts) = request.template_messages_with_images(&image_marker)?;
    let (tools, tool_use) = request.tool_use()?.unzip();
    let prompt_bytes = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .map(str::len)
        .sum::<usize>()
        + tools
            .iter()
            .flatten()
            .map(|t| t.to_string().len())
            .sum::<usize>();
    check_request_size(&[prompt_bytes], n)?;
    let model = state.models.resolve(&request.model)?;
    let (images, keep) = crate::prompt_images::load(state, &model, &image_parts).await?;
    let calls = match &tool_use {
        Some(t) if t.calls_possible() => Some(t.legacy),
        _ => None,
    };
    let image_marker = if images.is_empty() {
        String::new()
    } else {
        image_marker
    };
    let prompt = PromptSpec::Chat {
        messages,
        tools,
        tool_use,
        images,
        image_marker,
        keep,
    };
    let choices = (0..n).map(|i| params.for_choice(i)).collect();
    let started = start(state, &model, vec![(Arc::new(prompt), choices)], meta)
        .await
        .map_err(|mut e| {
            // The worker checks the limit against the context; name the field the client sent.
            if request.max_completion_tokens.is_some() && e.param.as_deref() == Some("max_tokens") {
                e.param = Some("max_completion_tokens".to_owned());
            }
            // The worker names images by their order; the client knows them by their part.
            let image = e
                .param
                .as_deref()
                .and_then(|p| {
                    p.strip_prefix("images[")?
                        .strip_suffix(']')?
                        .parse::<usize>()
                        .ok()
                })
                .and_then(|k| image_parts.get(k));
            if let Some(part) = image {
                e.param = Some(part.param.clone());
            }
            e
        })?;
    Ok(ChatStart {
        started,
        calls,
        logprobs: params.top_logprobs.is_some(),
    })
}

struct Meta {
    head: ResponseHead,
    logprobs: bool,
    /// Tool calls may come back: `Some(legacy)`, where legacy replies use `function_call`.
    calls: Option<bool>,
}

impl Meta {
    fn legacy(&self) -> bool {
        self.calls == Some(true)
    }

    /// The finish reason as the client's API names it.
    fn finish_reason(&self, reason: &str) -> String {
        match reason {
            "tool_calls" if self.legacy() => "function_call".into(),
            other => other.into(),
        }
    }

    fn choice(&self, index: usize, r: ChoiceResult) -> ChatChoice {
        let has_calls = !r.tool_calls.is_empty();
        let mut message = AssistantMessage {
            role: "assistant".into(),
            // OpenAI sends null content when the reply is only calls.
            content: (!has_calls || !r.text.trim().is_empty()).then_some(r.text),
            reasoning_content: (!r.reasoning.is_empty()).then_some(r.reasoning),
            tool_calls: None,
            function_call: None,
        };
        if has_calls {
            if self.legacy() {
                message.function_call = r.tool_calls.into_iter().next().map(|c| c.function);
            } else {
                message.tool_calls = Some(r.tool_calls);
            }
        }
        ChatChoice {
            index: index as u32,
            logprobs: self.logprobs.then(|| ChatLogprobs::from_tokens(&r.tokens)),
            message,
            finish_reason: Some(self.finish_reason(&r.finish_reason)),
        }
    }
}

impl OpenAiChunks for Meta {
    fn head(&self) -> &ResponseHead {
        &self.head
    }

    fn opening_chunk(&self, index: usize) -> Option<Value> {
        // With tools the reply may be only calls, whose message content is null.
        let content = if self.calls.is_some() {
            Value::Null
        } else {
            json!("")
        };
        Some(self.head.chunk(json!([{
            "index": index,
            "delta": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": null,
        }])))
    }

    fn delta_chunk(&mut self, index: usize, piece: Piece<'_>) -> Option<Value> {
        let mut delta = serde_json::Map::new();
        if !piece.text.is_empty() {
            delta.insert("content".into(), json!(piece.text));
        }
        if !piece.reasoning.is_empty() {
            delta.insert("reasoning_content".into(), json!(piece.reasoning));
        }
        if !piece.tool_calls.is_empty() {
            if self.legacy() {
                // One call: its name once, then its arguments.
                let mut call = serde_json::Map::new();
                for part in piece.tool_calls.iter().filter(|c| c.index == 0) {
                    if let Some(name) = &part.name {
                        call.insert("name".into(), json!(name));
                    }
                    let so_far = call.get("arguments").and_then(Value::as_str).unwrap_or("");
                    let arguments = format!("{so_far}{}", part.arguments);
                    call.insert("arguments".into(), json!(arguments));
                }
                if !call.is_empty() {
                    delta.insert("function_call".into(), Value::Object(call));
                }
            } else {
                let calls: Vec<Value> = piece
                    .tool_calls
                    .iter()
                    .map(|c| match (&c.id, &c.name) {
                        (Some(id), Some(name)) => json!({
                            "index": c.index,
                            "id": id,
                            "type": "function",
                            "function": {"name": name, "arguments": c.arguments},
                        }),
                        _ => json!({
                            "index": c.index,
                            "function": {"arguments": c.arguments},
                        }),
                    })
                    .collect();
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
        }
        let with_logprobs = self.logprobs && !piece.tokens.is_empty();
        if delta.is_empty() && !with_logprobs {
            return None;
        }
        if delta.is_empty() {
            delta.insert("content".into(), json!(""));
        }
        let logprobs = if self.logprobs {
            json!(ChatLogprobs::from_tokens(piece.tokens))
        } else {
            Value::Null
        };
        Some(self.head.chunk(json!([{
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": null,
        }])))
    }

    fn finish_chunk(&self, index: usize, finish_reason: &str) -> Value {
        self.head.chunk(json!([{
            "index": index,
            "delta": {},
            "logprobs": null,
            "finish_reason": self.finish_reason(finish_reason),
        }]))
    }
}
