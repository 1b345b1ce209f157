//! What the orchestrator was asked to serve, and how.

use std::path::PathBuf;
use std::time::Duration;

use crate::admission::QueueLimits;

/// A model the server may load: its public id and its GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub id: String,
    pub path: PathBuf,
}

impl ModelSpec {
    /// `NAME=PATH`, or `PATH` served under its file stem.
    pub fn parse(text: &str) -> Result<ModelSpec, String> {
        let (id, path) = match text.split_once('=') {
            Some((id, path)) => (id.to_owned(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(text);
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .ok_or_else(|| format!("cannot name a model after {text:?}"))?
                    .to_owned();
                (stem, path)
            }
        };
        validate_id(&id)?;
        Ok(ModelSpec { id, path })
    }
}

/// Model ids travel in URLs, process names and file names: keep them plain.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid model id {id:?}: use letters, digits, '-', '_' and '.' (at most 128)"
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
    pub gpu_layers: u32,
    pub grammar_cache_size: usize,
    pub kv_unified: bool,
    pub load_timeout: Duration,
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
}

/// Who may call the API, and how often.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// When not empty, every endpoint but `/health*` needs `Authorization: Bearer KEY`.
    pub api_keys: Vec<String>,
    /// Origins allowed by CORS (`*` for any); none by default.
    pub cors_origins: Vec<String>,
    pub rate_limit: Option<RateLimit>,
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
    fn model_specs_parse_with_and_without_names() {
        let spec = ModelSpec::parse("models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
        assert_eq!(spec.id, "SmolLM2-135M-Instruct.Q4_1");
        let spec = ModelSpec::parse("smol=/x/y.gguf").unwrap();
        assert_eq!(
            (spec.id.as_str(), spec.path.to_str()),
            ("smol", Some("/x/y.gguf"))
        );
        assert!(ModelSpec::parse("../x=/y.gguf").is_err());
        assert!(ModelSpec::parse("a b=/y.gguf").is_err());
    }
}
