//! The process-wide llama.cpp backend: llama.cpp allows one initialisation per process.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::{send_logs_to_tracing, LogOptions};

static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();

/// The shared backend, initialised on first use with llama.cpp's logs routed into `tracing`.
pub fn backend() -> &'static LlamaBackend {
    BACKEND.get_or_init(|| {
        send_logs_to_tracing(LogOptions::default());
        LlamaBackend::init().expect("llama.cpp backend initialises once per process")
    })
}
