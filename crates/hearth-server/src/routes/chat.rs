//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::chat::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, Usage,
};
use hearth_api::logprobs::{ChatLogprobs, TokenOutput};
use hearth_api::params::check_request_size;
use hearth_api::parse_request;
use hearth_ipc::PromptSpec;
use serde_json::{json, Value};

use super::stream::{collect, sse, ChunkFormat, ResponseHead};
use crate::error::HttpError;
use crate::extract::{RequestBody, RequestMeta};
use crate::generate::start;
use crate::ids::chat_completion_id;
use crate::state::AppState;

pub async fn chat_completions(
    State(state): State<AppState>,
    meta: RequestMeta,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request = parse_request::<ChatCompletionRequest>(&body)?;
    let params = request.params()?;
    let n = request.sampling.choices()?;
    let messages = request.template_messages()?;
    let tools = request.tools_for_template()?;
    let prompt_bytes = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .map(str::len)
        .sum();
    check_request_size(&[prompt_bytes], n)?;
    let model = state.models.resolve(&request.model)?;
    let prompt = PromptSpec::Chat { messages, tools };
    let choices = (0..n).map(|i| params.for_choice(i)).collect();
    let started = start(&state, &model, vec![(Arc::new(prompt), choices)], &meta)
        .await
        .map_err(|mut e| {
            // The worker checks the limit against the context; name the field the client sent.
            if request.max_completion_tokens.is_some() && e.param.as_deref() == Some("max_tokens") {
                e.param = Some("max_completion_tokens".to_owned());
            }
            e
        })?;
    let meta = Meta {
        head: ResponseHead::new(
            chat_completion_id(),
            &request.model,
            "chat.completion.chunk",
        ),
        logprobs: params.top_logprobs.is_some(),
    };
    if request.sampling.streaming() {
        return Ok(sse(started, meta, request.sampling.include_usage()));
    }
    let (results, usage) = collect(started).await?;
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| ChatChoice {
            index: index as u32,
            logprobs: meta.logprobs.then(|| ChatLogprobs::from_tokens(&r.tokens)),
            message: AssistantMessage {
                role: "assistant".into(),
                content: r.text,
            },
            finish_reason: Some(r.finish_reason),
        })
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

struct Meta {
    head: ResponseHead,
    logprobs: bool,
}

impl ChunkFormat for Meta {
    fn opening(&self, index: usize) -> Option<Value> {
        Some(self.head.chunk(json!([{
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
        }])))
    }

    fn delta(&mut self, index: usize, text: &str, tokens: &[TokenOutput]) -> Option<Value> {
        if text.is_empty() && (tokens.is_empty() || !self.logprobs) {
            return None;
        }
        let logprobs = if self.logprobs {
            json!(ChatLogprobs::from_tokens(tokens))
        } else {
            Value::Null
        };
        Some(self.head.chunk(json!([{
            "index": index,
            "delta": {"content": text},
            "logprobs": logprobs,
            "finish_reason": null,
        }])))
    }

    fn finish(&self, index: usize, finish_reason: &str) -> Value {
        self.head.chunk(json!([{
            "index": index,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish_reason,
        }]))
    }

    fn usage(&self, usage: Usage) -> Value {
        self.head.usage_chunk(usage)
    }
}
