//! `hearth serve`: the orchestrator.

use std::time::Duration;

use anyhow::{Context, Result};
use hearth_server::{
    AccessConfig, ModelSpec, QueueLimits, RateLimit, ServerConfig, WorkerSettings,
};

use crate::cli::{AccessArgs, QueueArgs, ServeArgs};
use crate::model_path;

pub fn run(args: ServeArgs) -> Result<()> {
    let models = if args.model.is_empty() {
        let path = model_path::resolve(None);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("default")
            .to_owned();
        vec![ModelSpec { id: stem, path }]
    } else {
        args.model
            .iter()
            .map(|m| ModelSpec::parse(m).map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?
    };
    for spec in &models {
        if !spec.path.is_file() {
            anyhow::bail!(
                "model file {} for '{}' does not exist (the default model comes from ./scripts/fetch-model.sh)",
                spec.path.display(),
                spec.id
            );
        }
    }
    let config = ServerConfig {
        host: args.host,
        port: args.port,
        models,
        worker: WorkerSettings {
            executable: std::env::current_exe().context("locating the hearth binary")?,
            parallel: args.parallel.max(1),
            ctx_size: args.ctx_size,
            threads: args.threads,
            gpu_layers: args.gpu_layers,
            grammar_cache_size: args.grammar_cache_size,
            kv_unified: args.kv_unified,
            load_timeout: Duration::from_secs(args.load_timeout),
        },
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        preload: args.preload,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        queue: queue_limits(&args.queue)?,
        max_body_bytes: args.access.max_body_bytes,
        access: access_config(&args.access)?,
    };
    let first_model = config.models[0].id.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hearth_server::serve(config, |addr| {
        print_banner(addr, &first_model);
    }))
}

fn queue_limits(args: &QueueArgs) -> Result<QueueLimits> {
    let seconds = |s: f64, flag: &str| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| anyhow::anyhow!("--{flag} must be a number of seconds, not {s}"))
    };
    let unlimited = |d: Option<usize>| d.unwrap_or(usize::MAX);
    Ok(QueueLimits {
        max_depth: args.max_queue_depth,
        max_depth_per_priority: [
            unlimited(args.max_queue_depth_high),
            unlimited(args.max_queue_depth_normal),
            unlimited(args.max_queue_depth_low),
        ],
        timeouts: [
            seconds(args.queue_timeout_high, "queue-timeout-high")?,
            seconds(args.queue_timeout_normal, "queue-timeout-normal")?,
            seconds(args.queue_timeout_low, "queue-timeout-low")?,
        ],
    })
}

fn access_config(args: &AccessArgs) -> Result<AccessConfig> {
    let mut api_keys: Vec<String> = args
        .api_keys
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if let Some(file) = &args.api_key_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading API keys from {}", file.display()))?;
        api_keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
        if api_keys.is_empty() {
            anyhow::bail!("{} holds no API keys", file.display());
        }
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
