//! Shared set-up for tests that run the real default model.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use hearth_engine::{
    model_chat_template, Engine, EngineConfig, Event, FinishReason, GenerationRequest, LoadOptions,
    Model, SamplingParams, TemplateInput, Usage,
};
use serde_json::json;

pub fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default model, loaded once per test binary.
pub fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                Model::load(model_path(), &LoadOptions::default())
                    .expect("run ./scripts/fetch-model.sh to fetch the default model"),
            )
        })
        .clone()
}

pub fn engine(parallel: usize) -> Engine {
    engine_with(parallel, 1024)
}

pub fn engine_with(parallel: usize, context_per_slot: u32) -> Engine {
    engine_configured(
        parallel,
        context_per_slot,
        hearth_engine::FlashAttention::Auto,
    )
}

pub fn engine_configured(
    parallel: usize,
    context_per_slot: u32,
    flash_attention: hearth_engine::FlashAttention,
) -> Engine {
    Engine::start(
        model(),
        EngineConfig {
            flash_attention,
            ..config(parallel, context_per_slot)
        },
    )
    .unwrap()
}

/// The tests' engine settings.
pub fn config(parallel: usize, context_per_slot: u32) -> EngineConfig {
    EngineConfig {
        parallel,
        context_per_slot,
        batch_size: 512,
        threads: 2,
        kv_unified: false,
        cpu_gate: None,
        prompt_cache: true,
        prompt_cache_ram: 64 << 20,
        preemption: true,
        flash_attention: Default::default(),
        cache_type_k: Default::default(),
        cache_type_v: Default::default(),
        projector: None,
        greedy_on_device: false,
    }
}

/// Tokens of a one-message chat rendered with the model's own template.
pub fn chat_prompt(message: &str) -> Vec<u32> {
    let model = model();
    let template = model_chat_template(&model).unwrap();
    let text = template
        .render(&TemplateInput {
            messages: vec![json!({"role": "user", "content": message})],
            tools: None,
            add_generation_prompt: true,
        })
        .unwrap();
    model.tokenize(&text, false, true)
}

pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        ..GenerationRequest::default()
    }
}

/// Everything one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub text: String,
    pub deltas: Vec<String>,
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub logprobs: Vec<Option<hearth_engine::TokenLogprobs>>,
}

pub fn collect(events: impl IntoIterator<Item = Event>) -> Output {
    let mut out = Output {
        text: String::new(),
        deltas: vec![],
        tokens: vec![],
        finish_reason: FinishReason::Cancelled,
        usage: Usage::default(),
        logprobs: vec![],
    };
    for event in events {
        match event {
            Event::Delta { text, tokens } => {
                out.text.push_str(&text);
                out.deltas.push(text);
                for t in tokens {
                    out.tokens.push(t.id);
                    out.logprobs.push(t.logprobs);
                }
            }
            Event::Done {
                finish_reason,
                usage,
            } => {
                out.finish_reason = finish_reason;
                out.usage = usage;
                return out;
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("the event stream ended without a final event")
}

pub fn generate(engine: &Engine, request: GenerationRequest) -> Output {
    collect(engine.submit(request).unwrap().events)
}
