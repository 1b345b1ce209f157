//! Command-line arguments. Every flag can also be set through a `HEARTH_*` variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hearth_engine::GpuLayers;

#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about = "A local OpenAI-compatible LLM inference server",
    long_about = "hearth runs open-weight GGUF models on your own machine.\n\n\
                  `hearth serve` answers OpenAI API requests; `hearth run` chats in the terminal;\n\
                  `hearth bench` measures speed."
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
    /// Serve models over an OpenAI-compatible HTTP API.
    Serve(Box<ServeArgs>),
    /// Chat with a model: one reply to PROMPT, or an interactive chat without one.
    Run(RunArgs),
    /// Measure prefill and decode speed (tokens per second) on a model.
    Bench(BenchArgs),
    /// Download a model from Hugging Face into the local cache (org/name or org/name:QUANT).
    Pull(PullArgs),
    /// Models a running server has: state, process, slots, queue, memory.
    Ps(PsArgs),
    /// Models on this machine: `models/` and the Hugging Face cache.
    Ls(LsArgs),
    /// What a model file is: architecture, quantization, context, template, capabilities.
    Show(ShowArgs),
    /// Remove a model from the Hugging Face cache (refused while a server has it loaded).
    Rm(RmArgs),
    /// Internal: one model's worker process, started by `hearth serve`.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "HEARTH_HOST")]
    pub host: String,
    #[arg(long, default_value_t = 8080, env = "HEARTH_PORT")]
    pub port: u16,
    /// A model to serve: a GGUF `PATH` (served under its file stem), a Hugging Face id
    /// `org/name[:QUANT]` (from the local cache, downloaded if missing), or `NAME=` either;
    /// repeatable. The first is also `default`. [default: the default model]
    #[arg(long, short, env = "HEARTH_MODELS", value_delimiter = ',')]
    pub model: Vec<String>,
    /// A vision projector (mmproj GGUF) for the first model, or `NAME=PATH` for the model
    /// named; repeatable. Without one, an `mmproj*.gguf` beside a model that is the only
    /// other GGUF in its directory is used.
    #[arg(long, env = "HEARTH_MMPROJ", value_delimiter = ',')]
    pub mmproj: Vec<String>,
    /// A TOML file naming models and their settings (`[[models]]` with id, path or hub,
    /// ctx_size, parallel, idle_timeout, mmproj).
    #[arg(long, env = "HEARTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Sequences each worker decodes together.
    #[arg(long, default_value_t = 4, env = "HEARTH_PARALLEL")]
    pub parallel: usize,
    /// Context tokens per sequence (prompt plus reply).
    #[arg(long, default_value_t = 4096, env = "HEARTH_CTX_SIZE")]
    pub ctx_size: u32,
    /// CPU threads per worker [default: all logical CPUs]
    #[arg(long, env = "HEARTH_THREADS")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub gpu: GpuArgs,
    /// Flash attention (`auto`: llama.cpp's choice). On the CPU, `off` keeps long batched
    /// generations equal to solo runs, `on` keeps cache hits equal to cold runs
    /// (docs/architecture.md, "Exactness").
    #[arg(long, value_enum, default_value_t = AutoSwitch::Auto, env = "HEARTH_FLASH_ATTN")]
    pub flash_attn: AutoSwitch,
    /// How `/v1/embeddings` pools token vectors: `model` takes the GGUF's pooling (embedding
    /// models have one); `mean`, `cls` or `last` let any model embed.
    #[arg(long, value_enum, default_value_t = PoolingArg::Model, env = "HEARTH_POOLING")]
    pub pooling: PoolingArg,
    /// Seconds a request may run; past it the client gets 504 and a worker that stopped
    /// answering is killed.
    #[arg(long, default_value_t = 600, env = "HEARTH_REQUEST_TIMEOUT")]
    pub request_timeout: u64,
    /// Seconds a worker may take to load its model.
    #[arg(long, default_value_t = 120, env = "HEARTH_LOAD_TIMEOUT")]
    pub load_timeout: u64,
    /// Load every model at start-up instead of on first request.
    #[arg(long, env = "HEARTH_PRELOAD")]
    pub preload: bool,
    /// Share one KV buffer across sequences (every sequence then attends over all cells, and
    /// its output may depend on what runs alongside it; measured slower: docs/benchmarks.md).
    #[arg(long, env = "HEARTH_KV_UNIFIED")]
    pub kv_unified: bool,
    /// Do not keep finished sequences' KV as a prompt cache (every prompt is read in full).
    #[arg(long, env = "HEARTH_NO_PROMPT_CACHE")]
    pub no_prompt_cache: bool,
    /// MiB of host memory per worker for prompt caches moved out of their slots, restored
    /// when a conversation returns [default: by RAM: 256 under 8 GiB, 1024 under 32, else
    /// 4096; 0 disables].
    #[arg(long, env = "HEARTH_PROMPT_CACHE_RAM")]
    pub prompt_cache_ram: Option<usize>,
    /// Workers take turns decoding: `auto` does when their threads together could exceed
    /// the CPU's cores (several models loaded at once).
    #[arg(long, value_enum, default_value_t = CpuGateMode::Auto, env = "HEARTH_CPU_GATE")]
    pub cpu_gate: CpuGateMode,
    /// Compiled structured-output grammars each worker keeps (LRU).
    #[arg(long, default_value_t = 10, env = "HEARTH_GRAMMAR_CACHE_SIZE")]
    pub grammar_cache_size: usize,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30, env = "HEARTH_SHUTDOWN_GRACE")]
    pub shutdown_grace: u64,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub media: MediaArgs,
}

