//! Fault injection (issue #10): under 16 concurrent streams, the worker is killed (`kill -9`)
//! or frozen (`SIGSTOP`) at a random moment, round after round.
//!
//! Every request must end with its complete output or a clean error (an OpenAI error body,
//! or one SSE `data: {"error": ...}` event and the end of the stream): within 1 s of a
//! kill, within the hang deadline + 1 s of a freeze, and never hang. A request that had
//! produced no token when its worker was killed is retried on the new worker and succeeds.
//! After each round nothing leaked (`/health/ready`, `hearth:num_requests_running` and
//! `hearth:num_requests_waiting` back to 0) and the next request is served.
//!
//! The schedule is random but reproducible: the seed is printed, and
//! `HEARTH_FAULT_SEED=<seed>` replays it; `HEARTH_FAULT_ROUNDS` runs more rounds.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const STREAMS: usize = 16;
const PARALLEL: &str = "8";
/// `--hang-timeout` and `--ping-interval`: a frozen worker is noticed within
/// HANG + PING + the 1 s ping timeout.
const HANG: f64 = 2.0;
const PING: f64 = 0.5;
const REQUEST_TIMEOUT: u64 = 15;

fn stop_deadline() -> Duration {
    Duration::from_secs_f64(HANG + PING + 1.0)
}

/// SplitMix64: a seeded schedule without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Kill,
    /// SIGSTOP; SIGCONT after the deadline, or never.
    Stop {
        resume: bool,
    },
}

#[derive(Debug, Default)]
struct Outcome {
    /// HTTP status (0: no response at all).
    status: u16,
    /// Content-bearing events received, and when the first one came.
    content_events: usize,
    first_content: Option<Instant>,
    /// Every choice finished and one `[DONE]` closed the stream.
    complete: bool,
    /// A well-formed OpenAI error (body or final SSE event).
    clean_error: Option<String>,
    /// What was wrong, if neither.
    problem: Option<String>,
    ended: Option<Instant>,
}

fn request_body(rng: &mut Rng, index: usize) -> (&'static str, Value) {
    let n = if index.is_multiple_of(3) { 2 } else { 1 };
    let max_tokens = 4 + rng.below(10);
    let seed = rng.next() % 1000;
    // No end-of-text: streams run to max_tokens, so a fault lands mid-stream.
    let bias = json!({"0": -100, "1": -100, "2": -100});
    if index % 4 == 1 {
        (
            "/v1/completions",
            json!({
                "model": "smol", "prompt": "Bread is", "max_tokens": max_tokens,
                "n": n, "stream": true, "temperature": 0.8, "seed": seed, "logit_bias": bias,
            }),
        )
    } else {
        let mut body = json!({
            "model": "smol",
            // A system message of our own keeps the template's long default one out.
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": format!("Bread, part {index}?")},
            ],
            "max_tokens": max_tokens, "n": n, "stream": true, "temperature": 0.8, "seed": seed,
            "logit_bias": bias,
        });
        if index.is_multiple_of(5) {
            body["stream_options"] = json!({"include_usage": true});
        }
        ("/v1/chat/completions", body)
    }
}

