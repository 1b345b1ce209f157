//! `/health` (the process answers) and `/health/ready` (every loaded worker answers a ping).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hearth_api::ApiError;
use serde_json::json;

use crate::error::HttpError;
use crate::models::ModelState;
use crate::state::AppState;

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Every model's state; every running worker is pinged now. 503 while any worker does not
/// answer (it is being killed and restarted); `degraded` when a model failed to load.
pub async fn ready(State(state): State<AppState>) -> Response {
    let workers = state.models.running_workers().await;
    let pings = futures_util::future::join_all(workers.iter().map(|w| w.ping())).await;
    let mut models = serde_json::Map::new();
    for view in state.models.list() {
        let mut entry = json!({
            "state": view.state.as_str(),
            "memory_estimate_bytes": view.footprint.ram_bytes,
        });
        if let ModelState::Failed(cause) = &view.state {
            entry["error"] = json!(cause);
        }
        if let Some(reason) = &view.last_restart {
            entry["last_restart"] = json!(reason);
        }
        if let Ok(admission) = state.models.admission(&view.id) {
            // Seconds since the model last had work (absent while it has some).
            if let Some(since) = admission.idle_since() {
                entry["idle_seconds"] = json!(since.elapsed().as_secs());
            }
            let queue = admission.snapshot();
            entry["queued"] = json!({
                "high": queue.waiting[0], "normal": queue.waiting[1], "low": queue.waiting[2],
            });
        }
        models.insert(view.id, entry);
    }
    let mut unresponsive = Vec::new();
    for (worker, pong) in workers.iter().zip(pings) {
        let Some(entry) = models.get_mut(&worker.model_id) else {
            continue;
        };
        entry["pid"] = json!(worker.pid);
        match pong {
            Some(status) => {
                entry["status"] = json!("ready");
                entry["running"] = json!(status.running);
                entry["waiting"] = json!(status.waiting);
                entry["slots"] = json!(status.slots);
                entry["context_per_slot"] = json!(worker.ready.context_per_slot);
                entry["placement"] = json!({
                    "gpu_layers": worker.ready.gpu_layers,
                    "layers": worker.ready.layers,
                    "vram_bytes": worker.ready.vram_bytes,
                });
                if !status.gpus.is_empty() {
                    entry["gpus"] = json!(status.gpus);
                }
                entry["kv_used"] = json!(status.kv_used);
                entry["kv_capacity"] = json!(status.kv_capacity);
                entry["grammars_compiled"] = json!(status.grammars_compiled);
                entry["grammar_cache_hits"] = json!(status.grammar_cache_hits);
                entry["paused"] = json!(status.paused);
                entry["preemptions"] = json!(status.preemptions);
                entry["tokens_chosen_on_device"] = json!(status.device_choices);
                entry["prompt_cache"] = json!({
                    "slot_tokens": status.slot_tokens,
                    "host_bytes": status.host_cache_bytes,
                    "host_entries": status.host_cache_entries,
                    "slot_moves": status.slot_moves,
                });
            }
            None => {
                unresponsive.push(worker.model_id.clone());
                entry["status"] = json!("unresponsive");
            }
        }
    }
    let failed = models.values().any(|m| m["state"] == "failed");
    let (status, word) = if !unresponsive.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if failed {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ready")
    };
    let body = json!({
        "status": word,
        "unresponsive": unresponsive,
        "models": models,
        // Models whose tokens a vocabulary-only worker counts (least recently used first).
        "counting": state.models.counting(),
    });
    (status, Json(body)).into_response()
}

pub async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> HttpError {
    HttpError(ApiError::not_found(format!(
        "Invalid URL ({method} {})",
        uri.path()
    )))
}
