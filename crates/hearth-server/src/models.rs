//! The models this server may serve, and the worker (if any) running each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hearth_api::ApiError;

use crate::admission::{Admission, QueueLimits};
use crate::config::{ModelSpec, WorkerSettings};
use crate::metrics::Metrics;
use crate::worker::{spawn_worker, Worker};

/// The id every server also answers to: its first model.
pub const DEFAULT_ALIAS: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    Unloaded,
    Loading,
    Loaded,
    Failed(String),
}

impl ModelState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ModelState::Unloaded => "unloaded",
            ModelState::Loading => "loading",
            ModelState::Loaded => "loaded",
            ModelState::Failed(_) => "failed",
        }
    }
}

struct ModelEntry {
    spec: ModelSpec,
    /// Held while a worker starts, so concurrent first requests share one load.
    worker: tokio::sync::Mutex<Option<Arc<Worker>>>,
    state: Mutex<ModelState>,
    /// Requests wait here for one of the worker's slots.
    admission: Arc<Admission>,
}

pub struct ModelManager {
    entries: Vec<Arc<ModelEntry>>,
    by_id: HashMap<String, usize>,
    settings: WorkerSettings,
    runtime_dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl ModelManager {
    pub fn new(
        specs: Vec<ModelSpec>,
        settings: WorkerSettings,
        queue: QueueLimits,
        runtime_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut by_id = HashMap::new();
        let entries: Vec<Arc<ModelEntry>> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                by_id.insert(spec.id.clone(), i);
                Arc::new(ModelEntry {
                    spec,
                    worker: tokio::sync::Mutex::new(None),
                    state: Mutex::new(ModelState::Unloaded),
                    admission: Admission::new(settings.parallel, queue.clone()),
                })
            })
            .collect();
        if !entries.is_empty() {
            by_id.entry(DEFAULT_ALIAS.to_owned()).or_insert(0);
        }
        ModelManager {
            entries,
            by_id,
            settings,
            runtime_dir,
            metrics,
        }
    }

    fn entry(&self, id: &str) -> Result<&Arc<ModelEntry>, ApiError> {
        self.by_id
            .get(id)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| ApiError::model_not_found(id))
    }

    /// The canonical id of a model (resolving `default`).
    pub fn resolve(&self, id: &str) -> Result<String, ApiError> {
        Ok(self.entry(id)?.spec.id.clone())
    }

    /// The queue in front of a model's worker.
    pub fn admission(&self, id: &str) -> Result<Arc<Admission>, ApiError> {
        Ok(self.entry(id)?.admission.clone())
    }

    /// (id, state) of every configured model.
    pub fn list(&self) -> Vec<(String, ModelState)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.spec.id.clone(),
                    e.state.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect()
    }

    /// A running worker for the model, started if needed.
    pub async fn worker(&self, id: &str) -> Result<Arc<Worker>, ApiError> {
        let entry = self.entry(id)?;
        let mut slot = entry.worker.lock().await;
        if let Some(worker) = slot.as_ref().filter(|w| w.is_alive()) {
            return Ok(worker.clone());
        }
        if let Some(dead) = slot.take() {
            let reason = if dead.was_hung() { "hung" } else { "died" };
            tracing::warn!(model = %entry.spec.id, reason, "restarting a worker");
            self.metrics
                .worker_restarts
                .with_label_values(&[&entry.spec.id, reason])
                .inc();
        }
        self.set_state(entry, ModelState::Loading);
        let started = std::time::Instant::now();
        match spawn_worker(&entry.spec, &self.settings, &self.runtime_dir).await {
            Ok(worker) => {
                self.metrics
                    .model_load_seconds
                    .with_label_values(&[&entry.spec.id])
                    .observe(started.elapsed().as_secs_f64());
                *slot = Some(worker.clone());
                self.set_state(entry, ModelState::Loaded);
                Ok(worker)
            }
            Err(e) => {
                self.set_state(entry, ModelState::Failed(e.message.clone()));
                Err(e)
            }
        }
    }

    fn set_state(&self, entry: &ModelEntry, state: ModelState) {
        *entry.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Workers that are running now. A model that is loading is skipped rather than waited
    /// for: health checks must answer while a model loads.
    pub async fn running_workers(&self) -> Vec<Arc<Worker>> {
        let mut out = Vec::new();
        for entry in &self.entries {
            let Ok(slot) = entry.worker.try_lock() else {
                continue;
            };
            if let Some(w) = slot.as_ref() {
                if w.is_alive() {
                    out.push(w.clone());
                } else {
                    self.set_state(entry, ModelState::Unloaded);
                }
            }
        }
        out
    }
}
