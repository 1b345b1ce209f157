//! `hearth run`: stream a model's reply in the terminal, once or as an interactive chat.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use hearth_engine::{
    model_chat_template, ChatTemplate, Engine, EngineConfig, Event, FinishReason,
    GenerationRequest, LoadOptions, Model, SamplingParams, TemplateInput,
};
use serde_json::json;

use crate::cli::{EngineArgs, RunArgs, SamplingArgs, Switch};
use crate::model_path;

pub fn run(args: RunArgs) -> Result<()> {
    let engine = start_engine(&args.engine, 1, true)?;
    let sampling = sampling_params(&args.sampling);
    if args.raw {
        let prompt = args.prompt.context("--raw needs a PROMPT to continue")?;
        let tokens = engine.model().tokenize(&prompt, true, false);
        print!("{prompt}");
        stream_reply(&engine, tokens, &sampling, &args.sampling)?;
        println!();
        return Ok(());
    }
    let template = model_chat_template(engine.model())?;
    let mut history = Vec::new();
    if let Some(system) = &args.system {
        history.push(json!({"role": "system", "content": system}));
    }
    match args.prompt.clone() {
        Some(prompt) => {
            history.push(json!({"role": "user", "content": prompt}));
            chat_turn(&engine, &template, &history, &sampling, &args)?;
            Ok(())
        }
        None => interactive(&engine, &template, history, &sampling, &args),
    }
}

/// `prompt_cache`: keep finished sequences' KV for the next prompt (a benchmark that repeats
/// one prompt must not, or it measures the cache instead of prefill).
pub fn start_engine(args: &EngineArgs, parallel: usize, prompt_cache: bool) -> Result<Engine> {
    let path = model_path::resolve(args.model.clone());
    let config = EngineConfig {
        parallel,
        context_per_slot: args.ctx_size,
        threads: args.threads.unwrap_or_else(hearth_engine::default_threads),
        kv_unified: args.kv_unified,
        flash_attention: args.flash_attn.engine(),
        cache_type_k: args.gpu.cache_type_k.engine(),
        cache_type_v: args.gpu.cache_type_v.engine(),
        prompt_cache,
        greedy_on_device: args.gpu.greedy_on_device == Switch::On,
        ..EngineConfig::default()
    };
    let model = Model::load(
        &path,
        &LoadOptions {
            placement: args.gpu.placement(),
            context: Some(config.context_shape()),
            ..LoadOptions::default()
        },
    )
    .with_context(|| {
        if args.model.is_none() {
            "the default model is missing; run ./scripts/fetch-model.sh first".to_owned()
        } else {
            format!("loading {}", path.display())
        }
    })?;
    Ok(Engine::start(Arc::new(model), config)?)
}

pub fn sampling_params(args: &SamplingArgs) -> SamplingParams {
    SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        frequency_penalty: args.frequency_penalty,
        presence_penalty: args.presence_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    }
}

fn interactive(
    engine: &Engine,
    template: &ChatTemplate,
    mut history: Vec<serde_json::Value>,
    sampling: &SamplingParams,
    args: &RunArgs,
) -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!(">>> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else {
            println!();
            return Ok(());
        };
        let line = line?;
        let message = line.trim();
        if message == "/exit" || message == "/bye" {
            return Ok(());
        }
        if message.is_empty() {
            continue;
        }
        history.push(json!({"role": "user", "content": message}));
        let reply = chat_turn(engine, template, &history, sampling, args)?;
        history.push(json!({"role": "assistant", "content": reply}));
    }
}

/// Render the conversation, stream the reply to stdout, and return it.
fn chat_turn(
    engine: &Engine,
    template: &ChatTemplate,
    history: &[serde_json::Value],
    sampling: &SamplingParams,
    args: &RunArgs,
) -> Result<String> {
    let prompt = template.render(&TemplateInput {
        messages: history.to_vec(),
        tools: None,
        add_generation_prompt: true,
    })?;
    if args.show_prompt {
        eprintln!("{prompt}");
    }
    let tokens = engine.model().tokenize(&prompt, false, true);
    let reply = stream_reply(engine, tokens, sampling, &args.sampling)?;
    println!();
    Ok(reply)
}

fn stream_reply(
    engine: &Engine,
    prompt: Vec<u32>,
    sampling: &SamplingParams,
    args: &SamplingArgs,
) -> Result<String> {
    // A long conversation may leave less room than --max-tokens: the reply then ends when
    // the context is full (the server refuses such a request instead; here we are the client).
    let room = (engine.config().context_per_slot as usize).saturating_sub(prompt.len());
    let handle = engine.submit(GenerationRequest {
        prompt,
        sampling: sampling.clone(),
        max_tokens: Some(args.max_tokens.min(room.max(1))),
        stop: args.stop.clone(),
        ..GenerationRequest::default()
    })?;
    let mut stdout = std::io::stdout();
    let mut reply = String::new();
    for event in handle.events.iter() {
        match event {
            Event::Delta { text, .. } => {
                stdout.write_all(text.as_bytes())?;
                stdout.flush()?;
                reply.push_str(&text);
            }
            Event::Done { finish_reason, .. } => {
                if finish_reason == FinishReason::Length {
                    eprint!(" [reply cut at --max-tokens]");
                }
                break;
            }
            Event::Error(message) => anyhow::bail!(message),
        }
    }
    Ok(reply)
}
