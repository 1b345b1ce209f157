//! `hearth serve`: the orchestrator.

use std::time::Duration;

use anyhow::{Context, Result};
use hearth_server::config::{cpu_gate_needed, validate_id};
use hearth_server::hub::{self, HubRef};
use hearth_server::media::MediaPolicy;
use hearth_server::{
    tier_defaults, total_ram_bytes, AccessConfig, HttpConfig, LifecycleConfig, MediaConfig,
    ModelSpec, QueueLimits, RateLimit, ServerConfig, WorkerSettings,
};

use crate::cli::{
    AccessArgs, CpuGateMode, LifecycleArgs, MediaArgs, MediaTransfer, QueueArgs, ServeArgs, Switch,
};
use crate::{config_file, model_path};

pub fn run(args: ServeArgs) -> Result<()> {
    let mut models = Vec::new();
    if let Some(file) = &args.config {
        for entry in config_file::load(file)?.models {
            models.push(model_from_file(entry)?);
        }
    }
    for text in &args.model {
        models.push(model_from_arg(text)?);
    }
    if models.is_empty() {
        let path = model_path::resolve(None);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("default")
            .to_owned();
        models.push(ModelSpec {
            id: stem,
            path,
            ..ModelSpec::default()
        });
    }
    for text in &args.mmproj {
        let (name, path) = match text.split_once('=') {
            Some((name, path)) => (Some(name), path),
            None => (None, text.as_str()),
        };
        let spec = match name {
            Some(name) => models.iter_mut().find(|m| m.id == name),
            None => models.first_mut(),
        }
        .with_context(|| format!("--mmproj {text}: no model is named so"))?;
        spec.mmproj = Some(std::path::PathBuf::from(path));
    }
    for spec in &mut models {
        if spec.mmproj.is_none() {
            spec.mmproj = hearth_server::config::mmproj_beside(&spec.path);
            if let Some(found) = &spec.mmproj {
                tracing::info!(model = %spec.id, mmproj = %found.display(), "vision projector found beside the model");
            }
        }
        if let Some(mmproj) = spec.mmproj.as_ref().filter(|p| !p.is_file()) {
            anyhow::bail!(
                "vision projector {} for '{}' does not exist",
                mmproj.display(),
                spec.id
            );
        }
    }
    for spec in &models {
        if !spec.path.is_file() {
            anyhow::bail!(
                "model file {} for '{}' does not exist (the default model comes from ./scripts/fetch-model.sh)",
                spec.path.display(),
                spec.id
            );
        }
    }
    let mut ids = std::collections::HashSet::new();
    if let Some(twice) = models.iter().find(|m| !ids.insert(m.id.as_str())) {
        anyhow::bail!(
            "two models are named '{}'; give one an alias (NAME=...)",
            twice.id
        );
    }
    let mut config = ServerConfig {
        host: args.host,
        port: args.port,
        models,
        worker: WorkerSettings {
            executable: std::env::current_exe().context("locating the hearth binary")?,
            parallel: args.parallel.max(1),
            ctx_size: args.ctx_size,
            threads: args.threads,
            gpu_layers: args.gpu.gpu_layers.to_string(),
            main_gpu: args.gpu.main_gpu,
            split_mode: args.gpu.split_mode.engine().as_str(),
            tensor_split: args.gpu.tensor_split.as_ref().map(ToString::to_string),
            greedy_on_device: args.gpu.greedy_on_device.as_str(),
            cache_type_k: args.gpu.cache_type_k.as_str(),
            cache_type_v: args.gpu.cache_type_v.as_str(),
            max_image_side: args.media.max_image_side,
            grammar_cache_size: args.grammar_cache_size,
            kv_unified: args.kv_unified,
            no_prompt_cache: args.no_prompt_cache,
            prompt_cache_ram_mib: args
                .prompt_cache_ram
                .unwrap_or_else(default_prompt_cache_ram),
            preemption: args.queue.preemption == Switch::On,
            flash_attn: args.flash_attn.as_str(),
            pooling: args.pooling.as_str(),
            vocab_only: false,
            cpu_gate: false,
            load_timeout: Duration::from_secs(args.load_timeout),
            keep_orphans: std::env::var_os("HEARTH_TEST_KEEP_ORPHANS").is_some(),
        },
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        preload: args.preload,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        lifecycle: lifecycle_config(&args.lifecycle, args.request_timeout)?,
        queue: queue_limits(&args.queue)?,
        max_body_bytes: args.access.max_body_bytes,
        access: access_config(&args.access)?,
        http: http_config(&args.access)?,
        media: media_config(&args.media)?,
    };
    config.worker.cpu_gate = match args.cpu_gate {
        CpuGateMode::On => true,
        CpuGateMode::Off => false,
        CpuGateMode::Auto => cpu_gate_needed(
            config.worker.threads,
            config.lifecycle.max_loaded_models,
            hearth_engine::default_threads(),
        ),
    };
    if config.worker.cpu_gate {
        tracing::info!(
            "several busy models would oversubscribe the CPU: their workers take turns decoding"
        );
    }
    let first_model = config.models[0].id.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hearth_server::serve(config, |addr| {
        print_banner(addr, &first_model);
    }))
}

