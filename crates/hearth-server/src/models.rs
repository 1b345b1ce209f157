//! The models this server may serve, and the worker (if any) running each.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hearth_api::ApiError;

use crate::config::{ModelSpec, WorkerSettings};
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
}

pub struct ModelManager {
    entries: Vec<Arc<ModelEntry>>,
    by_id: HashMap<String, usize>,
    settings: WorkerSettings,
    runtime_dir: PathBuf,
}

impl ModelManager {
    pub fn new(specs: Vec<ModelSpec>, settings: WorkerSettings, runtime_dir: PathBuf) -> Self {
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
        if slot.take().is_some() {
            tracing::warn!(model = %entry.spec.id, "restarting a worker that died");
        }
        self.set_state(entry, ModelState::Loading);
        match spawn_worker(&entry.spec, &self.settings, &self.runtime_dir).await {
            Ok(worker) => {
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
