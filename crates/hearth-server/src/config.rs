//! What the orchestrator was asked to serve, and how.

use std::path::PathBuf;
use std::time::Duration;

use crate::admission::QueueLimits;

/// A model the server may load: its public id, its GGUF file and its own settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelSpec {
    pub id: String,
    pub path: PathBuf,
    /// Sequence slots; the server-wide `--parallel` when not set.
    pub parallel: Option<usize>,
    /// Context tokens per sequence; the server-wide `--ctx-size` when not set.
    pub ctx_size: Option<u32>,
    /// Unload after this long without requests (zero: never); the server-wide default when
    /// not set.
    pub idle_timeout: Option<Duration>,
    /// The model's vision projector (mmproj GGUF): chat requests may then hold images.
    pub mmproj: Option<PathBuf>,
}

/// The projector beside a model file, laid out as a vision model's repository is: the
/// model the only other GGUF in its directory, beside exactly one `mmproj*.gguf`. (In a
/// directory of several models, which one a projector belongs to cannot be told, and a
/// wrong one would fail the model's load.)
pub fn mmproj_beside(model: &std::path::Path) -> Option<PathBuf> {
    let dir = model
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let (mut projectors, mut models) = (Vec::new(), 0);
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        if !name.ends_with(".gguf") || !path.is_file() {
            continue;
        }
        if name.starts_with("mmproj") {
            projectors.push(path);
        } else {
            models += 1;
        }
    }
    (models == 1 && projectors.len() == 1).then(|| projectors.remove(0))
}

/// Model ids travel in URLs, process names and file names: keep them plain. A Hugging Face
/// id (`org/name[:QUANT]`) is the one form with a slash.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.contains('/') {
        return crate::hub::HubRef::parse(id).map(|_| ());
    }
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model id {id:?}: use letters, digits, '-', '_', '.' and ':' (at most 128), \
             or a Hugging Face id org/name"
        ))
    }
}

/// How each worker runs its engine.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The binary re-executed as `hearth worker`.
    pub executable: PathBuf,
    pub parallel: usize,
    pub ctx_size: u32,
    pub threads: Option<usize>,
    /// `auto` or a number of layers (the worker's `--gpu-layers`).
    pub gpu_layers: String,
    pub main_gpu: u32,
    /// `none`, `layer` or `row`.
    pub split_mode: &'static str,
    /// `--tensor-split` as the worker takes it (`3,1`), if given.
    pub tensor_split: Option<String>,
    /// `--greedy-on-device` as the worker takes it (`on`, `off`).
    pub greedy_on_device: &'static str,
    /// KV cache element types (`f16`, `q8_0`, `q4_0`).
    pub cache_type_k: &'static str,
    pub cache_type_v: &'static str,
    /// Largest image side a worker decodes (the orchestrator checks headers against it too).
    pub max_image_side: u32,
    pub grammar_cache_size: usize,
    pub kv_unified: bool,
    /// Workers keep no prompt cache.
    pub no_prompt_cache: bool,
    /// MiB of host memory each worker may hold saved prompt caches in.
    pub prompt_cache_ram_mib: usize,
    /// High-priority requests may pause lower-priority sequences.
    pub preemption: bool,
    /// `--flash-attn` as the worker takes it (`auto`, `on`, `off`).
    pub flash_attn: &'static str,
    /// `--pooling` as the worker takes it (`model`, `mean`, `cls`, `last`).
    pub pooling: &'static str,
    /// Load the tokenizer only (a worker that counts tokens for requests to a model whose
    /// own worker is not up).
    pub vocab_only: bool,
    /// Workers take turns decoding (one shared lock) because their threads together would
    /// exceed the CPU's cores when several models are busy.
    pub cpu_gate: bool,
    pub load_timeout: Duration,
    /// Leave workers alive when the orchestrator dies (tests of the orphan sweep only).
    pub keep_orphans: bool,
}

/// Whether workers must take turns decoding: llama.cpp's spinning threads collapse when
/// the busy workers' threads together exceed the cores. `threads` is `--threads` (each
/// worker uses all `cores` without it); `--threads` is honoured either way.
pub fn cpu_gate_needed(threads: Option<usize>, max_loaded_models: usize, cores: usize) -> bool {
    let each = threads.unwrap_or(cores).max(1);
    max_loaded_models > 1 && each.saturating_mul(max_loaded_models) > cores
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub models: Vec<ModelSpec>,
    pub worker: WorkerSettings,
    /// A request running longer than this gets 504, and a worker that stops answering is killed.
    pub request_timeout: Duration,
    /// Start every model's worker at start-up instead of on first use.
    pub preload: bool,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Who may wait for a busy model, and for how long.
    pub queue: QueueLimits,
    pub access: AccessConfig,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    pub lifecycle: LifecycleConfig,
    pub http: HttpConfig,
    /// How chat requests' images are loaded (limits, sources) and handed to workers.
    pub media: crate::prompt_images::MediaConfig,
}

/// How long clients may take, and how many may be connected: what keeps slow or idle
/// connections from holding the server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A request's head must arrive within this, counted from when the connection opens or
    /// its previous response ends: so also how long an idle keep-alive connection stays.
    pub header_timeout: Duration,
    /// A request's whole body must arrive within this once the handler reads it (408 after).
    pub body_timeout: Duration,
    /// Most client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// When models load and unload, and how workers are watched.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Unload a model after this long without requests (zero: never), unless its spec says.
    pub idle_timeout: Duration,
    /// Most models loaded at once.
    pub max_loaded_models: usize,
    /// Memory all loaded models may use together (bytes).
    pub memory_budget: u64,
    /// How long a request waits for busy models to free memory before it gets 503.
    pub memory_wait: Duration,
    /// Where the worker registry lives.
    pub state_dir: PathBuf,
    /// How often every worker is pinged.
    pub ping_interval: Duration,
    /// A worker that answers no ping for this long is killed.
    pub hang_timeout: Duration,
    /// A worker whose engine takes no step for this long while it has requests is killed.
    /// One step can be a long prompt chunk on a big model, so this is the request timeout,
    /// not the (shorter) ping deadline.
    pub stall_timeout: Duration,
}

/// Who may call the API, and how often.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// When not empty, every endpoint but `/health*` needs `Authorization: Bearer KEY`.
    pub api_keys: Vec<String>,
    /// Origins allowed by CORS (`*` for any); none by default.
    pub cors_origins: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    /// Extra names the `Host` header may carry besides IP literals, `localhost`,
    /// `*.localhost`, the bind host and this machine's name (`*.example.com` for a domain's
    /// subdomains; `*` turns the check off).
    pub allowed_hosts: Vec<String>,
}

/// Requests per minute per API key (or per client address when there are no keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_minute: u32,
    /// Requests allowed at once before the per-minute pace applies.
    pub burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_plain_names_or_hub_ids() {
        for ok in [
            "smol",
            "SmolLM2-135M-Instruct.Q4_1",
            "org/name",
            "org/name:Q4_K_M",
            "x:y",
        ] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "a b",
            "../x",
            "/etc/passwd",
            "a/b/c",
            "org/..",
            "é",
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
