//! `GET /metrics`: Prometheus text format. Gauges that describe "now" (queue, KV cache,
//! worker memory) are read at scrape time; the rest are updated as requests run.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::admission::Priority;
use crate::models::ModelState;
use crate::state::AppState;

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = &state.metrics;
    let mut loaded = 0;
    for (model, model_state) in state.models.list() {
        if model_state == ModelState::Loaded {
            loaded += 1;
        }
        if let Ok(admission) = state.models.admission(&model) {
            let snapshot = admission.snapshot();
            metrics
                .num_requests_running
                .with_label_values(&[&model])
                .set(snapshot.running as i64);
            for priority in Priority::ALL {
                metrics
                    .num_requests_waiting
                    .with_label_values(&[&model, priority.as_str()])
                    .set(snapshot.waiting[priority as usize] as i64);
            }
        }
    }
    metrics.models_loaded.set(loaded);
    let workers = state.models.running_workers().await;
    let pongs = futures_util::future::join_all(workers.iter().map(|w| w.ping())).await;
    for (worker, pong) in workers.iter().zip(pongs) {
        let model = worker.model_id.as_str();
        if let Some(status) = pong {
            let usage = status.kv_used as f64 / status.kv_capacity.max(1) as f64;
            metrics
                .kv_cache_usage
                .with_label_values(&[model])
                .set(usage);
        }
        if let Some(bytes) = resident_bytes(worker.pid) {
            metrics
                .worker_memory_bytes
                .with_label_values(&[model])
                .set(bytes as i64);
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
}

/// Resident set size of a process, from `/proc/<pid>/statm` (in pages).
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page_size)
}
