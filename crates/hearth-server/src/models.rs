//! The models this server may serve and the worker (if any) running each: shared first
//! loads, a backoff after failed loads, the memory budget with least-recently-used eviction
//! of idle models, explicit load and unload, and models found in the Hugging Face cache.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use hearth_api::ApiError;
use hearth_ipc::PromptSpec;

use crate::admission::{Admission, QueueLimits};
use crate::config::{LifecycleConfig, ModelSpec, WorkerSettings};
use crate::footprint::{estimate, Footprint};
use crate::hub;
use crate::worker::{spawn_worker, SpawnContext, Worker};

/// The id every server also answers to: its first model.
pub const DEFAULT_ALIAS: &str = "default";

/// How long an unloading worker gets to exit by itself before it is killed.
const UNLOAD_GRACE: Duration = Duration::from_secs(3);
/// Vocabulary-only workers kept for counting the tokens of models that are not loaded (the
/// seed kept an LRU of five tokenizers).
const VOCAB_WORKERS: usize = 5;

/// Longest pause between load attempts of a model that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

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

/// What `/v1/models` and `/health/ready` say about one model.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub id: String,
    pub state: ModelState,
    /// Why the worker last went away, when it was not asked to.
    pub last_restart: Option<String>,
    pub footprint: Footprint,
    /// It has a vision projector.
    pub vision: bool,
    /// Where its layers went, while loaded.
    pub placement: Option<hearth_api::models::ModelPlacement>,
}

struct Status {
    state: ModelState,
    /// Failed loads in a row, and when the next may be tried.
    failures: u32,
    retry_at: Option<Instant>,
    /// Counted against the memory budget while a worker is up.
    loaded: bool,
    footprint: Footprint,
    last_restart: Option<String>,
}

pub struct ModelEntry {
    pub spec: ModelSpec,
    /// This model's worker settings: the server's with its own slots and context applied.
    settings: WorkerSettings,
    idle_timeout: Duration,
    /// Held while a worker starts or stops, so concurrent first requests share one load.
    worker: tokio::sync::Mutex<Option<Arc<Worker>>>,
    status: Mutex<Status>,
    /// Requests wait here for one of the worker's slots.
    admission: Arc<Admission>,
}

impl ModelEntry {
    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: ModelState) {
        self.status().state = state;
    }

    /// The running worker, if any, without waiting for a load in progress.
    fn current_worker(&self) -> Option<Arc<Worker>> {
        let slot = self.worker.try_lock().ok()?;
        slot.as_ref().filter(|w| w.is_alive()).cloned()
    }
}

/// What a model id names.
enum Lookup {
    Known(Arc<ModelEntry>),
    /// A Hugging Face model in the local cache that has no entry yet.
    Cached(std::path::PathBuf),
}

/// The host-RAM part of a model's estimated `footprint` once `vram` bytes of it went to GPUs:
/// never below 1/16 of the estimate (the process, the host side of the context).
fn host_share(footprint: u64, vram: u64) -> u64 {
    footprint.saturating_sub(vram).max(footprint / 16)
}

/// Which idle GPU holder to unload for a model needing `need` bytes where `free` are free:
/// none if it fits, or if unloading every idle holder would still not make it fit; else the
/// one idle longest. `holders`: (idle since, bytes it frees; 0 for a busy one, which is never
/// chosen).
fn gpu_victim(need: u64, free: u64, holders: &[(Instant, u64)]) -> Option<usize> {
    let reachable = free.saturating_add(holders.iter().map(|h| h.1).sum());
    if need <= free || need > reachable {
        return None;
    }
    (0..holders.len())
        .filter(|&i| holders[i].1 > 0)
        .min_by_key(|&i| holders[i].0)
}

/// The error for a model whose last load failed, while it waits before the next try.
fn backing_off(entry: &ModelEntry) -> Option<ApiError> {
    let status = entry.status();
    let (Some(retry_at), ModelState::Failed(cause)) = (status.retry_at, &status.state) else {
        return None;
    };
    let now = Instant::now();
    (now < retry_at).then(|| {
        let wait = (retry_at - now).as_secs_f64().ceil() as u64;
        ApiError::unavailable(format!(
            "model '{}' failed to load: {cause} (next try in {wait} s)",
            entry.spec.id
        ))
        .with_retry_after(wait)
    })
}

