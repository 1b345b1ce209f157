//! `POST /v1/embeddings` (OpenAI's shape): the model's worker tokenizes and embeds, on an
//! embedding context of its own, after the same admission as a generation (one slot's
//! turn, priorities, queue limits); vectors come back as floats or base64.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::embeddings::{f32s_to_base64, EmbeddingRequest};
use hearth_api::ApiError;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::HttpError;
use crate::extract::{RequestBody, RequestMeta};
use crate::generate::admit_error;
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
    let queued = Instant::now();
    let _permit = state
        .models
        .admission(&model)?
        .admit(meta.priority, 1)
        .await
        .map_err(|e| admit_error(e, meta.priority))?;
    let queue_time = queued.elapsed();
    meta.record.fields().queue_time = Some(queue_time);
    state
        .metrics
        .request_queue_time
        .with_label_values(&[&model, meta.priority.as_str()])
        .observe(queue_time.as_secs_f64());
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