/// Images in chat requests (models served with a vision projector).
#[derive(Debug, Args)]
#[command(next_help_heading = "Images")]
pub struct MediaArgs {
    /// Read `file://` image URLs from under this directory (off by default: local files
    /// are refused).
    #[arg(long, env = "HEARTH_ALLOWED_MEDIA_DIR")]
    pub allowed_media_dir: Option<PathBuf>,
    /// Hosts whose image URLs may resolve to private, loopback or other non-public
    /// addresses (e.g. a LAN image store); comma-separated. Others must be public.
    #[arg(long, env = "HEARTH_ALLOWED_MEDIA_HOSTS", value_delimiter = ',')]
    pub allowed_media_hosts: Vec<String>,
    /// Most images in one request.
    #[arg(long, default_value_t = 5, env = "HEARTH_MAX_IMAGES")]
    pub max_images: usize,
    /// Largest image, e.g. `10MiB` (after base64 decoding).
    #[arg(long, default_value = "10MiB", env = "HEARTH_MAX_IMAGE_BYTES")]
    pub max_image_bytes: String,
    /// Largest image width or height, in pixels (read from the header, before decoding).
    #[arg(long, default_value_t = 4096, env = "HEARTH_MAX_IMAGE_SIDE")]
    pub max_image_side: u32,
    /// Image bytes all requests together may hold while they wait and run, e.g. `1GiB`;
    /// past it, image requests get 503 with Retry-After.
    #[arg(long, default_value = "1GiB", env = "HEARTH_MAX_IMAGE_MEMORY")]
    pub max_image_memory: String,
    /// Seconds an image URL may take to fetch, redirects included.
    #[arg(long, default_value_t = 20.0, env = "HEARTH_IMAGE_FETCH_TIMEOUT")]
    pub image_fetch_timeout: f64,
    /// How images reach workers: `shm` (sealed shared memory, falling back to inline where
    /// the kernel has none) or `inline` (in the message itself).
    #[arg(long, value_enum, default_value_t = MediaTransfer::Shm, env = "HEARTH_MEDIA_TRANSFER")]
    pub media_transfer: MediaTransfer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MediaTransfer {
    Shm,
    Inline,
}

/// When models load and unload, and how workers are watched.
#[derive(Debug, Args)]
#[command(next_help_heading = "Models and workers")]
pub struct LifecycleArgs {
    /// Seconds without requests before a model is unloaded (0 = never).
    #[arg(long, default_value_t = 300.0, env = "HEARTH_IDLE_TIMEOUT")]
    pub idle_timeout: f64,
    /// Most models loaded at once [default: 1 / 2 / 4 for 16 / 32 / 64+ GB of RAM]
    #[arg(long, env = "HEARTH_MAX_LOADED_MODELS")]
    pub max_loaded_models: Option<usize>,
    /// Memory all loaded models may use, e.g. `12GiB` or `800MB`
    /// [default: 50% / 60% / 70% of RAM for 16 / 32 / 64+ GB]
    #[arg(long, env = "HEARTH_MEMORY_BUDGET")]
    pub memory_budget: Option<String>,
    /// Seconds a request waits for busy models to make room before it gets 503.
    #[arg(long, default_value_t = 30.0, env = "HEARTH_MEMORY_WAIT")]
    pub memory_wait: f64,
    /// Where the worker registry lives [default: $XDG_STATE_HOME/hearth]
    #[arg(long, env = "HEARTH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds between health pings to every worker.
    #[arg(long, default_value_t = 5.0, env = "HEARTH_PING_INTERVAL")]
    pub ping_interval: f64,
    /// Seconds a worker may go without answering pings before it is killed and restarted.
    /// (One whose engine makes no progress on running requests gets --request-timeout.)
    #[arg(long, default_value_t = 30.0, env = "HEARTH_HANG_TIMEOUT")]
    pub hang_timeout: f64,
}

/// Where a running `hearth serve` answers.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "HEARTH_URL")]
    pub url: String,
    /// The server's API key, if it has one.
    #[arg(long, env = "HEARTH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A GGUF path, or a Hugging Face id in the local cache (`org/name[:QUANT]`).
    pub model: String,
    /// JSON instead of text (the chat template included).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// A Hugging Face id in the local cache (`org/name[:QUANT]`).
    pub model: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `org/name`, `org/name:QUANT` (e.g. Q4_K_M) or `org/name:FILE.gguf`.
    pub model: String,
}

