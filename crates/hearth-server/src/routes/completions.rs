//! `POST /v1/completions`: raw text continuation, no chat template.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::chat::Usage;
use hearth_api::completions::{Completion, CompletionChoice, CompletionRequest, Prompt};
use hearth_api::logprobs::{CompletionLogprobs, TokenOutput};
use hearth_api::{parse_request, unix_now};
use hearth_ipc::PromptSpec;
use serde_json::{json, Value};

use super::stream::{collect, sse, ChunkFormat};
use crate::error::HttpError;
use crate::generate::start;
use crate::ids::{completion_id, system_fingerprint};
use crate::state::AppState;

pub async fn completions(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let (mut request, sampling) = parse_request::<CompletionRequest>(&body)?;
    request.sampling = sampling;
    let params = request.params()?;
    let n = request.sampling.choices()?;
    let prompts = request.prompts()?;
    let model = state.models.resolve(&request.model)?;
    let mut choices = Vec::new();
    for prompt in &prompts {
        for i in 0..n {
            let spec = match prompt {
                Prompt::Text(text) => PromptSpec::Text(text.clone()),
                Prompt::Tokens(tokens) => PromptSpec::Tokens(tokens.clone()),
            };
            choices.push((spec, params.for_choice(i)));
        }
    }
    let started = start(&state, &model, choices, n as usize).await?;
    let mut meta = Meta {
        id: completion_id(),
        created: unix_now(),
        model: request.model.clone(),
        fingerprint: system_fingerprint(),
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
        id: meta.id,
        object: "text_completion".into(),
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.fingerprint,
        choices,
        usage: Some(usage),
    })
    .into_response())
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    logprobs: bool,
    /// Text offset of the next token, per choice.
    offsets: Vec<usize>,
}

impl Meta {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        })
    }
}

impl ChunkFormat for Meta {
    fn opening(&self, _index: usize) -> Option<Value> {
        None
    }

    fn delta(&mut self, index: usize, text: &str, tokens: &[TokenOutput]) -> Option<Value> {
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
        Some(self.chunk(json!([{
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": null,
        }])))
    }

    fn finish(&self, index: usize, finish_reason: &str) -> Value {
        self.chunk(json!([{
            "index": index,
            "text": "",
            "logprobs": null,
            "finish_reason": finish_reason,
        }]))
    }

    fn usage(&self, usage: Usage) -> Value {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = json!(usage);
        chunk
    }
}
