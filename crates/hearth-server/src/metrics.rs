//! Prometheus metrics, named after vLLM's (`vllm:` becomes `hearth:`) so dashboards port.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Why a request was turned away (`hearth:requests_rejected_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    QueueFull,
    QueueTimeout,
    RateLimited,
    Unauthorized,
    Invalid,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
            Rejection::RateLimited => "rate_limited",
            Rejection::Unauthorized => "unauthorized",
            Rejection::Invalid => "invalid",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub num_requests_running: IntGaugeVec,
    pub num_requests_waiting: IntGaugeVec,
    pub time_to_first_token: HistogramVec,
    pub inter_token_latency: HistogramVec,
    pub e2e_request_latency: HistogramVec,
    pub request_queue_time: HistogramVec,
    pub prompt_tokens: IntCounterVec,
    pub generation_tokens: IntCounterVec,
    pub prefix_cache_queries: IntCounterVec,
    pub prefix_cache_hits: IntCounterVec,
    pub request_success: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    pub kv_cache_usage: prometheus::GaugeVec,
    pub model_load_seconds: HistogramVec,
    pub models_loaded: IntGauge,
    pub worker_restarts: IntCounterVec,
    pub worker_memory_bytes: IntGaugeVec,
    pub num_requests_paused: IntGaugeVec,
    pub prompt_cache_host_bytes: IntGaugeVec,
    pub prompt_cache_host_entries: IntGaugeVec,
    pub gpu_memory_used_bytes: IntGaugeVec,
    pub gpu_memory_total_bytes: IntGaugeVec,
    pub model_vram_bytes: IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0,
];
const LOAD_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn add<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique and valid");
            c
        }
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            add(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            add(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            add(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("valid metric"),
            )
        };
        Metrics {
            num_requests_running: gauge(
                "hearth:num_requests_running",
                "Requests admitted to a worker and not yet finished.",
                &["model"],
            ),
            num_requests_waiting: gauge(
                "hearth:num_requests_waiting",
                "Requests waiting in the orchestrator's queue for a free slot.",
                &["model", "priority"],
            ),
            time_to_first_token: histogram(
                "hearth:time_to_first_token_seconds",
                "From request arrival to its first generated token.",
                &["model"],
                LATENCY_BUCKETS,
            ),
            inter_token_latency: histogram(
                "hearth:inter_token_latency_seconds",
                "Time between consecutive streamed token deltas of one sequence.",
                &["model"],
                LATENCY_BUCKETS,
            ),
            e2e_request_latency: histogram(
                "hearth:e2e_request_latency_seconds",
                "From request arrival to its last token.",
                &["model"],
                REQUEST_BUCKETS,
            ),
            request_queue_time: histogram(
                "hearth:request_queue_time_seconds",
                "Time a request waited in the queue before a worker slot was free.",
                &["model", "priority"],
                REQUEST_BUCKETS,
            ),
            prompt_tokens: counter(
                "hearth:prompt_tokens_total",
                "Prompt tokens processed.",
                &["model"],
            ),
            generation_tokens: counter(
                "hearth:generation_tokens_total",
                "Tokens generated.",
                &["model"],
            ),
            prefix_cache_queries: counter(
                "hearth:prefix_cache_queries_total",
                "Prompt tokens looked up in the prompt cache (every sequence's prompt).",
                &["model"],
            ),
            num_requests_paused: gauge(
                "hearth:num_requests_paused",
                "Sequences paused (KV in host memory) for high-priority requests.",
                &["model"],
            ),
            prompt_cache_host_bytes: gauge(
                "hearth:prompt_cache_host_bytes",
                "Bytes of prompt caches the worker keeps in host memory.",
                &["model"],
            ),
            prompt_cache_host_entries: gauge(
                "hearth:prompt_cache_host_entries",
                "Prompt caches the worker keeps in host memory.",
                &["model"],
            ),
            prefix_cache_hits: counter(
                "hearth:prefix_cache_hits_total",
                "Prompt tokens found in the prompt cache (not prefilled again).",
                &["model"],
            ),
            request_success: counter(
                "hearth:request_success_total",
                "Sequences finished, by finish reason (a request with n choices counts n).",
                &["model", "finish_reason"],
            ),
            requests_rejected: counter(
                "hearth:requests_rejected_total",
                "Requests turned away before generating, by reason.",
                &["model", "reason"],
            ),
            kv_cache_usage: add(
                &registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "hearth:kv_cache_usage_perc",
                        "Fraction of the worker's KV cache cells in use (1 = full).",
                    ),
                    &["model"],
                )
                .expect("valid metric"),
            ),
            model_load_seconds: histogram(
                "hearth:model_load_seconds",
                "Time to start a worker and load its model.",
                &["model"],
                LOAD_BUCKETS,
            ),
            models_loaded: add(
                &registry,
                IntGauge::new("hearth:models_loaded", "Models with a running worker.")
                    .expect("valid metric"),
            ),
            worker_restarts: counter(
                "hearth:worker_restarts_total",
                "Workers replaced after they died, hung or failed to start, by reason.",
                &["model", "reason"],
            ),
            worker_memory_bytes: gauge(
                "hearth:worker_memory_bytes",
                "Resident memory of each model's worker process.",
                &["model"],
            ),
            gpu_memory_used_bytes: gauge(
                "hearth:gpu_memory_used_bytes",
                "Memory in use on each GPU (by every process), as the workers last saw it.",
                &["device"],
            ),
            gpu_memory_total_bytes: gauge(
                "hearth:gpu_memory_total_bytes",
                "Memory of each GPU.",
                &["device"],
            ),
            model_vram_bytes: gauge(
                "hearth:model_vram_bytes",
                "GPU memory each model's worker took when it loaded (weights, KV cache, buffers).",
                &["model"],
            ),
            registry,
        }
    }

    pub fn reject(&self, model: &str, reason: Rejection) {
        self.requests_rejected
            .with_label_values(&[model, reason.as_str()])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding metrics into memory");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::core::Collector;

    use super::*;

    /// Every metric family the server registers, whether or not it has samples yet.
    fn exported(m: &Metrics) -> std::collections::BTreeSet<String> {
        let collectors: Vec<&dyn Collector> = vec![
            &m.num_requests_running,
            &m.num_requests_waiting,
            &m.time_to_first_token,
            &m.inter_token_latency,
            &m.e2e_request_latency,
            &m.request_queue_time,
            &m.prompt_tokens,
            &m.generation_tokens,
            &m.prefix_cache_queries,
            &m.prefix_cache_hits,
            &m.request_success,
            &m.requests_rejected,
            &m.kv_cache_usage,
            &m.model_load_seconds,
            &m.models_loaded,
            &m.worker_restarts,
            &m.worker_memory_bytes,
            &m.num_requests_paused,
            &m.prompt_cache_host_bytes,
            &m.prompt_cache_host_entries,
            &m.gpu_memory_used_bytes,
            &m.gpu_memory_total_bytes,
            &m.model_vram_bytes,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }

    #[test]
    fn the_grafana_dashboard_uses_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana/hearth.json")).unwrap();
        let m = Metrics::new();
        let exported = exported(&m);
        let mut used = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for part in expr.split("hearth:").skip(1) {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    // Histograms are queried through their series.
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    used.insert(format!("hearth:{family}"));
                }
            }
        }
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "the dashboard queries {unknown:?}");
        let unshown: Vec<_> = exported.difference(&used).collect();
        assert!(unshown.is_empty(), "no panel shows {unshown:?}");
    }
}
