//! Per-request latency and token figures, taken from the events as they pass: time to first
//! token, time between tokens, end-to-end latency, token counts and finish reasons.

use std::sync::Arc;
use std::time::Instant;

use prometheus::Histogram;

use crate::access::AccessRecord;
use crate::metrics::Metrics;
use crate::worker::WorkerEvent;

pub struct RequestObserver {
    metrics: Arc<Metrics>,
    model: String,
    record: Arc<AccessRecord>,
    /// Looked up once: the per-token path should not hash label values on every delta.
    inter_token_latency: Histogram,
    first_token: Option<Instant>,
    /// When each choice last produced tokens.
    last_token: Vec<Option<Instant>>,
    /// Each choice's prompt length, as the worker accepted it.
    accepted_prompt: Vec<usize>,
    done: bool,
}

impl RequestObserver {
    pub fn new(
        metrics: Arc<Metrics>,
        model: &str,
        record: Arc<AccessRecord>,
        choices: usize,
    ) -> Self {
        RequestObserver {
            inter_token_latency: metrics.inter_token_latency.with_label_values(&[model]),
            metrics,
            model: model.to_owned(),
            record,
            first_token: None,
            last_token: vec![None; choices],
            accepted_prompt: vec![0; choices],
            done: false,
        }
    }

    pub fn prompt_tokens(&self, tokens: usize) {
        self.metrics
            .prompt_tokens
            .with_label_values(&[&self.model])
            .inc_by(tokens as u64);
        self.record.fields().prompt_tokens = tokens;
    }

    /// Each choice's prompt length, as the worker accepted it (for the prefix-cache counts).
    pub fn accepted(&mut self, per_choice: &[usize]) {
        self.accepted_prompt = per_choice.to_vec();
    }

    pub fn event(&mut self, index: usize, event: &WorkerEvent) {
        let now = Instant::now();
        match event {
            WorkerEvent::Delta { token_count, .. } if *token_count > 0 => {
                if self.first_token.is_none() {
                    self.first_token = Some(now);
                    self.metrics
                        .time_to_first_token
                        .with_label_values(&[&self.model])
                        .observe((now - self.record.arrived).as_secs_f64());
                }
                if let Some(Some(last)) = self.last_token.get(index) {
                    // A delta may carry several tokens (held back by a stop string).
                    let gap = (now - *last).as_secs_f64() / *token_count as f64;
                    for _ in 0..*token_count {
                        self.inter_token_latency.observe(gap);
                    }
                }
                if let Some(last) = self.last_token.get_mut(index) {
                    *last = Some(now);
                }
            }
            WorkerEvent::Done {
                finish_reason,
                completion_tokens,
                cached_tokens,
                ..
            } => {
                let queried = self.accepted_prompt.get(index).copied().unwrap_or(0);
                self.metrics
                    .prefix_cache_queries
                    .with_label_values(&[&self.model])
                    .inc_by(queried as u64);
                self.metrics
                    .prefix_cache_hits
                    .with_label_values(&[&self.model])
                    .inc_by(*cached_tokens as u64);
                self.metrics
                    .request_success
                    .with_label_values(&[&self.model, finish_reason])
                    .inc();
                self.metrics
                    .generation_tokens
                    .with_label_values(&[&self.model])
                    .inc_by(*completion_tokens as u64);
                self.record.fields().completion_tokens += completion_tokens;
            }
            WorkerEvent::Failed(error) => {
                self.record.fields().error = Some(error.message.clone());
            }
            _ => {}
        }
    }

    /// Every choice has finished.
    pub fn finished(&mut self) {
        if !self.done {
            self.done = true;
            self.metrics
                .e2e_request_latency
                .with_label_values(&[&self.model])
                .observe(self.record.arrived.elapsed().as_secs_f64());
        }
    }
}