/// `--model` values: `[NAME=]PATH` or `[NAME=]org/name[:QUANT]`.
fn model_from_arg(text: &str) -> Result<ModelSpec> {
    let (alias, source) = match text.split_once('=') {
        Some((alias, source)) => (Some(alias), source),
        None => (None, text),
    };
    let looks_like_file = source.to_ascii_lowercase().ends_with(".gguf")
        || source.starts_with(['/', '.', '~'])
        || std::path::Path::new(source).is_file();
    let (id, path) = if looks_like_file {
        let path = std::path::PathBuf::from(source);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("a model file needs a name")?
            .to_owned();
        (alias.map(str::to_owned).unwrap_or(stem), path)
    } else {
        let path = hub_file(source)?;
        (alias.unwrap_or(source).to_owned(), path)
    };
    validate_id(&id).map_err(anyhow::Error::msg)?;
    let mmproj = (!looks_like_file).then(|| hub_projector(source)).flatten();
    Ok(ModelSpec {
        id,
        path,
        mmproj,
        ..ModelSpec::default()
    })
}

fn model_from_file(entry: config_file::ModelEntry) -> Result<ModelSpec> {
    let (default_id, path) = match (&entry.path, &entry.hub) {
        (Some(path), _) => (
            path.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .to_owned(),
            path.clone(),
        ),
        (None, Some(hub)) => (hub.clone(), hub_file(hub)?),
        (None, None) => anyhow::bail!("a model needs a path or a hub id"),
    };
    let id = entry.id.unwrap_or(default_id);
    validate_id(&id).map_err(anyhow::Error::msg)?;
    let idle_timeout = entry
        .idle_timeout
        .map(|s| seconds(s, "idle_timeout"))
        .transpose()?;
    Ok(ModelSpec {
        id,
        path,
        parallel: entry.parallel,
        ctx_size: entry.ctx_size,
        idle_timeout,
        mmproj: entry
            .mmproj
            .or_else(|| entry.hub.as_deref().and_then(hub_projector)),
    })
}

/// The vision projector cached with a hub model, if its repository has one.
fn hub_projector(id: &str) -> Option<std::path::PathBuf> {
    let reference = HubRef::parse(id).ok()?;
    hub::find_cached_projector(&hub::cache_dir(), &reference)
}

/// A hub id's GGUF: from the Hugging Face cache, downloaded when missing (unless offline).
fn hub_file(id: &str) -> Result<std::path::PathBuf> {
    let reference = HubRef::parse(id).map_err(anyhow::Error::msg)?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    hub::fetch(&reference, progress).map_err(anyhow::Error::msg)
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("{what} must be a number of seconds, not {s}"))
}

fn media_config(args: &MediaArgs) -> Result<MediaConfig> {
    let max_image_bytes = usize::try_from(parse_bytes(&args.max_image_bytes)?)
        .context("--max-image-bytes is too large")?;
    if max_image_bytes == 0 || args.max_images == 0 || args.max_image_side == 0 {
        anyhow::bail!("--max-images, --max-image-bytes and --max-image-side must be positive");
    }
    // A request's images travel as descriptors beside one frame, read in one recvmsg.
    let most = hearth_ipc::media::MAX_FDS_PER_READ;
    if args.max_images > most {
        anyhow::bail!("--max-images may be at most {most}");
    }
    if let Some(dir) = args.allowed_media_dir.as_ref().filter(|d| !d.is_dir()) {
        anyhow::bail!("--allowed-media-dir {} is not a directory", dir.display());
    }
    let total_timeout = seconds(args.image_fetch_timeout, "--image-fetch-timeout")?;
    Ok(MediaConfig {
        policy: MediaPolicy {
            max_image_bytes,
            max_images: args.max_images,
            max_pixels_side: args.max_image_side,
            allowed_media_dir: args.allowed_media_dir.clone(),
            allowed_media_hosts: args.allowed_media_hosts.clone(),
            total_timeout,
            connect_timeout: total_timeout.min(MediaPolicy::default().connect_timeout),
            ..MediaPolicy::default()
        },
        shared_memory: args.media_transfer == MediaTransfer::Shm,
        max_bytes_in_flight: usize::try_from(parse_bytes(&args.max_image_memory)?)
            .context("--max-image-memory is too large")?,
    })
}

fn lifecycle_config(args: &LifecycleArgs, request_timeout: u64) -> Result<LifecycleConfig> {
    let total = total_ram_bytes().unwrap_or(16 << 30);
    let (tier_budget, tier_models) = tier_defaults(total);
    let memory_budget = match &args.memory_budget {
        Some(text) => parse_bytes(text)?,
        None => tier_budget,
    };
    Ok(LifecycleConfig {
        idle_timeout: seconds(args.idle_timeout, "--idle-timeout")?,
        max_loaded_models: args.max_loaded_models.unwrap_or(tier_models).max(1),
        memory_budget,
        memory_wait: seconds(args.memory_wait, "--memory-wait")?,
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(hearth_server::registry::default_state_dir),
        ping_interval: seconds(args.ping_interval, "--ping-interval")?,
        hang_timeout: seconds(args.hang_timeout, "--hang-timeout")?,
        stall_timeout: Duration::from_secs(request_timeout.max(1)),
    })
}

