//! Soak (issue #10): 2,000 mixed requests from 32 concurrent clients against one server
//! (`--parallel 8`): chat and completions, streaming and not, `n: 2`, JSON mode, streams the
//! client abandons after their first chunk, and bad input.
//!
//! Every request gets exactly one terminal outcome (client side: one response, a stream with
//! exactly one `[DONE]` and one finish per choice; server side: exactly one access-log line
//! per request id, and `hearth:request_success_total` moved by exactly the choices that
//! finished), and neither the orchestrator's nor the worker's resident memory grows by 5 %
//! or more from after a warm-up of 500 requests to the end.
//!
//! `HEARTH_SOAK_REQUESTS` changes the count (default 2000).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CLIENTS: usize = 32;
/// Requests before the first RSS reading. The orchestrator's heap reaches its plateau only
/// after a few hundred requests (measured: +500 KiB of ~11.7 MB over the first ~600
/// generation requests, then +20 KiB over the next 2,500), so a 200-request warm-up puts
/// allocator warm-up, not leaks, right at the 5 % line.
const WARM_UP: usize = 500;
const MAX_GROWTH: f64 = 0.05;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Chat,
    ChatStream,
    Completion,
    CompletionStream,
    ChatN2,
    CompletionN2Stream,
    Json,
    Cancelled,
    Bad,
}

impl Kind {
    fn of(index: usize) -> Kind {
        // A fixed rotation with a stride, so neighbours differ and every kind recurs.
        // Chat prompts cost five times a completion's (the template), so most requests
        // are completions: the budget is ≤ 180 s on two cores.
        const ALL: [Kind; 12] = [
            Kind::Chat,
            Kind::Completion,
            Kind::CompletionStream,
            Kind::Bad,
            Kind::ChatStream,
            Kind::CompletionN2Stream,
            Kind::Json,
            Kind::Cancelled,
            Kind::ChatN2,
            Kind::Completion,
            Kind::CompletionStream,
            Kind::Bad,
        ];
        ALL[(index * 7) % ALL.len()]
    }

    fn streaming(self) -> bool {
        matches!(
            self,
            Kind::ChatStream | Kind::CompletionStream | Kind::CompletionN2Stream | Kind::Cancelled
        )
    }
}

/// (path, body bytes, expected status, choices) for request `index`.
fn request(index: usize) -> (&'static str, Vec<u8>, u16, usize) {
    let kind = Kind::of(index);
    let max_tokens = 2 + (index * 5) % 5;
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": format!("{index}?")},
    ]);
    let chat = |extra: Value| {
        let mut body = json!({"model": "smol", "messages": messages, "max_tokens": max_tokens, "temperature": 0.7, "seed": index});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::to_vec(&body).unwrap()
    };
    let completion = |extra: Value| {
        let mut body = json!({"model": "smol", "prompt": format!("Number {index} is"), "max_tokens": max_tokens, "temperature": 0.7, "seed": index});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::to_vec(&body).unwrap()
    };
    const CHAT: &str = "/v1/chat/completions";
    const COMPLETIONS: &str = "/v1/completions";
    match kind {
        Kind::Chat => (CHAT, chat(json!({})), 200, 1),
        Kind::ChatStream => (
            CHAT,
            chat(
                json!({"stream": true, "stream_options": {"include_usage": index.is_multiple_of(2)}}),
            ),
            200,
            1,
        ),
        Kind::Completion => (COMPLETIONS, completion(json!({})), 200, 1),
        Kind::CompletionStream => (COMPLETIONS, completion(json!({"stream": true})), 200, 1),
        Kind::ChatN2 => (CHAT, chat(json!({"n": 2})), 200, 2),
        Kind::CompletionN2Stream => (
            COMPLETIONS,
            completion(json!({"n": 2, "stream": true})),
            200,
            2,
        ),
        Kind::Json => (
            COMPLETIONS,
            completion(json!({"response_format": {"type": "json_object"}, "max_tokens": 8})),
            200,
            1,
        ),
        // Long enough that it is still generating when the client hangs up.
        Kind::Cancelled => (
            COMPLETIONS,
            completion(
                json!({"stream": true, "max_tokens": 200, "logit_bias": {"0": -100, "1": -100, "2": -100}}),
            ),
            200,
            1,
        ),
        Kind::Bad => match index % 5 {
            0 => (CHAT, chat(json!({"temperature": 5})), 400, 0),
            1 => (CHAT, chat(json!({"n": 0})), 400, 0),
            2 => (
                CHAT,
                b"{\"model\": \"smol\", \"messages\": [".to_vec(),
                400,
                0,
            ),
            3 => (COMPLETIONS, completion(json!({"prompt": []})), 400, 0),
            _ => (CHAT, chat(json!({"model": "nope"})), 404, 0),
        },
    }
}

#[derive(Debug)]
struct Outcome {
    index: usize,
    kind: Kind,
    status: u16,
    /// Choices that finished (with a finish_reason).
    finished_choices: usize,
    problem: Option<String>,
}