/// Requests wait in the orchestrator, by `X-Priority`, while a model's slots are busy.
#[derive(Debug, Args)]
#[command(next_help_heading = "Queue")]
pub struct QueueArgs {
    /// Most requests waiting per model; past it new ones get 429 at once.
    #[arg(long, default_value_t = 256, env = "HEARTH_MAX_QUEUE_DEPTH")]
    pub max_queue_depth: usize,
    /// Most `X-Priority: high` requests waiting per model [default: no own limit]
    #[arg(long, env = "HEARTH_MAX_QUEUE_DEPTH_HIGH")]
    pub max_queue_depth_high: Option<usize>,
    /// Most normal-priority requests waiting per model [default: no own limit]
    #[arg(long, env = "HEARTH_MAX_QUEUE_DEPTH_NORMAL")]
    pub max_queue_depth_normal: Option<usize>,
    /// Most low-priority requests waiting per model [default: no own limit]
    #[arg(long, env = "HEARTH_MAX_QUEUE_DEPTH_LOW")]
    pub max_queue_depth_low: Option<usize>,
    /// Seconds a high-priority request may wait for a slot before it gets 503.
    #[arg(long, default_value_t = 300.0, env = "HEARTH_QUEUE_TIMEOUT_HIGH")]
    pub queue_timeout_high: f64,
    /// Seconds a normal-priority request may wait for a slot.
    #[arg(long, default_value_t = 120.0, env = "HEARTH_QUEUE_TIMEOUT_NORMAL")]
    pub queue_timeout_normal: f64,
    /// Seconds a low-priority request may wait for a slot.
    #[arg(long, default_value_t = 60.0, env = "HEARTH_QUEUE_TIMEOUT_LOW")]
    pub queue_timeout_low: f64,
    /// A high-priority request that finds every slot busy with lower-priority work pauses
    /// the newest of it (its KV kept in host memory; it resumes where it was, its client
    /// seeing only a pause) instead of waiting.
    #[arg(long, value_enum, default_value_t = Switch::On, env = "HEARTH_PREEMPTION")]
    pub preemption: Switch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolingArg {
    Model,
    Mean,
    Cls,
    Last,
}

impl PoolingArg {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolingArg::Model => "model",
            PoolingArg::Mean => "mean",
            PoolingArg::Cls => "cls",
            PoolingArg::Last => "last",
        }
    }

    pub fn engine(self) -> hearth_engine::embed::Pooling {
        use hearth_engine::embed::Pooling;
        match self {
            PoolingArg::Model => Pooling::Model,
            PoolingArg::Mean => Pooling::Mean,
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Last => Pooling::Last,
        }
    }
}