fn view_of(entry: &ModelEntry) -> ModelView {
    let status = entry.status();
    ModelView {
        id: entry.spec.id.clone(),
        state: status.state.clone(),
        last_restart: status.last_restart.clone(),
        footprint: status.footprint,
        vision: entry.spec.mmproj.is_some(),
        placement: entry
            .current_worker()
            .map(|w| hearth_api::models::ModelPlacement {
                gpu_layers: w.ready.gpu_layers,
                layers: w.ready.layers,
                vram_bytes: w.ready.vram_bytes,
            }),
    }
}

pub struct ModelManager {
    entries: RwLock<Vec<Arc<ModelEntry>>>,
    defaults: WorkerSettings,
    queue: QueueLimits,
    lifecycle: LifecycleConfig,
    spawn: SpawnContext,
    /// One load at a time: memory accounting stays exact and loads do not fight for cores.
    load_lock: tokio::sync::Mutex<()>,
    /// Vocabulary-only workers by model id, least recently used first.
    vocabularies: tokio::sync::Mutex<Vec<(String, Arc<Worker>)>>,
}

impl ModelManager {
    pub fn new(
        specs: Vec<ModelSpec>,
        defaults: WorkerSettings,
        queue: QueueLimits,
        lifecycle: LifecycleConfig,
        spawn: SpawnContext,
    ) -> Self {
        let manager = ModelManager {
            entries: RwLock::new(Vec::new()),
            defaults,
            queue,
            lifecycle,
            spawn,
            load_lock: tokio::sync::Mutex::new(()),
            vocabularies: tokio::sync::Mutex::new(Vec::new()),
        };
        for spec in specs {
            manager.add(spec);
        }
        manager
    }