fn check_error(text: &str) -> Result<(), String> {
    let body: Value =
        serde_json::from_str(text).map_err(|_| format!("error body not JSON: {text}"))?;
    let e = &body["error"];
    if e["message"].is_string()
        && e["type"].is_string()
        && e.get("param").is_some()
        && e.get("code").is_some()
    {
        Ok(())
    } else {
        Err(format!("not an OpenAI error: {text}"))
    }
}

/// Read an SSE body to its end: every choice finishes exactly once, one `[DONE]` last, one
/// completion id throughout, no error event.
fn check_stream(reader: impl std::io::Read, choices: usize) -> Result<usize, String> {
    let mut finished = vec![0usize; choices];
    let mut ids = std::collections::HashSet::new();
    let mut done = 0;
    let mut after_done = 0;
    for line in BufReader::new(reader).lines() {
        let line = line.map_err(|e| format!("stream broke: {e}"))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if done > 0 {
            after_done += 1;
        }
        if data == "[DONE]" {
            done += 1;
            continue;
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("bad event ({e}): {data}"))?;
        if chunk.get("error").is_some() {
            return Err(format!("error event: {data}"));
        }
        ids.insert(chunk["id"].as_str().unwrap_or_default().to_owned());
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let i = choice["index"].as_u64().unwrap_or(u64::MAX) as usize;
            if i >= choices {
                return Err(format!("choice index {i} of {choices}"));
            }
            if choice["finish_reason"].is_string() {
                finished[i] += 1;
            }
        }
    }
    if done != 1 || after_done != 0 {
        return Err(format!("{done} [DONE], {after_done} events after it"));
    }
    if ids.len() != 1 {
        return Err(format!("completion ids {ids:?}"));
    }
    if finished.iter().any(|&f| f != 1) {
        return Err(format!("finishes per choice {finished:?}"));
    }
    Ok(choices)
}

fn run_one(agent: &ureq::Agent, base: &str, index: usize) -> Outcome {
    let kind = Kind::of(index);
    let (path, body, expected, choices) = request(index);
    let id = format!("soak-{index}");
    let mut outcome = Outcome {
        index,
        kind,
        status: 0,
        finished_choices: 0,
        problem: None,
    };
    let result = agent
        .post(&format!("{base}{path}"))
        .set("content-type", "application/json")
        .set("x-request-id", &id)
        .send_bytes(&body);
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            outcome.status = code;
            let text = r.into_string().unwrap_or_default();
            if code != expected {
                outcome.problem = Some(format!("status {code}, expected {expected}: {text}"));
            } else if let Err(e) = check_error(&text) {
                outcome.problem = Some(e);
            }
            return outcome;
        }
        Err(e) => {
            outcome.problem = Some(format!("transport error: {e}"));
            return outcome;
        }
    };
    outcome.status = response.status();
    if response.status() != expected {
        outcome.problem = Some(format!("status {}, expected {expected}", response.status()));
        return outcome;
    }
    if response.header("x-request-id") != Some(id.as_str()) {
        outcome.problem = Some(format!(
            "x-request-id {:?}",
            response.header("x-request-id")
        ));
        return outcome;
    }
    if kind == Kind::Cancelled {
        // Read the first event, then hang up (the reader is dropped unread: ureq closes the
        // connection rather than reuse it).
        let mut reader = BufReader::new(response.into_reader());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.starts_with("data: ") {
                break;
            }
            line.clear();
        }
        if !line.starts_with("data: ") {
            outcome.problem = Some("no first event".into());
        }
        return outcome;
    }
    if kind.streaming() {
        match check_stream(response.into_reader(), choices) {
            Ok(n) => outcome.finished_choices = n,
            Err(e) => outcome.problem = Some(e),
        }
        return outcome;
    }
    let text = response.into_string().unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let list = body["choices"].as_array().cloned().unwrap_or_default();
    if list.len() != choices || list.iter().any(|c| !c["finish_reason"].is_string()) {
        outcome.problem = Some(format!("malformed answer: {text}"));
    } else {
        outcome.finished_choices = choices;
    }
    outcome
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn settled(server: &Server) -> bool {
    let ready = send("GET", &server.url("/health/ready"), &[], None);
    let smol = &ready.json()["models"]["smol"];
    ready.status == 200
        && smol["running"] == 0
        && smol["waiting"] == 0
        && server.metric("hearth:num_requests_running", "model=\"smol\"") == 0.0
}

fn successes(server: &Server) -> f64 {
    server.metric_sum("hearth:request_success_total")
}

/// Resident memory of (orchestrator, worker) as requests complete, for the summary.
type Samples = Arc<Mutex<Vec<(usize, u64, u64)>>>;

