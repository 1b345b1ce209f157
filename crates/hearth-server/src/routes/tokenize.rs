//! `POST /tokenize`, `POST /detokenize` (llama.cpp's shapes, vLLM's spellings accepted) and
//! `POST /v1/messages/count_tokens` (Anthropic's). The model's worker tokenizes, with the
//! same template and tokenizer a generation uses, so a count is exactly what a request
//! with that prompt would report as its prompt tokens.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::anthropic::MessagesRequest;
use hearth_api::chat::ChatCompletionRequest;
use hearth_api::ApiError;
use hearth_ipc::PromptSpec;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::HttpError;
use crate::extract::RequestBody;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "default", "content": "Hello world"}))]
pub(crate) struct TokenizeRequest {
    model: String,
    /// llama.cpp's field; vLLM's `prompt` means the same.
    #[serde(default, alias = "prompt")]
    content: Option<String>,
    /// vLLM's chat form: rendered with the model's template first.
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    add_special: Option<bool>,
    #[serde(default)]
    with_pieces: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "default", "tokens": [28120, 905]}))]
pub(crate) struct DetokenizeRequest {
    model: String,
    tokens: Vec<u32>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request: TokenizeRequest = hearth_api::parse_body(&body)?;
    let (prompt, add_special) = match (&request.content, &request.messages) {
        (Some(text), None) => (
            PromptSpec::Text(text.clone()),
            request.add_special.unwrap_or(false),
        ),
        (None, Some(messages)) => {
            let mut chat = json!({"model": request.model, "messages": messages});
            if let Some(tools) = &request.tools {
                chat["tools"] = json!(tools);
            }
            (chat_prompt(&chat)?, false)
        }
        _ => {
            return Err(ApiError::invalid_request(
                "send exactly one of 'content' (or 'prompt') and 'messages'",
                Some("content"),
            )
            .into())
        }
    };
    let model = state.models.resolve(&request.model)?;
    let (tokens, pieces) = state
        .models
        .count(&model, prompt, add_special, request.with_pieces)
        .await?;
    let count = tokens.len();
    let tokens: Value = if request.with_pieces {
        tokens
            .iter()
            .zip(&pieces)
            // As llama.cpp: the text, or the bytes of a piece that is part of a character.
            .map(|(id, piece)| match std::str::from_utf8(piece) {
                Ok(text) => json!({"id": id, "piece": text}),
                Err(_) => json!({"id": id, "piece": piece}),
            })
            .collect()
    } else {
        json!(tokens)
    };
    Ok(Json(json!({
        "tokens": tokens,
        "count": count,
        "max_model_len": state.models.context_per_slot(&model)?,
    }))
    .into_response())
}

pub async fn detokenize(
    State(state): State<AppState>,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let request: DetokenizeRequest = hearth_api::parse_body(&body)?;
    let model = state.models.resolve(&request.model)?;
    let worker = state.models.counter(&model).await?;
    let text = worker.detokenize(request.tokens).await?;
    // llama.cpp answers `content`, vLLM `prompt`.
    Ok(Json(json!({"content": text, "prompt": text})).into_response())
}

/// Anthropic's `count_tokens`: the prompt tokens a `/v1/messages` request with this body
/// would read.
pub async fn count_tokens(
    State(state): State<AppState>,
    RequestBody(body): RequestBody,
) -> Result<Response, HttpError> {
    let mut value: Value = hearth_api::parse_body(&body)?;
    // The same fields as a message; max_tokens means nothing here (nothing is generated).
    if let Some(object) = value.as_object_mut() {
        object.insert("max_tokens".into(), json!(1u32 << 30));
    }
    let request: MessagesRequest = hearth_api::parse_value(&value)?;
    let prompt = chat_prompt(&request.to_chat()?)?;
    let model = state.models.resolve(&request.model)?;
    let (tokens, _) = state.models.count(&model, prompt, false, false).await?;
    Ok(Json(json!({"input_tokens": tokens.len()})).into_response())
}

/// A chat request body's prompt, as the chat endpoint would send it to the worker.
fn chat_prompt(chat: &Value) -> Result<PromptSpec, ApiError> {
    let request: ChatCompletionRequest = hearth_api::request_from_value(chat)?;
    let messages = request.template_messages()?;
    let (tools, tool_use) = request.tool_use()?.unzip();
    Ok(PromptSpec::Chat {
        messages,
        tools,
        tool_use,
        images: Vec::new(),
        image_marker: String::new(),
        keep: Default::default(),
    })
}
