//! `/health` (the process answers) and `/health/ready` (every loaded worker answers a ping).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::ApiError;
use serde_json::json;

use crate::error::HttpError;
use crate::state::AppState;

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Response {
    let workers = state.models.running_workers().await;
    let pings = futures_util::future::join_all(workers.iter().map(|w| w.ping())).await;
    let mut models = serde_json::Map::new();
    let mut unresponsive = Vec::new();
    for (worker, pong) in workers.iter().zip(pings) {
        let entry = match pong {
            Some(status) => json!({
                "status": "ready",
                "pid": worker.pid,
                "running": status.running,
                "waiting": status.waiting,
                "slots": status.slots,
                "context_per_slot": worker.ready.context_per_slot,
                "kv_used": status.kv_used,
                "kv_capacity": status.kv_capacity,
                "grammars_compiled": status.grammars_compiled,
                "grammar_cache_hits": status.grammar_cache_hits,
            }),
            None => {
                unresponsive.push(worker.model_id.clone());
                json!({"status": "unresponsive", "pid": worker.pid})
            }
        };
        models.insert(worker.model_id.clone(), entry);
    }
    let status = if unresponsive.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if unresponsive.is_empty() { "ready" } else { "unavailable" },
        "unresponsive": unresponsive,
        "models": models,
    });
    (status, Json(body)).into_response()
}

pub async fn not_found() -> HttpError {
    HttpError(ApiError::not_found("no such endpoint"))
}
