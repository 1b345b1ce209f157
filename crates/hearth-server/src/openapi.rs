//! The OpenAPI 3.1 document served at `GET /openapi.json`. Request and response schemas are
//! derived from the API's Rust types (`utoipa::ToSchema` on `hearth_api`); the replies that
//! handlers build as JSON (`json!`) have typed mirrors here. `tests/python/test_openapi.py`
//! validates real responses against the document and runs schemathesis against a live
//! server; a unit test below checks that every route the router serves is documented.

#![allow(dead_code)] // The mirror types exist for their schemas.

use hearth_api::anthropic::MessagesRequest;
use hearth_api::chat::{ChatCompletion, ChatCompletionRequest};
use hearth_api::completions::{Completion, CompletionRequest};
use hearth_api::embeddings::EmbeddingRequest;
use hearth_api::models::{ModelCard, ModelList};
use hearth_api::params::SamplingFields;
use hearth_api::responses::ResponsesRequest;
use hearth_api::ApiError;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use crate::routes::{DetokenizeRequest, TokenizeRequest};

/// A chat request body: the request's own fields and the sampling fields it shares with
/// `/v1/completions` (read from the same body).
#[derive(ToSchema)]
struct ChatCompletionBody {
    #[serde(flatten)]
    request: ChatCompletionRequest,
    #[serde(flatten)]
    sampling: SamplingFields,
}

#[derive(ToSchema)]
struct CompletionBody {
    #[serde(flatten)]
    request: CompletionRequest,
    #[serde(flatten)]
    sampling: SamplingFields,
}

/// OpenAI's error envelope.
#[derive(ToSchema)]
struct ErrorResponse {
    error: ApiError,
}

#[derive(ToSchema)]
struct AnthropicErrorDetail {
    #[schema(rename = "type")]
    kind: String,
    message: String,
}

/// Anthropic's error envelope (`/v1/messages*`).
#[derive(ToSchema)]
struct AnthropicError {
    #[schema(rename = "type")]
    kind: String,
    error: AnthropicErrorDetail,
}

#[derive(ToSchema)]
struct EmbeddingUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(ToSchema)]
struct EmbeddingItem {
    object: String,
    index: usize,
    /// A list of floats, or base64 of little-endian f32 with `encoding_format: base64`.
    #[schema(value_type = Value)]
    embedding: Value,
}

#[derive(ToSchema)]
struct EmbeddingList {
    object: String,
    data: Vec<EmbeddingItem>,
    model: String,
    usage: EmbeddingUsage,
}

#[derive(ToSchema)]
struct TokenizeResponse {
    /// Token ids, or `{"id", "piece"}` objects with `with_pieces`.
    tokens: Vec<Value>,
    count: usize,
    max_model_len: usize,
}

#[derive(ToSchema)]
struct DetokenizeResponse {
    content: String,
    prompt: String,
}

#[derive(ToSchema)]
struct CountTokensResponse {
    input_tokens: usize,
}

/// Anthropic's `message`.
#[derive(ToSchema)]
struct AnthropicMessage {
    id: String,
    #[schema(rename = "type")]
    kind: String,
    role: String,
    model: String,
    /// `text`, `thinking` and `tool_use` blocks.
    content: Vec<Value>,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
    usage: Value,
}

/// A Responses API `response`.
#[derive(ToSchema)]
struct ResponseObject {
    id: String,
    object: String,
    created_at: u64,
    /// `completed`, `incomplete` (or `in_progress` in stream events).
    status: String,
    error: Option<Value>,
    incomplete_details: Option<Value>,
    /// `message`, `function_call` and `reasoning` items.
    output: Vec<Value>,
    usage: Option<Value>,
    model: String,
    store: bool,
    previous_response_id: Option<String>,
}

#[derive(ToSchema)]
struct DeletedResponse {
    id: String,
    object: String,
    deleted: bool,
}

#[derive(ToSchema)]
struct ModelAction {
    id: String,
    object: String,
    state: String,
    changed: bool,
}

#[derive(ToSchema)]
struct Live {
    status: String,
}

#[derive(ToSchema)]
struct Ready {
    /// `ready`, `degraded` or `unavailable`.
    status: String,
    unresponsive: Vec<String>,
    /// Each model's state, worker, slots, queue, caches and idle seconds, by id.
    models: Value,
    /// Models whose tokens a vocabulary-only worker counts.
    counting: Vec<String>,
}

// The operations. Each stub carries one path's documentation; the handlers are in
// `routes/`.