/// Where models run: the CPU, or GPUs (builds with `--features cuda`, `vulkan` or `metal`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "GPU")]
pub struct GpuArgs {
    /// Layers to offload to GPUs: `auto` offloads all that fit in the GPUs' free memory after
    /// the KV cache (ctx × slots) and compute buffers, leaving 1 GiB (none without a GPU);
    /// a number offloads that many.
    #[arg(long, default_value = "auto", env = "HEARTH_GPU_LAYERS")]
    pub gpu_layers: GpuLayers,
    /// The GPU that holds everything with `--split-mode none` (and small tensors otherwise).
    #[arg(long, default_value_t = 0, env = "HEARTH_MAIN_GPU")]
    pub main_gpu: u32,
    /// How a model spreads over several GPUs: whole `layer`s in proportion to free memory,
    /// weight `row`s, or `none` (all on --main-gpu).
    #[arg(long, value_enum, default_value_t = SplitArg::Layer, env = "HEARTH_SPLIT_MODE")]
    pub split_mode: SplitArg,
    /// Element type of the KV cache's keys (`q8_0` halves the cache; `q4_0` quarters it, at
    /// some quality cost).
    #[arg(long, value_enum, default_value_t = CacheTypeArg::F16, env = "HEARTH_CACHE_TYPE_K")]
    pub cache_type_k: CacheTypeArg,
    /// Element type of the KV cache's values (quantized values need flash attention).
    #[arg(long, value_enum, default_value_t = CacheTypeArg::F16, env = "HEARTH_CACHE_TYPE_V")]
    pub cache_type_v: CacheTypeArg,
    /// llama.cpp's fused CUDA kernels. Off by default: with the llama.cpp hearth links they
    /// measured slower on an H100 (8B Q4_K_M, single-stream decode 252.6 against 268.4
    /// tok/s without; nothing lost batched). Sets `GGML_CUDA_DISABLE_FUSION` (1 or 0) for
    /// the process and its workers unless it is set already.
    #[arg(long, value_enum, default_value_t = Switch::Off, env = "HEARTH_CUDA_FUSION")]
    pub cuda_fusion: Switch,
    /// Shares of the model per GPU, in device order (`3,1`: three quarters on the first).
    /// Without it the split follows each GPU's free memory. With it, `--gpu-layers auto`
    /// offloads every layer without fitting (llama.cpp's fitting chooses its own split), so
    /// leave room for the KV cache and a vision projector yourself.
    #[arg(long, env = "HEARTH_TENSOR_SPLIT")]
    pub tensor_split: Option<hearth_engine::TensorSplit>,
    /// Greedy requests' tokens chosen by llama.cpp on the device (an argmax in its graph)
    /// instead of by hearth from the logits: no logits are copied out for them. Same tokens.
    /// Off by default: on an H100 with a 49k vocabulary llama.cpp's sampling graph cost more
    /// per step than it saved (32 sequences: 2,931 against 3,070 tok/s).
    #[arg(long, value_enum, default_value_t = Switch::Off, env = "HEARTH_GREEDY_ON_DEVICE")]
    pub greedy_on_device: Switch,
}

impl GpuArgs {
    /// Apply `--cuda-fusion` to this process's environment, which workers inherit. Call
    /// before any thread starts (setting the environment races with threads reading it).
    pub fn apply_cuda_fusion(&self) {
        const VAR: &str = "GGML_CUDA_DISABLE_FUSION";
        if std::env::var_os(VAR).is_none() {
            // ggml reads it with `atoi`: "0" leaves fusion on.
            let disable = match self.cuda_fusion {
                Switch::On => "0",
                Switch::Off => "1",
            };
            std::env::set_var(VAR, disable);
        }
    }

