//! Admission: the priority queue in front of a busy worker (order, timeouts, depth limits,
//! clients that give up), API keys, rate limits, CORS, body limits, request ids, and the
//! Prometheus metrics that describe all of it. Every test runs the real default model.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A streaming request that holds the model's only slot until dropped (the hang-up cancels
/// it). It asks for far more tokens than the test needs and may not end early.
struct Blocker {
    _reader: Box<dyn Read + Send + Sync>,
}

fn block(server: &Server) -> Blocker {
    let response = ureq::post(&server.url("/v1/completions"))
        .send_json(json!({
            "model": "smol",
            "prompt": "Once upon a time",
            "max_tokens": 900,
            "logit_bias": {"0": -100, "1": -100, "2": -100},
            "stream": true,
        }))
        .expect("the blocking request starts");
    // The response head comes back only once the request holds its slot.
    Blocker {
        _reader: response.into_reader(),
    }
}

fn short_completion() -> Value {
    json!({"model": "smol", "prompt": "The sky is", "max_tokens": 2})
}

fn completion_with_priority(server: &Server, priority: &str) -> Reply {
    send(
        "POST",
        &server.url("/v1/completions"),
        &[("x-priority", priority)],
        Some(&short_completion()),
    )
}

fn waiting(server: &Server, priority: &str) -> f64 {
    server.metric(
        "hearth:num_requests_waiting",
        &format!("model=\"smol\",priority=\"{priority}\""),
    )
}

fn total_waiting(server: &Server) -> f64 {
    ["high", "normal", "low"]
        .iter()
        .map(|p| waiting(server, p))
        .sum()
}

#[test]
fn high_priority_overtakes_queued_normal_and_low_requests() {
    // Queue order alone: with pre-emption the high request would pause the blocker.
    let server = Arc::new(Server::start(&[
        "--preload",
        "--parallel",
        "1",
        "--preemption",
        "off",
    ]));
    let blocker = block(&server);
    let finished = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    // Arrival order: low, normal, high (each queued before the next is sent).
    for (queued_before, priority) in ["low", "normal", "HIGH"].into_iter().enumerate() {
        let (server2, finished) = (server.clone(), finished.clone());
        clients.push(std::thread::spawn(move || {
            let reply = completion_with_priority(&server2, priority);
            assert_eq!(reply.status, 200, "{}", reply.text);
            finished.lock().unwrap().push(priority.to_lowercase());
        }));
        wait_until("the request to queue", Duration::from_secs(10), || {
            total_waiting(&server) == (queued_before + 1) as f64
        });
    }
    assert_eq!(waiting(&server, "high"), 1.0);
    assert_eq!(
        server.metric("hearth:num_requests_running", "model=\"smol\""),
        1.0
    );
    drop(blocker);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(*finished.lock().unwrap(), ["high", "normal", "low"]);
    assert_eq!(total_waiting(&server), 0.0);
    for priority in ["high", "normal", "low"] {
        let waits = server.metric(
            "hearth:request_queue_time_seconds_count",
            &format!("model=\"smol\",priority=\"{priority}\""),
        );
        assert!(waits >= 1.0, "{priority}: {waits}");
    }
}

