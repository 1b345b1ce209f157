//! `POST /v1/completions`: raw text continuation, no chat template.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::completions::{Completion, CompletionChoice, CompletionRequest, Prompt};
use hearth_api::logprobs::CompletionLogprobs;
use hearth_api::params::check_request_size;
use hearth_api::parse_request;
use hearth_ipc::PromptSpec;
use serde_json::{json, Value};

use super::stream::{collect, sse, OpenAiChunks, Piece, ResponseHead};
use crate::error::HttpError;
use crate::extract::{RequestBody, RequestMeta};
use crate::generate::start;
use crate::ids::completion_id;
use crate::state::AppState;

pub async fn completions(
    State(state): State<AppState>,
    meta: RequestMeta,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request = parse_request::<CompletionRequest>(&body)?;
    let params = request.params()?;
    let n = request.sampling.choices()?;
    let prompts = request.prompts()?;
    let sizes: Vec<usize> = prompts
        .iter()
        .map(|p| match p {
            Prompt::Text(text) => text.len(),
            Prompt::Tokens(tokens) => tokens.len() * 4,
        })
        .collect();
    check_request_size(&sizes, n)?;
    let model = state.models.resolve(&request.model)?;
    let prompts = prompts
        .into_iter()
        .map(|prompt| {
            let spec = match prompt {
                Prompt::Text(text) => PromptSpec::Text(text),
                Prompt::Tokens(tokens) => PromptSpec::Tokens(tokens),
            };
            (
                Arc::new(spec),
                (0..n).map(|i| params.for_choice(i)).collect(),
            )
        })
        .collect();
    let started = start(&state, &model, prompts, &meta).await?;
    let mut meta = Meta {
        head: ResponseHead::new(completion_id(), &request.model, "text_completion"),
        logprobs: params.top_logprobs.is_some(),
        offsets: vec![0; started.choices()],
    };
    if request.sampling.streaming() {
        return Ok(sse(started, meta, request.sampling.include_usage()));
    }
    let (results, usage) = collect(started).await?;
    let choices = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| CompletionChoice {
            index: index as u32,
            logprobs: meta.logprobs.then(|| {
                let mut lp = CompletionLogprobs::default();
                meta.offsets[index] = 0;
                for token in &r.tokens {
                    lp.push(token, meta.offsets[index]);
                    meta.offsets[index] += token.text.len();
                }
                lp
            }),
            text: r.text,
            finish_reason: Some(r.finish_reason),
        })
        .collect();
    Ok(Json(Completion {
        id: meta.head.id,
        object: "text_completion".into(),
        created: meta.head.created,
        model: meta.head.model,
        system_fingerprint: meta.head.fingerprint,
        choices,
        usage: Some(usage),
    })
    .into_response())
}

struct Meta {
    head: ResponseHead,
    logprobs: bool,
    /// Text offset of the next token, per choice.
    offsets: Vec<usize>,
}

impl OpenAiChunks for Meta {
    fn head(&self) -> &ResponseHead {
        &self.head
    }

    fn opening_chunk(&self, _index: usize) -> Option<Value> {
        None
    }

    fn delta_chunk(&mut self, index: usize, piece: Piece<'_>) -> Option<Value> {
        let (text, tokens) = (piece.text, piece.tokens);
        if text.is_empty() && (tokens.is_empty() || !self.logprobs) {
            return None;
        }
        let logprobs = if self.logprobs {
            let mut lp = CompletionLogprobs::default();
            for token in tokens {
                lp.push(token, self.offsets[index]);
                self.offsets[index] += token.text.len();
            }
            json!(lp)
        } else {
            Value::Null
        };
        Some(self.head.chunk(json!([{
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": null,
        }])))
    }

    fn finish_chunk(&self, index: usize, finish_reason: &str) -> Value {
        self.head.chunk(json!([{
            "index": index,
            "text": "",
            "logprobs": null,
            "finish_reason": finish_reason,
        }]))
    }
}
