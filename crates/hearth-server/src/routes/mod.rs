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

use axum::routing::{get, post};
use axum::Router;

pub use messages::shape_errors as shape_anthropic_errors;

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
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .fallback(health::not_found)
        .with_state(state)
}