#[test]
fn queued_requests_time_out_per_priority_and_leave_when_the_client_does() {
    let server = Server::start(&["--preload", "--parallel", "1", "--queue-timeout-low", "0.5"]);
    let blocker = block(&server);

    let started = Instant::now();
    let reply = completion_with_priority(&server, "low");
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.error_code().as_deref(), Some("queue_timeout"));
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("low priority queue"));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        server.metric(
            "hearth:requests_rejected_total",
            "model=\"smol\",reason=\"queue_timeout\""
        ),
        1.0
    );

    // A normal request (120 s to wait) whose client hangs up after one second.
    let url = server.url("/v1/completions");
    let impatient = std::thread::spawn(move || {
        ureq::post(&url)
            .timeout(Duration::from_secs(1))
            .send_json(short_completion())
            .is_err()
    });
    wait_until("the request to queue", Duration::from_secs(10), || {
        waiting(&server, "normal") == 1.0
    });
    assert!(impatient.join().unwrap(), "the client gave up");
    wait_until(
        "the abandoned request to leave the queue",
        Duration::from_secs(5),
        || waiting(&server, "normal") == 0.0,
    );

    drop(blocker);
    let reply = completion_with_priority(&server, "normal");
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[test]
fn a_full_queue_rejects_at_once_with_retry_after() {
    let server = Arc::new(Server::start(&[
        "--preload",
        "--parallel",
        "1",
        "--max-queue-depth",
        "2",
        "--max-queue-depth-low",
        "1",
        "--preemption",
        "off",
    ]));
    let blocker = block(&server);
    let queue = |priority: &'static str| {
        let server = server.clone();
        std::thread::spawn(move || completion_with_priority(&server, priority).status)
    };

    let low = queue("low");
    wait_until("low to queue", Duration::from_secs(10), || {
        waiting(&server, "low") == 1.0
    });
    // The low queue is at its own limit; high still has room in the total.
    let started = Instant::now();
    let rejected = completion_with_priority(&server, "low");
    assert_eq!(rejected.status, 429, "{}", rejected.text);
    assert_eq!(rejected.error_code().as_deref(), Some("queue_full"));
    let retry_after: u64 = rejected.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "rejected at once"
    );

    let high = queue("high");
    wait_until("high to queue", Duration::from_secs(10), || {
        waiting(&server, "high") == 1.0
    });
    // Two waiting: the total limit.
    let rejected = completion_with_priority(&server, "high");
    assert_eq!(rejected.status, 429);
    assert_eq!(
        server.metric(
            "hearth:requests_rejected_total",
            "model=\"smol\",reason=\"queue_full\""
        ),
        2.0
    );

    drop(blocker);
    assert_eq!(high.join().unwrap(), 200);
    assert_eq!(low.join().unwrap(), 200);
}

/// With pre-emption (the default) a high request that finds the only slot busy with a low
/// stream runs at once; the low stream pauses (its KV kept in host memory) and then
/// finishes exactly as it would have alone.
#[test]
fn a_high_request_pauses_a_low_stream_which_then_finishes_intact() {
    // No prompt cache: the reference and the paused run then both read the prompt cold.
    let server = Arc::new(Server::start(&[
        "--preload",
        "--parallel",
        "1",
        "--no-prompt-cache",
    ]));
    let body = json!({
        "model": "smol",
        "prompt": "Once upon a time",
        "max_tokens": 160,
        "temperature": 0,
        "logit_bias": {"0": -100, "1": -100, "2": -100},
    });
    let (status, alone) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{alone}");
    let alone = alone["choices"][0]["text"].as_str().unwrap().to_owned();

    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let low = {
        let server = server.clone();
        let mut body = body.clone();
        body["stream"] = json!(true);
        std::thread::spawn(move || {
            let response = ureq::post(&server.url("/v1/completions"))
                .set("x-priority", "low")
                .send_json(body)
                .expect("the low stream starts");
            let mut text = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(response.into_reader())) {
                let line = line.unwrap();
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                if data == "[DONE]" {
                    break;
                }
                let chunk: Value = serde_json::from_str(data).unwrap();
                text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or(""));
                let _ = started_tx.send(());
            }
            text
        })
    };
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the low stream produced text");
    let high = completion_with_priority(&server, "high");
    assert_eq!(high.status, 200, "{}", high.text);
    assert!(
        !low.is_finished(),
        "the high request waited for the low stream"
    );
    let resumed = low.join().unwrap();
    assert_eq!(resumed, alone, "the paused stream's text changed");
    let (_, health) = server.get("/health/ready");
    assert_eq!(health["models"]["smol"]["preemptions"], 1, "{health}");
    assert_eq!(health["models"]["smol"]["paused"], 0, "{health}");
    assert_eq!(
        server.metric("hearth:num_requests_paused", "model=\"smol\""),
        0.0
    );
}

