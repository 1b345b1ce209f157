//! `hearth bench`: prefill and decode throughput of the engine, printed as a table.
//!
//! Shaped like llama.cpp's tools so the numbers compare: prefill is `pp` (one prompt of N
//! tokens), decode is `tg` after that prompt, and aggregate decode at several concurrent
//! sequences is llama-batched-bench's S_TG.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hearth_engine::{Engine, Event, GenerationRequest, OutputFormat, SamplingParams, StepTimes};

use crate::cli::BenchArgs;
use crate::http_bench;
use crate::run_cmd::start_engine;

/// Text the synthetic prompts are cut from.
const PROMPT_SEED: &str = "The history of bread begins in the Neolithic, when people first \
    ground wild grains between stones and baked the paste on hot rocks. ";

pub fn run(mut args: BenchArgs) -> Result<()> {
    if args.concurrency.contains(&0) || args.repeat == 0 {
        bail!("--concurrency values and --repeat must be positive");
    }
    let parallel = args.concurrency.iter().copied().max().unwrap_or(1);
    args.engine.ctx_size = (args.prompt_tokens + args.gen_tokens + 16) as u32;
    let engine = start_engine(&args.engine, parallel, false)?;
    let prompt = synthetic_prompt(&engine, args.prompt_tokens);
    let threads = engine.config().threads;

    // Warm caches and pages before timing anything.
    measure(&engine, &prompt[..prompt.len().min(16)], 1, 8)?;

    let prefill = median((0..args.repeat).map(|_| {
        measure(&engine, &prompt, 1, 1)
            .map(|r| args.prompt_tokens as f64 / r.first_token.as_secs_f64())
    }))?;
    let sampled = if args.temperature > 0.0 {
        format!(
            " | decode sampled at temperature {} top_p {}",
            args.temperature, args.top_p
        )
    } else {
        String::new()
    };
    println!(
        "hearth bench: {} | threads {threads} | prompt {} tokens | {} generated tokens per sequence{sampled}\n",
        engine.model().info().path.display(),
        args.prompt_tokens,
        args.gen_tokens
    );
    println!("| test | tok/s |");
    println!("|---|---:|");
    println!("| prefill pp{} | {prefill:.1} |", args.prompt_tokens);
    let mut phases = Vec::new();
    for &n in &args.concurrency {
        let run = median((0..args.repeat).map(|_| {
            let sampling = Sampling::Random {
                temperature: args.temperature,
                top_p: args.top_p,
            };
            measure_with(&engine, &prompt, n, args.gen_tokens, None, sampling)
        }))?;
        let label = if n == 1 {
            format!("decode tg{} (1 sequence)", args.gen_tokens)
        } else {
            format!("aggregate decode, {n} sequences")
        };
        println!("| {label} | {:.1} |", run.decode_rate);
        phases.push((n, run));
    }
    // Structured output: a JSON array long enough that the grammar never ends early.
    let schema = serde_json::json!({
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 999},
        "minItems": 1000
    });
    let format = Some(OutputFormat::JsonSchema(schema));
    // Alternate the two so drift in the machine's speed hits both alike.
    let (mut free, mut constrained) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(3) {
        free.push(measure(&engine, &prompt, 1, args.gen_tokens)?.decode_rate);
        constrained.push(
            measure_with(
                &engine,
                &prompt,
                1,
                args.gen_tokens,
                format.clone(),
                Sampling::Greedy,
            )?
            .decode_rate,
        );
    }
    let free = median(free.into_iter().map(Ok))?;
    let constrained = median(constrained.into_iter().map(Ok))?;
    println!(
        "| decode tg{} with a json_schema (1 sequence) | {constrained:.1} ({:.3}x of {free:.1} unconstrained) |",
        args.gen_tokens,
        constrained / free
    );
    // Where a step's time goes: the model (decode, and on a GPU the wait for it) against
    // hearth's own host work around it.
    println!("\nper step, µs (median run; prefill steps included):\n");
    println!("| sequences | steps | build | decode | wait | sample | emit | host share |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, run) in &phases {
        let t = &run.phases;
        let per = |ns: u64| ns as f64 / 1e3 / run.steps.max(1) as f64;
        let host = t.build_ns + t.sample_ns + t.emit_ns;
        println!(
            "| {n} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}% |",
            run.steps,
            per(t.build_ns),
            per(t.decode_ns),
            per(t.wait_ns),
            per(t.sample_ns),
            per(t.emit_ns),
            100.0 * host as f64 / t.total_ns().max(1) as f64
        );
    }
    if args.http {
        let alone = Run::medians(
            (0..args.repeat)
                .map(|_| measure(&engine, &prompt, 1, args.gen_tokens))
                .collect::<Result<Vec<_>>>()?,
        );
        let eog = engine.model().info().eog_tokens.clone();
        let model_path = engine.model().info().path.clone();
        drop(engine);
        let through = http_bench::measure(&model_path, threads, &prompt, &eog, &args)?;
        println!("\nsingle stream, engine alone vs through `hearth serve` (HTTP streaming, /v1/completions):\n");
        println!("| path | time to first token (ms) | decode tok/s |");
        println!("|---|---:|---:|");
        println!(
            "| engine in-process | {:.1} | {:.1} |",
            alone.first_token.as_secs_f64() * 1e3,
            alone.decode_rate
        );
        println!(
            "| HTTP stream via orchestrator + worker | {:.1} | {:.1} |",
            through.first_token.as_secs_f64() * 1e3,
            through.decode_rate
        );
        println!(
            "\nratio decode {:.3}x, TTFT overhead {:+.1} ms",
            through.decode_rate / alone.decode_rate,
            (through.first_token.as_secs_f64() - alone.first_token.as_secs_f64()) * 1e3
        );
    }
    Ok(())
}