    fn add(&self, spec: ModelSpec) {
        let entry = self.new_entry(spec);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    fn new_entry(&self, spec: ModelSpec) -> Arc<ModelEntry> {
        let mut settings = self.defaults.clone();
        settings.parallel = spec.parallel.unwrap_or(settings.parallel).max(1);
        settings.ctx_size = spec.ctx_size.unwrap_or(settings.ctx_size);
        let footprint = estimate(
            &spec.path,
            settings.ctx_size as u64 * settings.parallel as u64,
        );
        Arc::new(ModelEntry {
            idle_timeout: spec.idle_timeout.unwrap_or(self.lifecycle.idle_timeout),
            admission: Admission::new(settings.parallel, self.queue.clone()),
            settings,
            spec,
            worker: tokio::sync::Mutex::new(None),
            status: Mutex::new(Status {
                state: ModelState::Unloaded,
                failures: 0,
                retry_at: None,
                loaded: false,
                footprint,
                last_restart: None,
            }),
        })
    }

    fn entries(&self) -> Vec<Arc<ModelEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What `id` names: a model this server has an entry for (by id, `default`, or a
    /// Hugging Face id whose file is an entry's file, however the selector is spelled), or a
    /// Hugging Face id in the local cache that has no entry yet. Registers nothing.
    fn lookup(&self, id: &str) -> Result<Lookup, ApiError> {
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.iter().find(|e| e.spec.id == id) {
                return Ok(Lookup::Known(entry.clone()));
            }
            if id == DEFAULT_ALIAS {
                if let Some(first) = entries.first() {
                    return Ok(Lookup::Known(first.clone()));
                }
            }
        }
        let Ok(reference) = hub::HubRef::parse(id) else {
            return Err(ApiError::model_not_found(id));
        };
        let path = hub::find_cached(&hub::cache_dir(), &reference).map_err(|reason| {
            let mut error = ApiError::model_not_found(id);
            error.message = format!(
                "The model '{id}' is not served here: {reason}. Fetch it with `hearth pull {id}`."
            );
            error
        })?;
        Ok(match self.entry_for_file(&path) {
            Some(entry) => Lookup::Known(entry),
            None => Lookup::Cached(path),
        })
    }

    /// The entry serving this file. `org/name`, `org/name:Q4_K_M`, `org/name:q4_k_m` and
    /// `org/name:FILE.gguf` all find the same snapshot path in the cache, so they are one
    /// model, not one entry each.
    fn entry_for_file(&self, path: &std::path::Path) -> Option<Arc<ModelEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| e.spec.path == path)
            .cloned()
    }

    /// A model that has an entry (see `lookup`); never registers one.
    fn entry(&self, id: &str) -> Result<Arc<ModelEntry>, ApiError> {
        match self.lookup(id)? {
            Lookup::Known(entry) => Ok(entry),
            Lookup::Cached(_) => Err(ApiError::model_not_found(id)),
        }
    }

    /// The canonical id of the model a request names, giving a cached Hugging Face model an
    /// entry on its first use (requests never download, and never name a file). Only
    /// requests that will use the model call this: lookups (`view`) register nothing.
    pub fn resolve(&self, id: &str) -> Result<String, ApiError> {
        let path = match self.lookup(id)? {
            Lookup::Known(entry) => return Ok(entry.spec.id.clone()),
            Lookup::Cached(path) => path,
        };
        // Two requests may race to add it: the second finds the first's entry.
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.iter().find(|e| e.spec.path == path) {
            return Ok(entry.spec.id.clone());
        }
        tracing::info!(model = id, path = %path.display(), "serving a model from the Hugging Face cache");
        let mmproj = hub::HubRef::parse(id)
            .ok()
            .and_then(|r| hub::find_cached_projector(&hub::cache_dir(), &r));
        let entry = self.new_entry(ModelSpec {
            id: id.to_owned(),
            path,
            mmproj,
            ..ModelSpec::default()
        });
        entries.push(entry);
        Ok(id.to_owned())
    }

    /// What `GET /v1/models/{id}` shows: the model's entry, or a cached Hugging Face model
    /// without one (unloaded) — without giving it one.
    pub fn view(&self, id: &str) -> Result<ModelView, ApiError> {
        match self.lookup(id)? {
            Lookup::Known(entry) => Ok(view_of(&entry)),
            Lookup::Cached(_) => Ok(ModelView {
                id: id.to_owned(),
                state: ModelState::Unloaded,
                last_restart: None,
                footprint: Footprint::default(),
                vision: false,
                placement: None,
            }),
        }
    }

    /// The queue in front of a model's worker.
    pub fn admission(&self, id: &str) -> Result<Arc<Admission>, ApiError> {
        Ok(self.entry(id)?.admission.clone())
    }

    pub fn list(&self) -> Vec<ModelView> {
        self.entries().iter().map(|e| view_of(e)).collect()
    }

    /// A running worker for the model, started if needed.
    pub async fn worker(&self, id: &str) -> Result<Arc<Worker>, ApiError> {
        let entry = self.entry(id)?;
        // Counted from now, not from when this request gets the model's lock: requests
        // queued behind one that waits for room give up with it, not one after another.
        let room_deadline = Instant::now() + self.lifecycle.memory_wait;
        let mut slot = entry.worker.lock().await;
        if let Some(worker) = slot.as_ref().filter(|w| w.is_alive()) {
            return Ok(worker.clone());
        }
        if slot.take().is_some() {
            self.note_gone(&entry);
        }
        if let Some(error) = backing_off(&entry) {
            return Err(error);
        }
        let _loading = self.load_lock.lock().await;
        self.make_room(&entry, room_deadline).await?;
        entry.set_state(ModelState::Loading);
        let started = Instant::now();
        match spawn_worker(&entry.spec, &entry.settings, &self.spawn).await {
            Ok(worker) => {
                self.spawn
                    .metrics
                    .model_load_seconds
                    .with_label_values(&[&entry.spec.id])
                    .observe(started.elapsed().as_secs_f64());
                let mut status = entry.status();
                status.state = ModelState::Loaded;
                status.failures = 0;
                status.retry_at = None;
                status.loaded = true;
                // What went to a GPU is not host RAM: the estimate counted the whole model
                // (the pings raise it again to the worker's resident memory if that is more).
                status.footprint.ram_bytes =
                    host_share(status.footprint.ram_bytes, worker.ready.vram_bytes);
                drop(status);
                *slot = Some(worker.clone());
                Ok(worker)
            }
            Err(e) => {
                let mut status = entry.status();
                status.failures += 1;
                let backoff =
                    Duration::from_secs(1 << (status.failures - 1).min(6)).min(MAX_BACKOFF);
                status.retry_at = Some(Instant::now() + backoff);
                status.state = ModelState::Failed(e.message.clone());
                tracing::error!(model = %entry.spec.id, failures = status.failures, ?backoff, error = %e.message, "load failed");
                Err(e)
            }
        }
    }

    /// A worker that was up has gone without being asked to.
    fn note_gone(&self, entry: &ModelEntry) {
        let mut status = entry.status();
        if status.loaded {
            status.loaded = false;
            status.state = ModelState::Unloaded;
            status.last_restart = Some(format!(
                "worker exited unexpectedly at {}",
                hearth_api::unix_now()
            ));
        }
    }

    /// Unload least-recently-used idle models until `entry` fits the memory budget and the
    /// model count. Waits (bounded) while the models in the way are busy.
    async fn make_room(&self, entry: &Arc<ModelEntry>, deadline: Instant) -> Result<(), ApiError> {
        let need = entry.status().footprint.ram_bytes;
        let budget = self.lifecycle.memory_budget;
        if need > budget {
            return Err(ApiError::new(
                503,
                "server_error",
                Some("memory_budget_exceeded"),
                format!(
                    "model '{}' needs about {} MiB, more than the whole memory budget of {} MiB \
                     (--memory-budget)",
                    entry.spec.id,
                    need >> 20,
                    budget >> 20
                ),
            ));
        }
        loop {
            let others: Vec<Arc<ModelEntry>> = self
                .entries()
                .into_iter()
                .filter(|e| !Arc::ptr_eq(e, entry) && e.status().loaded)
                .collect();
            let used: u64 = others.iter().map(|e| e.status().footprint.ram_bytes).sum();
            if used + need <= budget && others.len() < self.lifecycle.max_loaded_models {
                self.make_gpu_room(entry).await;
                return Ok(());
            }
            // The idle model used longest ago goes first.
            let mut idle: Vec<(Instant, &Arc<ModelEntry>)> = others
                .iter()
                .filter_map(|e| Some((e.admission.idle_since()?, e)))
                .collect();
            idle.sort_by_key(|(since, _)| *since);
            let mut evicted = false;
            for (_, victim) in idle {
                if self.unload_entry(victim, "evicted to make room").await? {
                    evicted = true;
                    break;
                }
            }
            if evicted {
                continue;
            }
            if Instant::now() >= deadline {
                let busy: Vec<&str> = others.iter().map(|e| e.spec.id.as_str()).collect();
                return Err(ApiError::unavailable(format!(
                    "cannot load model '{}': the models in memory ({}) are busy and there is \
                     no room for another (memory budget {} MiB, at most {} loaded); retry later",
                    entry.spec.id,
                    busy.join(", "),
                    budget >> 20,
                    self.lifecycle.max_loaded_models
                ))
                .with_retry_after(5));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Before a model that offloads to GPUs loads, unload idle models holding GPU memory,
    /// least recently used first, until the GPUs' free memory covers its estimate (weights +
    /// KV, as if every layer went there). The load then fits as many layers as there is room
    /// for (`--gpu-layers auto`), so a busy GPU means a slower model, never a refusal or an
    /// out-of-memory error mid-request. Free memory is the main GPU's with `--split-mode
    /// none`, else summed over the GPUs (a split model takes from each). Nothing is unloaded
    /// unless unloading makes the model fit: a model larger than the GPUs, or one that other
    /// processes leave no room for, loads beside the others with the layers that fit.
    async fn make_gpu_room(&self, entry: &Arc<ModelEntry>) {
        if entry.settings.gpu_layers.trim() == "0" {
            return;
        }
        let need = entry.status().footprint.ram_bytes;
        loop {
            let holders: Vec<(Arc<ModelEntry>, Arc<Worker>)> = self
                .entries()
                .into_iter()
                .filter(|e| !Arc::ptr_eq(e, entry))
                .filter_map(|e| {
                    let worker = e.current_worker()?;
                    (worker.ready.vram_bytes > 0).then_some((e, worker))
                })
                .collect();
            let Some((_, asked)) = holders.first() else {
                return;
            };
            let Some(status) = asked.ping().await else {
                return;
            };
            let single = entry.settings.split_mode == "none";
            let main = entry.settings.main_gpu as usize;
            let free = status
                .gpus
                .iter()
                .enumerate()
                .filter(|(i, _)| !single || *i == main)
                .map(|(_, g)| g.free_bytes)
                .sum();
            let idle: Vec<(Instant, u64)> = holders
                .iter()
                .map(|(e, w)| {
                    // A busy model is never a candidate: it sorts last and is skipped.
                    let since = e.admission.idle_since();
                    (
                        since.unwrap_or_else(Instant::now),
                        since.map_or(0, |_| w.ready.vram_bytes),
                    )
                })
                .collect();
            let Some(victim) = gpu_victim(need, free, &idle) else {
                return;
            };
            let (victim, _) = &holders[victim];
            match self
                .unload_entry(victim, "evicted to make room on the GPU")
                .await
            {
                Ok(true) => continue,
                _ => return,
            }
        }
    }

    /// Load a model now (`POST /v1/models/{id}/load`).
    pub async fn load(&self, id: &str) -> Result<(), ApiError> {
        self.worker(id).await.map(|_| ())
    }

    /// Unload a model now (`POST /v1/models/{id}/unload`); 409 while it has requests.
    /// Ok(false) when it was not loaded (a cached model without an entry never was).
    pub async fn unload(&self, id: &str) -> Result<bool, ApiError> {
        let entry = match self.lookup(id)? {
            Lookup::Known(entry) => entry,
            Lookup::Cached(_) => return Ok(false),
        };
        if entry.admission.idle_since().is_none() {
            return Err(ApiError::new(
                409,
                "invalid_request_error",
                Some("model_busy"),
                format!(
                    "model '{}' has requests in flight; unload it when they finish",
                    entry.spec.id
                ),
            ));
        }
        let mut slot = entry.worker.lock().await;
        Ok(self
            .stop_worker(&entry, &mut slot, "unloaded on request")
            .await)
    }

    /// Unload an idle model if nobody is using or loading it. Ok(true) if it was unloaded.
    async fn unload_entry(&self, entry: &Arc<ModelEntry>, why: &str) -> Result<bool, ApiError> {
        let Ok(mut slot) = entry.worker.try_lock() else {
            return Ok(false);
        };
        if entry.admission.idle_since().is_none() {
            return Ok(false);
        }
        Ok(self.stop_worker(entry, &mut slot, why).await)
    }

    async fn stop_worker(
        &self,
        entry: &ModelEntry,
        slot: &mut Option<Arc<Worker>>,
        why: &str,
    ) -> bool {
        let Some(worker) = slot.take() else {
            return false;
        };
        tracing::info!(model = %entry.spec.id, pid = worker.pid, why, "unloading");
        worker.stop(UNLOAD_GRACE).await;
        let mut status = entry.status();
        status.loaded = false;
        status.state = ModelState::Unloaded;
        true
    }

    /// Unload models idle past their timeout. Called periodically.
    pub async fn unload_idle(&self) {
        for entry in self.entries() {
            if entry.idle_timeout.is_zero() || !entry.status().loaded {
                continue;
            }
            let idle_for = entry.admission.idle_since().map(|since| since.elapsed());
            if idle_for.is_some_and(|d| d >= entry.idle_timeout) {
                let _ = self.unload_entry(&entry, "idle timeout").await;
            }
        }
    }

    /// Ping every worker; kill those silent for `hang_timeout`, or stuck on running requests
    /// for `stall_timeout`. Called periodically.
    pub async fn check_workers(&self) {
        let hang = self.lifecycle.hang_timeout;
        let workers = self.running_workers().await;
        let pongs = futures_util::future::join_all(workers.iter().map(|w| w.ping())).await;
        for (worker, pong) in workers.iter().zip(pongs) {
            if let Some(status) = pong {
                worker.record_pong(status);
                if let Some(bytes) = crate::registry::resident_bytes(worker.pid) {
                    self.note_measured(&worker.model_id, bytes);
                }
            }
            let liveness = worker.liveness();
            if liveness.last_pong.elapsed() > hang {
                self.note_killed(worker, "unresponsive");
            } else if liveness.progress_at.elapsed() > self.lifecycle.stall_timeout {
                self.note_killed(worker, "stalled");
            }
        }
    }

    fn note_killed(&self, worker: &Worker, reason: &'static str) {
        worker.kill_for(reason);
        if let Ok(entry) = self.entry(&worker.model_id) {
            let mut status = entry.status();
            status.loaded = false;
            status.state = ModelState::Unloaded;
            status.last_restart = Some(format!("killed ({reason}) at {}", hearth_api::unix_now()));
        }
    }

    /// A loaded model's real memory use replaces the estimate when larger.
    fn note_measured(&self, id: &str, bytes: u64) {
        if let Ok(entry) = self.entry(id) {
            let mut status = entry.status();
            status.footprint.ram_bytes = status.footprint.ram_bytes.max(bytes);
        }
    }

    /// Workers that are running now. A model that is loading is skipped rather than waited
    /// for: health checks must answer while a model loads.
    pub async fn running_workers(&self) -> Vec<Arc<Worker>> {
        let mut out = Vec::new();
        for entry in self.entries() {
            let Ok(slot) = entry.worker.try_lock() else {
                continue;
            };
            match slot.as_ref() {
                Some(w) if w.is_alive() => out.push(w.clone()),
                Some(_) => self.note_gone(&entry),
                None => {}
            }
        }
        out
    }

    /// A worker that counts a model's tokens with its own template and tokenizer without
    /// loading its weights: the model's worker if it is up, else a vocabulary-only worker
    /// (milliseconds to start, megabytes of memory; the `VOCAB_WORKERS` most recently used
    /// are kept).
    pub async fn counter(&self, id: &str) -> Result<Arc<Worker>, ApiError> {
        let entry = self.entry(id)?;
        if let Some(worker) = entry.current_worker() {
            return Ok(worker);
        }
        // A model that just failed to load is not tried again sooner for counting.
        if let Some(error) = backing_off(&entry) {
            return Err(error);
        }
        let mut vocabularies = self.vocabularies.lock().await;
        vocabularies.retain(|(_, worker)| worker.is_alive());
        if let Some(at) = vocabularies.iter().position(|(m, _)| *m == entry.spec.id) {
            let kept = vocabularies.remove(at);
            let worker = kept.1.clone();
            vocabularies.push(kept);
            return Ok(worker);
        }
        let settings = WorkerSettings {
            vocab_only: true,
            ..entry.settings.clone()
        };
        let worker = spawn_worker(&entry.spec, &settings, &self.spawn).await?;
        vocabularies.push((entry.spec.id.clone(), worker.clone()));
        while vocabularies.len() > VOCAB_WORKERS {
            let (_, oldest) = vocabularies.remove(0);
            tokio::spawn(async move { oldest.stop(UNLOAD_GRACE).await });
        }
        Ok(worker)
    }

    /// A prompt's tokens (and their bytes, with `with_pieces`) by `counter`'s worker. A
    /// vocabulary-only worker that does not answer in time is killed (the supervisor watches
    /// only model workers), so the next count starts a fresh one.
    pub async fn count(
        &self,
        id: &str,
        prompt: PromptSpec,
        add_special: bool,
        with_pieces: bool,
    ) -> Result<(Vec<u32>, Vec<Vec<u8>>), ApiError> {
        let worker = self.counter(id).await?;
        let counted = worker.tokenize(prompt, add_special, with_pieces).await;
        if matches!(&counted, Err(e) if e.status == 504) {
            let mut vocabularies = self.vocabularies.lock().await;
            if let Some(at) = vocabularies
                .iter()
                .position(|(_, w)| Arc::ptr_eq(w, &worker))
            {
                vocabularies.remove(at);
                worker.kill_for("the vocabulary worker stopped answering");
            }
        }
        counted
    }

    /// The models with a vocabulary-only worker up, least recently used first (empty while
    /// one is starting: health checks never wait for that).
    pub fn counting(&self) -> Vec<String> {
        let Ok(vocabularies) = self.vocabularies.try_lock() else {
            return Vec::new();
        };
        vocabularies
            .iter()
            .filter(|(_, w)| w.is_alive())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether a model can embed: its GGUF names a pooling, or `--pooling` gives one. Read
    /// from the model's worker or a vocabulary-only one, so a model that cannot embed is
    /// never loaded (and another evicted) only to say so.
    pub async fn can_embed(&self, id: &str) -> Result<bool, ApiError> {
        let pooling_set = self.entry(id)?.settings.pooling != "model";
        Ok(pooling_set || self.counter(id).await?.ready.pooling.is_some())
    }

    /// Whether a model generates text (an encoder only embeds), read without loading it.
    pub async fn can_generate(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.counter(id).await?.ready.causal)
    }

    /// Whether a model reads images (it has a vision projector).
    pub fn has_vision(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.entry(id)?.spec.mmproj.is_some())
    }

    /// Context tokens per sequence of a model's worker.
    pub fn context_per_slot(&self, id: &str) -> Result<usize, ApiError> {
        Ok(self.entry(id)?.settings.ctx_size as usize)
    }

    /// The worker of a model if one is up (no load started).
    pub fn loaded_worker(&self, id: &str) -> Option<Arc<Worker>> {
        self.entry(id).ok()?.current_worker()
    }

    /// Stop every worker (server shutdown).
    pub async fn stop_all(&self) {
        let mut workers = self.running_workers().await;
        workers.extend(
            self.vocabularies
                .lock()
                .await
                .drain(..)
                .map(|(_, worker)| worker),
        );
        futures_util::future::join_all(workers.iter().map(|w| w.stop(Duration::from_millis(500))))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_went_to_a_gpu_is_not_counted_as_host_ram() {
        const GIB: u64 = 1 << 30;
        assert_eq!(
            host_share(10 * GIB, 0),
            10 * GIB,
            "a CPU model keeps its estimate"
        );
        assert_eq!(host_share(10 * GIB, 6 * GIB), 4 * GIB);
        assert_eq!(host_share(16 * GIB, 20 * GIB), GIB, "never below a 16th");
    }

    #[test]
    fn the_gpu_makes_room_from_its_longest_idle_holder_and_only_when_needed() {
        let now = Instant::now();
        let (old, recent) = (now - Duration::from_secs(60), now - Duration::from_secs(5));
        const GIB: u64 = 1 << 30;
        // Fits: nobody goes.
        assert_eq!(gpu_victim(4 * GIB, 5 * GIB, &[(old, 8 * GIB)]), None);
        // Does not fit: the longest idle goes first, whatever its size.
        let holders = [(recent, 8 * GIB), (old, 2 * GIB)];
        assert_eq!(gpu_victim(9 * GIB, GIB, &holders), Some(1));
        // A busy holder (nothing to free) is never chosen, however old.
        let holders = [(old, 0), (recent, 8 * GIB)];
        assert_eq!(gpu_victim(9 * GIB, GIB, &holders), Some(1));
        assert_eq!(gpu_victim(9 * GIB, GIB, &[(old, 0)]), None);
        assert_eq!(gpu_victim(9 * GIB, GIB, &[]), None);
        // Unloading every idle holder would not make room: nobody goes.
        let holders = [(old, 2 * GIB), (recent, 3 * GIB)];
        assert_eq!(gpu_victim(9 * GIB, GIB, &holders), None);
    }
}
