//! The HTTP surface: one module per endpoint.

mod chat;
mod completions;
mod embeddings;
mod health;
mod messages;
mod metrics;
mod models;
mod responses;
mod stream;
mod tokenize;
mod ui;

use axum::routing::{get, post};
use axum::Router;

pub use messages::shape_errors as shape_anthropic_errors;
pub(crate) use tokenize::{DetokenizeRequest, TokenizeRequest};

/// Every path `router` serves, as the OpenAPI document names them (`{id}` for axum's
/// `{*id}`); the document's test checks each is documented.
#[cfg(test)]
pub(crate) const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/responses/{id}",
    "/tokenize",
    "/detokenize",
    "/v1/models",
    "/v1/models/{id}",
    "/health",
    "/health/ready",
    "/metrics",
    "/openapi.json",
];

/// The chat page's files: not API endpoints, so not in the OpenAPI document.
#[cfg(test)]
pub(crate) const PAGES: &[&str] = &["/", "/ui/app.js", "/ui/app.css"];

use crate::guard;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    // Every POST route checks its Content-Type (415) once its method matched: a wrong
    // method still gets 405.
    let json = || axum::middleware::from_fn(guard::require_json);
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat::chat_completions).route_layer(json()),
        )
        .route(
            "/v1/completions",
            post(completions::completions).route_layer(json()),
        )
        .route(
            "/v1/embeddings",
            post(embeddings::embeddings).route_layer(json()),
        )
        .route("/v1/messages", post(messages::messages).route_layer(json()))
        .route(
            "/v1/messages/count_tokens",
            post(tokenize::count_tokens).route_layer(json()),
        )
        .route("/v1/responses", post(responses::create).route_layer(json()))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route("/tokenize", post(tokenize::tokenize).route_layer(json()))
        .route(
            "/detokenize",
            post(tokenize::detokenize).route_layer(json()),
        )
        .route("/v1/models", get(models::list))
        .route(
            "/v1/models/{*id}",
            get(models::get).post(models::action).route_layer(json()),
        )
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(crate::openapi::document()) }),
        )
        .fallback(health::not_found)
        .with_state(state)
}