fn has_content(chunk: &Value) -> bool {
    chunk["choices"].as_array().is_some_and(|choices| {
        choices.iter().any(|c| {
            c["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
                || c["text"].as_str().is_some_and(|t| !t.is_empty())
        })
    })
}

fn error_shape(body: &Value) -> Result<String, String> {
    let error = &body["error"];
    let ok = error["message"].is_string()
        && error["type"].is_string()
        && (error["param"].is_string() || error["param"].is_null())
        && (error["code"].is_string() || error["code"].is_null())
        && error.get("param").is_some()
        && error.get("code").is_some();
    if ok {
        Ok(format!(
            "{} {}",
            error["code"].as_str().unwrap_or("-"),
            error["message"].as_str().unwrap_or_default()
        ))
    } else {
        Err(format!("not an OpenAI error: {body}"))
    }
}

/// Run one streaming request to its end, noting when things happened.
fn run_stream(url: &str, body: &Value, choices: usize) -> Outcome {
    let mut outcome = Outcome::default();
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(REQUEST_TIMEOUT + 10))
        .build();
    let response = match agent.post(url).send_json(body.clone()) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            outcome.status = code;
            let text = r.into_string().unwrap_or_default();
            match serde_json::from_str::<Value>(&text)
                .map_err(|e| e.to_string())
                .and_then(|v| error_shape(&v))
            {
                Ok(e) => outcome.clean_error = Some(e),
                Err(e) => outcome.problem = Some(format!("{code}: {e}: {text}")),
            }
            outcome.ended = Some(Instant::now());
            return outcome;
        }
        Err(e) => {
            outcome.problem = Some(format!("transport error before a response: {e}"));
            outcome.ended = Some(Instant::now());
            return outcome;
        }
    };
    outcome.status = response.status();
    let mut reader = BufReader::new(response.into_reader());
    let mut finished = vec![false; choices];
    let mut done = 0;
    let mut error: Option<String> = None;
    let mut after_end = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                outcome.problem = Some(format!(
                    "stream broke after {} content events: {e}",
                    outcome.content_events
                ));
                break;
            }
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        if done > 0 || error.is_some() {
            after_end.push(data.to_owned());
            continue;
        }
        if data == "[DONE]" {
            done += 1;
            continue;
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                outcome.problem = Some(format!("event is not JSON ({e}): {data}"));
                continue;
            }
        };
        if chunk.get("error").is_some() {
            match error_shape(&chunk) {
                Ok(e) => error = Some(e),
                Err(e) => outcome.problem = Some(e),
            }
            continue;
        }
        if has_content(&chunk) {
            outcome.content_events += 1;
            outcome.first_content.get_or_insert_with(Instant::now);
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            if choice["finish_reason"].is_string() {
                if let Some(f) = choice["index"]
                    .as_u64()
                    .and_then(|i| finished.get_mut(i as usize))
                {
                    *f = true;
                }
            }
        }
    }
    outcome.ended = Some(Instant::now());
    if outcome.problem.is_some() {
        return outcome;
    }
    if !after_end.is_empty() {
        outcome.problem = Some(format!("events after the end: {after_end:?}"));
    } else if let Some(e) = error {
        outcome.clean_error = Some(e);
    } else if done == 1 && finished.iter().all(|f| *f) {
        outcome.complete = true;
    } else {
        outcome.problem = Some(format!(
            "stream ended without [DONE] or an error (done {done}, finished {finished:?}, {} content events)",
            outcome.content_events
        ));
    }
    outcome
}

