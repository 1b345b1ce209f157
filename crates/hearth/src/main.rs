//! `hearth`: a local OpenAI-compatible LLM server. This binary is its CLI.

mod bench_cmd;
mod cli;
mod config_file;
mod http_bench;
mod model_path;
mod models_cmd;
mod pull_cmd;
mod run_cmd;
mod serve_cmd;
mod worker_cmd;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before any thread starts: it sets the environment, which workers inherit.
    match &cli.command {
        Command::Serve(args) => args.gpu.apply_cuda_fusion(),
        Command::Run(args) => args.engine.gpu.apply_cuda_fusion(),
        Command::Bench(args) => args.engine.gpu.apply_cuda_fusion(),
        _ => {}
    }
    // `hearth serve` writes one access-log line per request unless told otherwise.
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,hearth_access=info",
        _ => "warn",
    };
    init_logging(cli.log_level.as_deref(), cli.log_json, default_filter);
    let result = match cli.command {
        Command::Serve(args) => serve_cmd::run(*args),
        Command::Worker(args) => worker_cmd::run(args),
        Command::Run(args) => run_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Pull(args) => pull_cmd::run(args),
        Command::Ps(args) => models_cmd::ps(args),
        Command::Ls(args) => models_cmd::ls(args),
        Command::Show(args) => models_cmd::show(args),
        Command::Rm(args) => models_cmd::rm(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; llama.cpp's own chatter stays below `warn` unless asked for.
fn init_logging(level: Option<&str>, json: bool, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => {
            EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