/// `12GiB`, `800MB`, `1.5G`, `4096` (bytes). Decimal and binary units both mean powers of 2:
/// nobody sizes RAM in powers of ten.
fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("--memory-budget: {text:?} is not a size like 12GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => anyhow::bail!("--memory-budget: unknown unit {other:?} (use MiB or GiB)"),
    };
    Ok((value * scale as f64) as u64)
}

fn queue_limits(args: &QueueArgs) -> Result<QueueLimits> {
    let unlimited = |d: Option<usize>| d.unwrap_or(usize::MAX);
    Ok(QueueLimits {
        max_depth: args.max_queue_depth,
        max_depth_per_priority: [
            unlimited(args.max_queue_depth_high),
            unlimited(args.max_queue_depth_normal),
            unlimited(args.max_queue_depth_low),
        ],
        timeouts: [
            seconds(args.queue_timeout_high, "--queue-timeout-high")?,
            seconds(args.queue_timeout_normal, "--queue-timeout-normal")?,
            seconds(args.queue_timeout_low, "--queue-timeout-low")?,
        ],
        preemption: args.preemption == Switch::On,
    })
}

fn http_config(args: &AccessArgs) -> Result<HttpConfig> {
    let positive = |s: f64, what: &str| {
        let d = seconds(s, what)?;
        anyhow::ensure!(!d.is_zero(), "{what} must be more than 0 seconds");
        Ok::<_, anyhow::Error>(d)
    };
    anyhow::ensure!(
        (1..=1_000_000).contains(&args.max_connections),
        "--max-connections must be between 1 and 1000000"
    );
    Ok(HttpConfig {
        header_timeout: positive(args.header_timeout, "--header-timeout")?,
        body_timeout: positive(args.body_timeout, "--body-timeout")?,
        max_connections: args.max_connections,
    })
}

fn access_config(args: &AccessArgs) -> Result<AccessConfig> {
    // An empty key would otherwise vanish and leave the server open (or, kept, match an
    // empty bearer): either way not what someone who set a key meant.
    let mut api_keys = Vec::new();
    for key in &args.api_keys {
        let key = key.trim();
        if key.is_empty() {
            anyhow::bail!(
                "an API key is empty (--api-key \"\" or an empty entry in HEARTH_API_KEYS); \
                 give a real key, or none to serve without keys"
            );
        }
        api_keys.push(key.to_owned());
    }
    if let Some(file) = &args.api_key_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading API keys from {}", file.display()))?;
        // Blank lines and comments are not keys; a file with nothing else is an error (even
        // next to --api-key: it was meant to hold keys).
        let from_file: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        if from_file.is_empty() {
            anyhow::bail!("{} holds no API keys", file.display());
        }
        api_keys.extend(from_file);
    }
    let rate_limit = match args.rate_limit_rpm {
        None => None,
        Some(0) => anyhow::bail!("--rate-limit-rpm must be at least 1"),
        Some(per_minute) => Some(RateLimit {
            per_minute,
            burst: args.rate_limit_burst.unwrap_or(per_minute).max(1),
        }),
    };
    Ok(AccessConfig {
        api_keys,
        cors_origins: args.cors_origins.clone(),
        rate_limit,
        allowed_hosts: args
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect(),
    })
}

fn print_banner(addr: std::net::SocketAddr, model: &str) {
    let base = format!("http://{addr}/v1");
    eprintln!(
        "hearth is listening on http://{addr} (model '{model}', also 'default')\n\n\
         Try it:\n\
         \x20 curl {base}/chat/completions -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"model\": \"default\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n\n\
         \x20 python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"{base}\", api_key=\"none\"); \
         print(c.chat.completions.create(model=\"default\", messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}]).choices[0].message.content)'\n"
    );
}

/// Host memory for saved prompt caches, per worker, by the machine's RAM.
fn default_prompt_cache_ram() -> usize {
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        })
        .map_or(0, |kib| kib / 1024);
    match total_mib {
        0..8192 => 256,
        8192..32768 => 1024,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("12GiB").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("800MB").unwrap(), 800 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }

    #[test]
    fn model_arguments_are_files_or_hub_ids() {
        let spec = model_from_arg("smol=models/x.gguf").unwrap();
        assert_eq!(
            (spec.id.as_str(), spec.path.to_str()),
            ("smol", Some("models/x.gguf"))
        );
        assert_eq!(model_from_arg("/a/b.gguf").unwrap().id, "b");
        assert!(model_from_arg("bad id=/a/b.gguf").is_err());
        assert!(model_from_arg("org/na me").is_err(), "not a hub id");
    }
}