/// Chat completions (OpenAI); `stream: true` answers server-sent events.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = ChatCompletionBody,
    responses(
        (status = 200, body = ChatCompletion, description = "A completion, or `text/event-stream` chunks when streaming"),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn chat_completions() {}

/// Text completions (OpenAI's legacy API).
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = CompletionBody,
    responses(
        (status = 200, body = Completion, description = "A completion, or `text/event-stream` chunks when streaming"),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn completions() {}

/// Sentence embeddings.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body = EmbeddingRequest,
    responses((status = 200, body = EmbeddingList),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn embeddings() {}

/// OpenAI's Responses API.
#[utoipa::path(post, path = "/v1/responses", tag = "openai",
    request_body = ResponsesRequest,
    responses(
        (status = 200, body = ResponseObject, description = "A response, or `text/event-stream` events when streaming"),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn responses_create() {}

/// A stored response.
#[utoipa::path(get, path = "/v1/responses/{id}", tag = "openai",
    params(("id" = String, Path, description = "A response id")),
    responses((status = 200, body = ResponseObject), (status = 404, body = ErrorResponse)))]
fn responses_get() {}

/// Forget a stored response.
#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "openai",
    params(("id" = String, Path, description = "A response id")),
    responses((status = 200, body = DeletedResponse), (status = 404, body = ErrorResponse)))]
fn responses_delete() {}

/// Anthropic's Messages API.
#[utoipa::path(post, path = "/v1/messages", tag = "anthropic",
    request_body = MessagesRequest,
    responses(
        (status = 200, body = AnthropicMessage, description = "A message, or `text/event-stream` events when streaming"),
        (status = "4XX", body = AnthropicError), (status = "5XX", body = AnthropicError)))]
fn messages() {}

/// The input tokens a `/v1/messages` request would read.
#[utoipa::path(post, path = "/v1/messages/count_tokens", tag = "anthropic",
    request_body = MessagesRequest,
    responses((status = 200, body = CountTokensResponse),
        (status = "4XX", body = AnthropicError), (status = "5XX", body = AnthropicError)))]
fn count_tokens() {}

/// A prompt's tokens, as a generation would read them.
#[utoipa::path(post, path = "/tokenize", tag = "tokens",
    request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn tokenize() {}

/// Token ids to text.
#[utoipa::path(post, path = "/detokenize", tag = "tokens",
    request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn detokenize() {}

/// The models this server serves, with their state.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList)))]
fn models_list() {}

/// One model (ids may hold a slash: `org/name`).
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models",
    params(("id" = String, Path, description = "A model id")),
    responses((status = 200, body = ModelCard), (status = 404, body = ErrorResponse)))]
fn models_get() {}

/// Load a model now.
#[utoipa::path(post, path = "/v1/models/{id}/load", tag = "models",
    params(("id" = String, Path, description = "A model id")),
    responses((status = 200, body = ModelAction),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn models_load() {}

/// Unload a model now.
#[utoipa::path(post, path = "/v1/models/{id}/unload", tag = "models",
    params(("id" = String, Path, description = "A model id")),
    responses((status = 200, body = ModelAction),
        (status = "4XX", body = ErrorResponse), (status = "5XX", body = ErrorResponse)))]
fn models_unload() {}

/// The process answers.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Live)))]
fn health() {}

/// Every model's state, workers and queues (503 when a worker does not answer).
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, body = Ready), (status = 503, body = Ready)))]
fn health_ready() {}

/// Prometheus metrics (`hearth:*`), in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, body = String, content_type = "text/plain")))]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, body = Value, description = "OpenAPI 3.1")))]
fn openapi_json() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hearth",
        description = "A local OpenAI-compatible LLM inference server (with Anthropic's \
                       Messages API, embeddings and token counting)."
    ),
    paths(
        chat_completions,
        completions,
        embeddings,
        responses_create,
        responses_get,
        responses_delete,
        messages,
        count_tokens,
        tokenize,
        detokenize,
        models_list,
        models_get,
        models_load,
        models_unload,
        health,
        health_ready,
        metrics,
        openapi_json
    ),
    components(schemas(ErrorResponse, AnthropicError))
)]
struct ApiDoc;

/// The document, as JSON.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    doc["info"]["version"] = Value::String(env!("CARGO_PKG_VERSION").into());
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_schemas_resolve() {
        let doc = document();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        for route in crate::routes::ROUTES {
            assert!(
                paths.contains_key(*route),
                "{route} is not in the OpenAPI document"
            );
        }
        assert_eq!(
            paths.len(),
            crate::routes::ROUTES.len() + 2,
            "load and unload"
        );
        for page in crate::routes::PAGES {
            assert!(
                !paths.contains_key(*page),
                "{page} is a page, not an API endpoint"
            );
        }
        // Every $ref names a schema the document has.
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but missing"
            );
        }
        // A chat body is the request's fields and the shared sampling fields.
        let chat = schemas["ChatCompletionBody"].to_string();
        assert!(chat.contains("ChatCompletionRequest") && chat.contains("SamplingFields"));
        assert!(schemas["SamplingFields"]["properties"]["temperature"].is_object());
    }
}