#[test]
fn unknown_priorities_are_rejected() {
    let server = Server::start(&[]);
    let reply = completion_with_priority(&server, "urgent");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["param"], "X-Priority");
    assert_eq!(reply.error_code().as_deref(), Some("invalid_value"));
}

#[test]
fn api_keys_guard_everything_but_health() {
    let keys = std::env::temp_dir().join(format!("hearth-keys-{}", std::process::id()));
    std::fs::write(&keys, "# team keys\nsk-from-file\n\n").unwrap();
    let server = Server::start(&[
        "--api-key",
        "sk-test-1",
        "--api-key-file",
        keys.to_str().unwrap(),
    ]);
    let models = server.url("/v1/models");

    let missing = send("GET", &models, &[], None);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code().as_deref(), Some("invalid_api_key"));
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
    let wrong = send(
        "GET",
        &models,
        &[("authorization", "Bearer sk-test-2")],
        None,
    );
    assert_eq!(wrong.status, 401);
    let metrics = send("GET", &server.url("/metrics"), &[], None);
    assert_eq!(metrics.status, 401);

    for key in ["sk-test-1", "sk-from-file"] {
        let auth = format!("Bearer {key}");
        let ok = send("GET", &models, &[("authorization", &auth)], None);
        assert_eq!(ok.status, 200, "{key}");
    }
    let reply = send(
        "POST",
        &server.url("/v1/completions"),
        &[("authorization", "Bearer sk-test-1")],
        Some(&short_completion()),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(send("GET", &server.url("/health"), &[], None).status, 200);
    // Anthropic's clients send `x-api-key`, and get Anthropic's error shape.
    let message =
        json!({"model": "smol", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]});
    let messages = server.url("/v1/messages");
    let refused = send("POST", &messages, &[], Some(&message));
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.json(),
        json!({"type": "error", "error": {"type": "authentication_error",
               "message": refused.json()["error"]["message"]}})
    );
    let ok = send(
        "POST",
        &messages,
        &[("x-api-key", "sk-from-file")],
        Some(&message),
    );
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json()["type"], "message");
    let wrong = send("GET", &models, &[("x-api-key", "sk-nope")], None);
    assert_eq!(wrong.status, 401);
    assert_eq!(
        server.metric_with(
            "hearth:requests_rejected_total",
            "model=\"\",reason=\"unauthorized\"",
            &[("authorization", "Bearer sk-test-1")]
        ),
        5.0
    );
    let _ = std::fs::remove_file(keys);
}

