//! `GET /metrics`: Prometheus text format. Gauges that describe "now" (queue, KV cache,
//! worker memory) are read at scrape time; the rest are updated as requests run.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::admission::Priority;
use crate::models::ModelState;
use crate::registry::resident_bytes;
use crate::state::AppState;

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = &state.metrics;
    let mut loaded = 0;
    for view in state.models.list() {
        let model = view.id;
        if view.state == ModelState::Loaded {
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
    // The periodic pings' last answers: a scrape never waits on a worker. What describes a
    // worker goes with it (an unloaded model's memory series end rather than keep its last
    // value), and the GPUs are the ones running workers see now.
    let workers = state.models.running_workers().await;
    for view in state.models.list() {
        if workers.iter().any(|w| w.model_id == view.id) {
            continue;
        }
        for gauge in [
            &metrics.num_requests_paused,
            &metrics.prompt_cache_host_bytes,
            &metrics.prompt_cache_host_entries,
            &metrics.model_vram_bytes,
            &metrics.worker_memory_bytes,
        ] {
            let _ = gauge.remove_label_values(&[&view.id]);
        }
        let _ = metrics.kv_cache_usage.remove_label_values(&[&view.id]);
    }
    metrics.gpu_memory_used_bytes.reset();
    metrics.gpu_memory_total_bytes.reset();
    for worker in workers {
        let model = worker.model_id.as_str();
        if let Some(status) = worker.liveness().last_status {
            let usage = status.kv_used as f64 / status.kv_capacity.max(1) as f64;
            metrics
                .kv_cache_usage
                .with_label_values(&[model])
                .set(usage);
            for gpu in &status.gpus {
                let device = format!("{} {}", gpu.name, gpu.description);
                metrics
                    .gpu_memory_used_bytes
                    .with_label_values(&[&device])
                    .set(gpu.total_bytes.saturating_sub(gpu.free_bytes) as i64);
                metrics
                    .gpu_memory_total_bytes
                    .with_label_values(&[&device])
                    .set(gpu.total_bytes as i64);
            }
            for (gauge, value) in [
                (&metrics.num_requests_paused, status.paused),
                (&metrics.prompt_cache_host_bytes, status.host_cache_bytes),
                (
                    &metrics.prompt_cache_host_entries,
                    status.host_cache_entries,
                ),
            ] {
                gauge.with_label_values(&[model]).set(value as i64);
            }
        }
        metrics
            .model_vram_bytes
            .with_label_values(&[model])
            .set(worker.ready.vram_bytes as i64);
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