fn signal(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn hello(server: &Server) -> (u16, Value) {
    server.post(
        "/v1/chat/completions",
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    )
}

/// Nothing running, nothing queued, the worker answers.
fn settled(server: &Server) -> Result<(), String> {
    let ready = send("GET", &server.url("/health/ready"), &[], None);
    let body = ready.json();
    let smol = &body["models"]["smol"];
    let running = server.metric("hearth:num_requests_running", "model=\"smol\"");
    let waiting: f64 = ["high", "low", "normal"]
        .iter()
        .map(|p| {
            server.metric(
                "hearth:num_requests_waiting",
                &format!("model=\"smol\",priority=\"{p}\""),
            )
        })
        .sum();
    let queued: u64 = ["high", "normal", "low"]
        .iter()
        .map(|p| smol["queued"][p].as_u64().unwrap_or(0))
        .sum();
    let busy = smol["running"].as_u64().unwrap_or(0) + smol["waiting"].as_u64().unwrap_or(0);
    if ready.status == 200 && running == 0.0 && waiting == 0.0 && queued == 0 && busy == 0 {
        Ok(())
    } else {
        Err(format!(
            "ready {} running {running} waiting {waiting} queued {queued} worker busy {busy}: {body}",
            ready.status
        ))
    }
}

#[test]
fn workers_killed_or_frozen_under_load() {
    let seed: u64 = std::env::var("HEARTH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let rounds: usize = std::env::var("HEARTH_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("fault injection: seed {seed} (HEARTH_FAULT_SEED={seed} replays it), {rounds} rounds");
    let mut rng = Rng(seed);
    let (hang, ping, timeout) = (
        HANG.to_string(),
        PING.to_string(),
        REQUEST_TIMEOUT.to_string(),
    );
    let server = Server::start(&[
        "--preload",
        "--parallel",
        PARALLEL,
        "--hang-timeout",
        &hang,
        "--ping-interval",
        &ping,
        "--request-timeout",
        &timeout,
    ]);
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    for round in 0..rounds {
        let fault = if rng.below(2) == 0 {
            Fault::Kill
        } else {
            Fault::Stop {
                resume: rng.below(2) == 0,
            }
        };
        // Early faults catch requests before their first token (queued or in prefill).
        let delay = Duration::from_millis(if rng.below(3) == 0 {
            rng.below(300)
        } else {
            rng.below(2000)
        });
        let bodies: Vec<(&str, Value)> = (0..STREAMS).map(|i| request_body(&mut rng, i)).collect();
        wait_until("a worker before the round", Duration::from_secs(30), || {
            server.worker_pid("smol").is_some()
        });
        let pid = server.worker_pid("smol").unwrap();

        let barrier = Arc::new(Barrier::new(STREAMS + 1));
        let handles: Vec<_> = bodies
            .iter()
            .map(|(path, body)| {
                let url = server.url(path);
                let body = body.clone();
                let choices = body["n"].as_u64().unwrap_or(1) as usize;
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    run_stream(&url, &body, choices)
                })
            })
            .collect();
        barrier.wait();
        let round_start = Instant::now();
        std::thread::sleep(delay);
        let fault_at = Instant::now();
        match fault {
            Fault::Kill => signal(pid, Signal::SIGKILL),
            Fault::Stop { .. } => signal(pid, Signal::SIGSTOP),
        }
        if let Fault::Stop { resume: true } = fault {
            std::thread::sleep(stop_deadline() + Duration::from_millis(500));
            signal(pid, Signal::SIGCONT);
        }
        let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();

        let limit = match fault {
            Fault::Kill => Duration::from_secs(1),
            Fault::Stop { .. } => stop_deadline() + Duration::from_secs(1),
        };
        let mut counts = [0usize; 4]; // complete, failed with tokens, failed without, bad
        let mut slowest_error = Duration::ZERO;
        for (i, outcome) in outcomes.iter().enumerate() {
            let what = format!("round {round} ({fault:?} at {delay:?}), request {i}");
            let ended = outcome.ended.unwrap_or_else(Instant::now);
            let after_fault = ended.saturating_duration_since(fault_at);
            if outcome.complete {
                counts[0] += 1;
                // A retried request runs again from the start; it still may not hang.
                if after_fault > Duration::from_secs(REQUEST_TIMEOUT + 1) {
                    failures.push(format!("{what}: completed {after_fault:?} after the fault"));
                }
            } else if let Some(error) = &outcome.clean_error {
                if outcome.content_events == 0 {
                    counts[2] += 1;
                    if fault == Fault::Kill {
                        failures.push(format!(
                            "{what}: failed although it had produced no token, so it should have been retried: {error}"
                        ));
                    }
                } else {
                    counts[1] += 1;
                }
                slowest_error = slowest_error.max(after_fault);
                if after_fault > limit {
                    failures.push(format!(
                        "{what}: its error came {after_fault:?} after the fault (limit {limit:?}): {error}"
                    ));
                }
                if ended < fault_at {
                    failures.push(format!("{what}: failed before the fault: {error}"));
                }
            } else {
                counts[3] += 1;
                failures.push(format!(
                    "{what}: {} (status {}, {after_fault:?} after the fault)",
                    outcome.problem.as_deref().unwrap_or("no outcome"),
                    outcome.status
                ));
            }
        }
        // Nothing leaked: counters back to zero, the worker replaced and serving.
        let settle = Instant::now();
        while let Err(e) = settled(&server) {
            if settle.elapsed() > Duration::from_secs(15) {
                failures.push(format!("round {round}: never settled: {e}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, body) = hello(&server);
        if status != 200 {
            failures.push(format!(
                "round {round}: the next request got {status}: {body}"
            ));
        }
        if server.worker_pid("smol") == Some(pid) {
            failures.push(format!("round {round}: worker {pid} was not replaced"));
        }
        // The worker may report the finished sequence for a moment longer.
        let settle = Instant::now();
        while let Err(e) = settled(&server) {
            if settle.elapsed() > Duration::from_secs(5) {
                failures.push(format!(
                    "round {round}: not settled after the next request: {e}"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!(
            "round {round:2}: {fault:?} at {delay:>4?}: complete {:2}, failed after tokens {:2}, failed before any {:2}, bad {}; slowest error {slowest_error:.2?}; round {:.1?}",
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            round_start.elapsed()
        );
    }
    let restarts: f64 = send("GET", &server.url("/metrics"), &[], None)
        .text
        .lines()
        .filter(|l| l.starts_with("hearth:worker_restarts_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!(
        "{rounds} rounds in {:.1?}; hearth:worker_restarts_total {restarts}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
