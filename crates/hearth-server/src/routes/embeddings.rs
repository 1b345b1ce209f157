//! `POST /v1/embeddings` (OpenAI's shape): the model's worker tokenizes and embeds, on an
//! embedding context of its own, after the same admission as a generation (one slot's
//! turn, priorities, queue limits); vectors come back as floats or base64.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::embeddings::{f32s_to_base64, EmbeddingRequest};
use hearth_api::ApiError;
use serde_json::{json, Value};

use crate::error::HttpError;
use crate::extract::{RequestBody, RequestMeta};
use crate::generate::admit;
use crate::state::AppState;

pub async fn embeddings(
    State(state): State<AppState>,
    meta: RequestMeta,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request: EmbeddingRequest = hearth_api::parse_body(&body)?;
    let inputs = request.inputs()?;
    let base64 = request.base64()?;
    let model = state.models.resolve(&request.model)?;
    meta.record.fields().model = Some(model.clone());
    if !state.models.can_embed(&model).await? {
        return Err(ApiError::invalid_value(
            "model",
            format!(
                "model '{}' does not make embeddings: its GGUF names no pooling (a generative \
                 model); serve it with --pooling mean, cls or last",
                request.model
            ),
        )
        .into());
    }
    let admission = state.models.admission(&model)?;
    let _permit = admit(&state, &admission, &model, &meta, 1).await?;
    let worker = state.models.worker(&model).await?;
    let embeddings = worker.embed(inputs, state.request_timeout).await?;
    if let Some(first) = embeddings.vectors.first() {
        request.check_dimensions(first.len())?;
    }
    state
        .metrics
        .prompt_tokens
        .with_label_values(&[&model])
        .inc_by(embeddings.prompt_tokens as u64);
    state
        .metrics
        .request_success
        .with_label_values(&[&model, "embedding"])
        .inc();
    meta.record.fields().prompt_tokens = embeddings.prompt_tokens;
    let data: Vec<Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                json!(f32s_to_base64(vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {
            "prompt_tokens": embeddings.prompt_tokens,
            "total_tokens": embeddings.prompt_tokens,
        },
    }))
    .into_response())
}