#[test]
fn the_rate_limit_answers_429_with_openai_headers() {
    let server = Server::start(&["--rate-limit-rpm", "60", "--rate-limit-burst", "2"]);
    let models = server.url("/v1/models");
    let first = send("GET", &models, &[], None);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("60"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(send("GET", &models, &[], None).status, 200);

    let limited = send("GET", &models, &[], None);
    assert_eq!(limited.status, 429, "{}", limited.text);
    assert_eq!(limited.error_code().as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(limited.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(limited.header("x-ratelimit-reset-requests").is_some());
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "one request per second");
    // Health checks and scrapes are never limited.
    assert_eq!(send("GET", &server.url("/health"), &[], None).status, 200);
    assert_eq!(
        server.metric(
            "hearth:requests_rejected_total",
            "model=\"\",reason=\"rate_limited\""
        ),
        1.0
    );
    // One request per second comes back.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(send("GET", &models, &[], None).status, 200);
}

#[test]
fn cors_body_limit_and_request_ids() {
    let server = Server::start(&[
        "--log-json",
        "--cors-origins",
        "http://app.example",
        "--max-body-bytes",
        "2000",
    ]);
    let chat = server.url("/v1/chat/completions");
    let preflight = |origin: &str| {
        send(
            "OPTIONS",
            &chat,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            None,
        )
    };
    let allowed = preflight("http://app.example");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert!(allowed
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    assert_eq!(
        preflight("http://evil.example").header("access-control-allow-origin"),
        None
    );

    let big = json!({"model": "smol", "prompt": "x".repeat(5000)});
    let reply = send("POST", &server.url("/v1/completions"), &[], Some(&big));
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code().as_deref(), Some("request_too_large"));
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2000 bytes"));

    let echoed = send(
        "POST",
        &server.url("/v1/completions"),
        &[("x-request-id", "trace-42")],
        Some(&short_completion()),
    );
    assert_eq!(echoed.header("x-request-id"), Some("trace-42"));
    let generated = send("GET", &server.url("/v1/models"), &[], None);
    let id = generated.header("x-request-id").unwrap();
    assert!(id.starts_with("req-") && id.len() > 20, "{id}");
    // One access-log line (JSON with --log-json) for the completion, with its facts.
    wait_until("the access log line", Duration::from_secs(5), || {
        server.stderr_lines.lock().unwrap().iter().any(|line| {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                return false;
            };
            let fields = &entry["fields"];
            entry["target"] == "hearth_access"
                && fields["request_id"] == "trace-42"
                && fields["status"] == 200
                && fields["model"] == "smol"
                && fields["priority"] == "normal"
                && fields["completion_tokens"] == 2
                && fields["total_ms"].is_u64()
        })
    });
}

#[test]
fn metrics_move_with_real_requests_and_pass_promtool() {
    let server = Server::start(&[]);
    let before = server.metric("hearth:generation_tokens_total", "model=\"smol\"");
    assert_eq!(before, 0.0);
    let reply = send(
        "POST",
        &server.url("/v1/completions"),
        &[],
        Some(&json!({"model": "smol", "prompt": "The sky is", "max_tokens": 4, "temperature": 0})),
    );
    assert_eq!(reply.status, 200);
    let usage = &reply.json()["usage"];
    let raw = server.stream_raw(
        "/v1/chat/completions",
        &json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4, "temperature": 0, "stream": true}),
    );
    assert!(raw.contains("[DONE]"));
    let _ = send(
        "POST",
        &server.url("/v1/completions"),
        &[],
        Some(&json!({"model": "smol"})),
    );

    let m = |name: &str, labels: &str| server.metric(name, labels);
    assert_eq!(usage["completion_tokens"], 4);
    assert_eq!(m("hearth:generation_tokens_total", "model=\"smol\""), 8.0);
    assert!(
        m("hearth:prompt_tokens_total", "model=\"smol\"")
            > usage["prompt_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        m(
            "hearth:request_success_total",
            "finish_reason=\"length\",model=\"smol\""
        ),
        2.0
    );
    assert_eq!(
        m("hearth:time_to_first_token_seconds_count", "model=\"smol\""),
        2.0
    );
    assert_eq!(
        m("hearth:e2e_request_latency_seconds_count", "model=\"smol\""),
        2.0
    );
    assert_eq!(
        m("hearth:inter_token_latency_seconds_count", "model=\"smol\""),
        6.0
    );
    assert!(m("hearth:time_to_first_token_seconds_sum", "model=\"smol\"") > 0.0);
    assert_eq!(m("hearth:model_load_seconds_count", "model=\"smol\""), 1.0);
    assert_eq!(m("hearth:models_loaded", ""), 1.0);
    assert!(m("hearth:worker_memory_bytes", "model=\"smol\"") > 50e6);
    assert!(m("hearth:kv_cache_usage_perc", "model=\"smol\"") >= 0.0);
    assert_eq!(m("hearth:num_requests_running", "model=\"smol\""), 0.0);
    assert_eq!(
        m(
            "hearth:requests_rejected_total",
            "model=\"\",reason=\"invalid\""
        ),
        1.0
    );

    promtool_accepts(&send("GET", &server.url("/metrics"), &[], None).text);
}

/// `promtool check metrics` must find nothing wrong but the `:` in the names, which we keep
/// on purpose: they are vLLM's names with our prefix (vLLM's own output gets the same lint).
fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.ends_with("metric names should not contain ':'"))
        .collect();
    assert!(problems.is_empty(), "promtool: {problems:?}");
    // 0: clean; 3: lint findings only (the colons). 1 would be a parse error.
    assert!(
        matches!(output.status.code(), Some(0 | 3)),
        "promtool exit {:?}: {report}",
        output.status
    );
}