    pub fn placement(&self) -> hearth_engine::Placement {
        hearth_engine::Placement {
            gpu_layers: self.gpu_layers,
            main_gpu: self.main_gpu,
            split_mode: self.split_mode.engine(),
            reserve_bytes: 0,
            tensor_split: self.tensor_split.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    None,
    Layer,
    Row,
}

impl SplitArg {
    pub fn engine(self) -> hearth_engine::SplitMode {
        match self {
            SplitArg::None => hearth_engine::SplitMode::None,
            SplitArg::Layer => hearth_engine::SplitMode::Layer,
            SplitArg::Row => hearth_engine::SplitMode::Row,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheTypeArg {
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl CacheTypeArg {
    pub fn engine(self) -> hearth_engine::CacheType {
        match self {
            CacheTypeArg::F16 => hearth_engine::CacheType::F16,
            CacheTypeArg::Q8_0 => hearth_engine::CacheType::Q8_0,
            CacheTypeArg::Q4_0 => hearth_engine::CacheType::Q4_0,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.engine().as_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AutoSwitch {
    Auto,
    On,
    Off,
}

impl AutoSwitch {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoSwitch::Auto => "auto",
            AutoSwitch::On => "on",
            AutoSwitch::Off => "off",
        }
    }

    /// As `--flash-attn`.
    pub fn engine(self) -> hearth_engine::FlashAttention {
        match self {
            AutoSwitch::Auto => hearth_engine::FlashAttention::Auto,
            AutoSwitch::On => hearth_engine::FlashAttention::On,
            AutoSwitch::Off => hearth_engine::FlashAttention::Off,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::On => "on",
            Switch::Off => "off",
        }
    }
}

/// Who may call the API and how often.
#[derive(Debug, Args)]
#[command(next_help_heading = "Access")]
pub struct AccessArgs {
    /// Require `Authorization: Bearer KEY` on every endpoint but /health* and the chat page
    /// (which asks for the key); repeatable.
    /// An empty key is refused.
    #[arg(
        long = "api-key",
        env = "HEARTH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "HEARTH_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Requests per minute per API key (per client address without keys); off by default.
    #[arg(long, env = "HEARTH_RATE_LIMIT_RPM")]
    pub rate_limit_rpm: Option<u32>,
    /// Requests a client may send at once before the per-minute pace applies
    /// [default: the per-minute limit]
    #[arg(long, env = "HEARTH_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Origins browsers may call from (CORS), comma-separated, or `*`; none by default.
    #[arg(long, env = "HEARTH_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes; larger ones get 413 (at once when Content-Length says so).
    #[arg(long, default_value_t = 16 << 20, env = "HEARTH_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Host names the `Host` header may carry besides IP literals, localhost, *.localhost,
    /// --host and this machine's name (against DNS rebinding), comma-separated;
    /// `*.example.com` for subdomains; `*` turns the check off.
    #[arg(long, env = "HEARTH_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Seconds a client has to send a request's headers, counted from when its connection
    /// opens or its previous response ends (so also how long an idle keep-alive connection
    /// stays open).
    #[arg(long, default_value_t = 10.0, env = "HEARTH_HEADER_TIMEOUT")]
    pub header_timeout: f64,
    /// Seconds a client has to send a whole request body; 408 after.
    #[arg(long, default_value_t = 30.0, env = "HEARTH_BODY_TIMEOUT")]
    pub body_timeout: f64,
    /// Most client connections open at once; more wait (in the listen backlog) until one
    /// closes.
    #[arg(long, default_value_t = 1024, env = "HEARTH_MAX_CONNECTIONS")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuGateMode {
    Auto,
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub model_id: String,
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: u32,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, default_value = "auto")]
    pub gpu_layers: GpuLayers,
    #[arg(long, default_value_t = 0)]
    pub main_gpu: u32,
    #[arg(long, value_enum, default_value_t = SplitArg::Layer)]
    pub split_mode: SplitArg,
    #[arg(long)]
    pub tensor_split: Option<hearth_engine::TensorSplit>,
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    pub greedy_on_device: Switch,
    #[arg(long, value_enum, default_value_t = CacheTypeArg::F16)]
    pub cache_type_k: CacheTypeArg,
    #[arg(long, value_enum, default_value_t = CacheTypeArg::F16)]
    pub cache_type_v: CacheTypeArg,
    #[arg(long, default_value_t = 10)]
    pub grammar_cache_size: usize,
    #[arg(long)]
    pub kv_unified: bool,
    #[arg(long)]
    pub no_prompt_cache: bool,
    /// A waiting high-priority request may not pause lower-priority sequences.
    #[arg(long)]
    pub no_preemption: bool,
    #[arg(long, value_enum, default_value_t = AutoSwitch::Auto)]
    pub flash_attn: AutoSwitch,
    #[arg(long, value_enum, default_value_t = PoolingArg::Model)]
    pub pooling: PoolingArg,
    /// Load only the tokenizer and template: count tokens for the orchestrator.
    #[arg(long)]
    pub vocab_only: bool,
    /// MiB of host memory for saved prompt caches.
    #[arg(long, default_value_t = 0)]
    pub prompt_cache_ram: usize,
    /// Lock file shared by workers that must take turns decoding.
    #[arg(long)]
    pub cpu_gate: Option<PathBuf>,
    /// The model's vision projector (mmproj GGUF): chat prompts may then hold images.
    #[arg(long)]
    pub mmproj: Option<PathBuf>,
    /// Largest image width or height decoded (a second line behind the orchestrator's).
    #[arg(long, default_value_t = 4096)]
    pub max_image_side: u32,
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
    #[command(flatten)]
    pub gpu: GpuArgs,
    /// Flash attention (`auto`: llama.cpp's choice). On the CPU, `off` keeps long batched
    /// generations equal to solo runs, `on` keeps cache hits equal to cold runs
    /// (docs/architecture.md, "Exactness").
    #[arg(long, value_enum, default_value_t = AutoSwitch::Auto, env = "HEARTH_FLASH_ATTN")]
    pub flash_attn: AutoSwitch,
    /// Share one KV buffer across sequences (outputs may then depend on what runs alongside;
    /// measured slower: docs/benchmarks.md).
    #[arg(long, env = "HEARTH_KV_UNIFIED")]
    pub kv_unified: bool,
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
    /// Also measure one stream through `hearth serve` over HTTP, against the engine alone.
    #[arg(long)]
    pub http: bool,
    /// Sampling temperature of the decode measurements (0: greedy). Prefill, structured
    /// output and `--http` stay greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// top_p of the decode measurements, with `--temperature`.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
}