/// Run requests `range` from `CLIENTS` threads; outcomes in index order. Every 400th
/// completed request samples both processes' RSS.
fn run(
    server: &Server,
    range: std::ops::Range<usize>,
    pids: (u32, u32),
    samples: &Samples,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let next = next.clone();
            let outcomes = outcomes.clone();
            let base = server.base.clone();
            let end = range.end;
            let samples = samples.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    if index >= end {
                        break;
                    }
                    let outcome = run_one(&agent, &base, index);
                    let done = {
                        let mut outcomes = outcomes.lock().unwrap();
                        outcomes.push(outcome);
                        outcomes.len()
                    };
                    if done % 400 == 0 {
                        let sample = (index, rss_kib(pids.0), rss_kib(pids.1));
                        samples.lock().unwrap().push(sample);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    outcomes.sort_by_key(|o| o.index);
    outcomes
}

#[test]
fn soak_mixed_requests_at_concurrency_32() {
    let total: usize = std::env::var("HEARTH_SOAK_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
        .max(WARM_UP + 1);
    let server = Server::start(&["--preload", "--parallel", "8"]);
    let orchestrator = server.pid();
    let worker = server.worker_pid("smol").unwrap();
    let started = Instant::now();
    let successes_before = successes(&server);

    let samples: Samples = Arc::default();
    let mut outcomes = run(&server, 0..WARM_UP, (orchestrator, worker), &samples);
    wait_until("the warm-up to settle", Duration::from_secs(30), || {
        settled(&server)
    });
    let rss_before = (rss_kib(orchestrator), rss_kib(worker));
    let warm_up_time = started.elapsed();

    outcomes.extend(run(
        &server,
        WARM_UP..total,
        (orchestrator, worker),
        &samples,
    ));
    wait_until("the soak to settle", Duration::from_secs(30), || {
        settled(&server)
    });
    let rss_after = (rss_kib(orchestrator), rss_kib(worker));
    let elapsed = started.elapsed();

    let mut problems: Vec<String> = Vec::new();
    // Client side: every request exactly once, with the outcome its kind calls for.
    if outcomes.len() != total || outcomes.iter().enumerate().any(|(i, o)| o.index != i) {
        problems.push(format!("{} outcomes for {total} requests", outcomes.len()));
    }
    for o in &outcomes {
        if let Some(p) = &o.problem {
            problems.push(format!("request {} ({:?}): {p}", o.index, o.kind));
        }
    }
    // Server side: one access line per request id, and success counted once per choice.
    let mut lines_per_id: HashMap<String, usize> = HashMap::new();
    for line in server.stderr_lines.lock().unwrap().iter() {
        if let Some(rest) = line.split("request_id=soak-").nth(1) {
            let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
            *lines_per_id.entry(id).or_default() += 1;
        }
    }
    for index in 0..total {
        let n = lines_per_id.get(&index.to_string()).copied().unwrap_or(0);
        if n != 1 {
            problems.push(format!("request {index}: {n} access-log lines"));
        }
    }
    let finished: usize = outcomes.iter().map(|o| o.finished_choices).sum();
    let counted = successes(&server) - successes_before;
    if counted != finished as f64 {
        problems.push(format!(
            "hearth:request_success_total moved by {counted}, {finished} choices finished"
        ));
    }
    if server.worker_pid("smol") != Some(worker) {
        problems.push("the worker was replaced during the soak".into());
    }

    // Summary.
    let mut table: BTreeMap<(Kind, u16, bool), usize> = BTreeMap::new();
    for o in &outcomes {
        *table
            .entry((o.kind, o.status, o.problem.is_none()))
            .or_default() += 1;
    }
    println!("{total} requests, {CLIENTS} clients, {elapsed:.1?} (warm-up {warm_up_time:.1?})");
    println!("{:<20} {:>6} {:>4} {:>6}", "kind", "status", "ok", "count");
    for ((kind, status, ok), count) in &table {
        println!(
            "{:<20} {status:>6} {:>4} {count:>6}",
            format!("{kind:?}"),
            if *ok { "yes" } else { "NO" }
        );
    }
    let trajectory: Vec<String> = samples
        .lock()
        .unwrap()
        .iter()
        .map(|(i, o, w)| format!("~{i}: {o}/{w}"))
        .collect();
    println!(
        "RSS KiB (orchestrator/worker) while running: {}",
        trajectory.join(", ")
    );
    let growth = |before: u64, after: u64| (after as f64 - before as f64) / before.max(1) as f64;
    for (name, before, after) in [
        ("orchestrator", rss_before.0, rss_after.0),
        ("worker", rss_before.1, rss_after.1),
    ] {
        let g = growth(before, after);
        println!(
            "{name:<12} RSS after warm-up {before:>8} KiB, at the end {after:>8} KiB ({:+.2} %)",
            g * 100.0
        );
        if g >= MAX_GROWTH {
            problems.push(format!(
                "{name} RSS grew {:.1} % ({before} -> {after} KiB)",
                g * 100.0
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems
            .iter()
            .take(50)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
