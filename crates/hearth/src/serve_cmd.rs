//! `hearth serve`: the orchestrator.

use std::time::Duration;

use anyhow::{Context, Result};
use hearth_server::{ModelSpec, ServerConfig, WorkerSettings};

use crate::cli::ServeArgs;
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
    };
    let first_model = config.models[0].id.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(hearth_server::serve(config, |addr| {
        print_banner(addr, &first_model);
    }))
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
