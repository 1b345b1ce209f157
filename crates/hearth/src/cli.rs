//! Command-line arguments. Every flag can also be set through a `HEARTH_*` variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about = "A local OpenAI-compatible LLM inference server",
    long_about = "hearth runs open-weight GGUF models on your own machine.\n\n\
                  `hearth run` chats with a model in the terminal; `hearth bench` measures it."
)]
pub struct Cli {
    /// Log filter (e.g. `info`, `hearth=debug`); defaults to `warn`.
    #[arg(long, global = true, env = "HEARTH_LOG")]
    pub log_level: Option<String>,
    /// Write logs as JSON lines.
    #[arg(long, global = true, env = "HEARTH_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chat with a model: one reply to PROMPT, or an interactive chat without one.
    Run(RunArgs),
    /// Measure prefill and decode speed (tokens per second) on a model.
    Bench(BenchArgs),
}

/// Where the model is and how the engine runs it.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// GGUF model file [default: models/SmolLM2-135M-Instruct.Q4_1.gguf]
    #[arg(long, short, env = "HEARTH_MODEL")]
    pub model: Option<PathBuf>,
    /// CPU threads for inference [default: all logical CPUs]
    #[arg(long, env = "HEARTH_THREADS")]
    pub threads: Option<usize>,
    /// Context tokens per sequence (prompt plus reply).
    #[arg(long, default_value_t = 4096, env = "HEARTH_CTX_SIZE")]
    pub ctx_size: u32,
    /// Layers to offload to the GPU (builds with GPU support only).
    #[arg(long, default_value_t = 0, env = "HEARTH_GPU_LAYERS")]
    pub gpu_layers: u32,
}

#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the best one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Same seed, same prompt, same reply.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Stop the reply before this text (repeatable, up to 4).
    #[arg(long)]
    pub stop: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System prompt (the model's template default when not given).
    #[arg(long)]
    pub system: Option<String>,
    /// Print the rendered prompt (after the chat template) to stderr.
    #[arg(long)]
    pub show_prompt: bool,
    /// Treat PROMPT as raw text to continue, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// The message to answer; without it, an interactive chat (`/exit` to leave).
    pub prompt: Option<String>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated per sequence in the decode measurements.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Concurrent sequences for the aggregate decode measurements.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub concurrency: Vec<usize>,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}