fn synthetic_prompt(engine: &Engine, n: usize) -> Vec<u32> {
    let model = engine.model();
    let mut tokens = Vec::new();
    while tokens.len() < n {
        tokens.extend(model.tokenize(PROMPT_SEED, false, false));
    }
    tokens.truncate(n);
    tokens
}

pub struct Run {
    /// Time to the first token of one sequence (prefill plus one sample).
    pub first_token: Duration,
    /// Tokens per second over all sequences while every one of them is decoding (from the
    /// last one's first token to the first one's end).
    pub decode_rate: f64,
    /// Engine steps taken, and the time they spent in each phase (in-process runs only).
    pub steps: u64,
    pub phases: StepTimes,
}

/// Run `n` identical-length sequences to `gen` tokens each, end-of-turn suppressed.
fn measure(engine: &Engine, prompt: &[u32], n: usize, gen: usize) -> Result<Run> {
    measure_with(engine, prompt, n, gen, None, Sampling::Greedy)
}

/// How the measured sequences choose tokens.
#[derive(Clone, Copy)]
enum Sampling {
    Greedy,
    /// Temperature 0 here is greedy too.
    Random {
        temperature: f32,
        top_p: f32,
    },
}

/// As `measure`, with every sequence constrained to `format`.
fn measure_with(
    engine: &Engine,
    prompt: &[u32],
    n: usize,
    gen: usize,
    format: Option<OutputFormat>,
    how: Sampling,
) -> Result<Run> {
    let mut sampling = SamplingParams::greedy();
    if let Sampling::Random { temperature, top_p } = how {
        sampling.temperature = temperature;
        sampling.top_p = top_p;
    }
    for &eog in &engine.model().info().eog_tokens {
        sampling.logit_bias.insert(eog, -100.0);
    }
    let (tx, rx) = mpsc::channel::<(usize, Instant, Event)>();
    let before = engine.stats();
    let start = Instant::now();
    for i in 0..n {
        let tx = tx.clone();
        engine.submit_with_sink(
            GenerationRequest {
                prompt: prompt.to_vec(),
                sampling: SamplingParams {
                    // Each sequence its own seed: same run, same tokens.
                    seed: Some(i as u64),
                    ..sampling.clone()
                },
                max_tokens: Some(gen),
                stop: vec![],
                format: format.clone(),
                ..GenerationRequest::default()
            },
            Box::new(move |event| tx.send((i, Instant::now(), event)).is_ok()),
        )?;
    }
    drop(tx);
    let mut first: Vec<Option<Instant>> = vec![None; n];
    let mut tokens_at: Vec<Instant> = Vec::new();
    let mut first_done: Option<Instant> = None;
    let mut done = 0;
    while done < n {
        let (i, at, event) = rx.recv()?;
        match event {
            Event::Delta { tokens, .. } => {
                if first[i].is_none() {
                    first[i] = Some(at);
                }
                tokens_at.extend(std::iter::repeat_n(at, tokens.len()));
            }
            Event::Done { .. } => {
                done += 1;
                first_done.get_or_insert(at);
            }
            Event::Error(e) => bail!(e),
        }
    }
    // The rate while all `n` sequences decode, as llama-batched-bench's S_TG (its sequences
    // start and end together): from the last one's first token to the first one's end.
    // Prompts are prefilled a batch at a time, so the first sequences start decoding (and
    // end) a few steps before the last; those steps run fewer than `n`.
    let first_token = first.iter().flatten().min().copied().unwrap_or(start) - start;
    let all_decoding = first.iter().flatten().max().copied().unwrap_or(start);
    let last_token = tokens_at.iter().max().copied().unwrap_or(all_decoding);
    // A run too short for any step with all `n` decoding (the first sequence ended before
    // the last started) falls back to the last sequence's first token to the last token.
    let end = first_done
        .filter(|&done| done > all_decoding)
        .unwrap_or(last_token)
        .min(last_token);
    let after = tokens_at
        .iter()
        .filter(|&&t| t > all_decoding && t <= end)
        .count();
    let span = (end - all_decoding).as_secs_f64();
    let decode_rate = if span > 0.0 { after as f64 / span } else { 0.0 };
    let stats = engine.stats();
    Ok(Run {
        first_token,
        decode_rate,
        steps: stats.steps - before.steps,
        phases: stats.step_times.since(&before.step_times),
    })
}

/// The median of repeated runs (by value, or for `Run`s by decode rate).
fn median<T: Median>(values: impl Iterator<Item = Result<T>>) -> Result<T> {
    let mut values = values.collect::<Result<Vec<_>>>()?;
    values.sort_by(|a, b| a.key().total_cmp(&b.key()));
    Ok(values.swap_remove(values.len() / 2))
}

trait Median {
    fn key(&self) -> f64;
}

impl Median for f64 {
    fn key(&self) -> f64 {
        *self
    }
}

impl Run {
    /// Median time to first token and median decode rate, each over all runs.
    pub fn medians(runs: Vec<Run>) -> Run {
        let mut ttft: Vec<Duration> = runs.iter().map(|r| r.first_token).collect();
        let mut rates: Vec<f64> = runs.iter().map(|r| r.decode_rate).collect();
        ttft.sort();
        rates.sort_by(f64::total_cmp);
        Run {
            first_token: ttft[ttft.len() / 2],
            decode_rate: rates[rates.len() / 2],
            steps: 0,
            phases: StepTimes::default(),
        }
    }
}

impl Median for Run {
    fn key(&self) -> f64 {
        self.decode_rate
    }
}
