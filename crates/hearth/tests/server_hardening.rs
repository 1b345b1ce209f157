//! Issue #10's findings, one regression test each: no single request can kill, wedge or
//! restart a worker, and each request's cost is bounded before it queues.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Every restart the server has counted, whatever the reason.
fn restarts(server: &Server) -> f64 {
    server.metric_sum("hearth:worker_restarts_total")
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "smol",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn nested(levels: usize) -> Value {
    let text = "[".repeat(levels) + &"]".repeat(levels);
    // serde_json's own parser stops at 128 levels: build deeper values by hand.
    if levels < 120 {
        return serde_json::from_str(&text).unwrap();
    }
    let mut value = json!([]);
    for _ in 1..levels {
        value = json!([value]);
    }
    value
}

fn assert_error(reply: &Reply, status: u16, param: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    let error = &reply.json()["error"];
    assert!(error["message"].is_string(), "{}", reply.text);
    assert_eq!(error["param"], param, "{}", reply.text);
}

fn post(server: &Server, path: &str, body: &Value) -> Reply {
    send("POST", &server.url(path), &[], Some(body))
}

fn post_raw(server: &Server, path: &str, body: String) -> Reply {
    let result = ureq::post(&server.url(path))
        .set("content-type", "application/json")
        .send_string(&body);
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    Reply {
        status: response.status(),
        headers: Default::default(),
        text: response.into_string().unwrap_or_default(),
    }
}

#[test]
fn deeply_nested_json_is_refused_at_the_edge_and_no_worker_restarts() {
    let server = Server::start(&["--preload", "--parallel", "2"]);
    // ~120 levels parsed in the orchestrator but killed the worker's frame parse before.
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": nested(120)}}]);
    let reply = post(
        &server,
        "/v1/chat/completions",
        &chat("hi", json!({"tools": tools})),
    );
    assert_error(&reply, 400, "tools");
    // Deeper than any parser here accepts: still a 400 naming the field.
    let body = format!(
        r#"{{"model": "smol", "messages": [{{"role": "user", "content": "hi"}}], "response_format": {}}}"#,
        "[".repeat(5000) + &"]".repeat(5000)
    );
    assert_error(
        &post_raw(&server, "/v1/chat/completions", body),
        400,
        "response_format",
    );
    let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": nested(70)}});
    let reply = post(
        &server,
        "/v1/completions",
        &json!({"model": "smol", "prompt": "x", "response_format": schema}),
    );
    assert_error(&reply, 400, "response_format");
    let (status, _) = server.post("/v1/chat/completions", &chat("Hello", json!({})));
    assert_eq!(status, 200);
    assert_eq!(restarts(&server), 0.0);
}

#[test]
fn logprobs_under_grammars_are_finite() {
    let server = Server::start(&["--preload", "--parallel", "2"]);
    let check = |tokens: &Value| {
        let tokens = tokens.as_array().expect("logprobs content");
        assert!(!tokens.is_empty());
        for token in tokens {
            assert!(token["logprob"].as_f64().unwrap().is_finite(), "{token}");
            for alt in token["top_logprobs"].as_array().unwrap() {
                assert!(alt["logprob"].as_f64().unwrap().is_finite(), "{alt}");
            }
        }
    };
    for constraint in [
        json!({"response_format": {"type": "json_object"}}),
        json!({"guided_choice": ["yes", "no"]}),
        json!({"guided_regex": "[0-9]{3}"}),
    ] {
        let mut extra = json!({"logprobs": true, "top_logprobs": 5, "max_tokens": 12});
        for (k, v) in constraint.as_object().unwrap() {
            extra[k] = v.clone();
        }
        let body = chat("Answer in JSON, please.", extra.clone());
        let (status, reply) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{reply}");
        check(&reply["choices"][0]["logprobs"]["content"]);

        let mut body = body;
        body["stream"] = json!(true);
        let raw = server.stream_raw("/v1/chat/completions", &body);
        let events = sse_data(&raw);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{raw}");
        for event in &events[..events.len() - 1] {
            let chunk: Value = serde_json::from_str(event).unwrap();
            assert!(chunk.get("error").is_none(), "{event}");
            if let Some(content) = chunk["choices"][0]["logprobs"].get("content") {
                check(content);
            }
        }
    }
    assert_eq!(restarts(&server), 0.0);
}

#[test]
fn a_huge_prompt_with_many_choices_does_not_starve_pings() {
    // A worker that misses pings for the hang timeout is killed; rendering and tokenizing a
    // large prompt once per choice on the thread that answers pings used to get it killed.
    let server = Server::start(&[
        "--preload",
        "--parallel",
        "4",
        "--ping-interval",
        "0.2",
        "--hang-timeout",
        "1",
    ]);
    let bystander = {
        let url = server.url("/v1/chat/completions");
        std::thread::spawn(move || {
            let started = Instant::now();
            let body = chat(
                "Tell me about bread.",
                json!({"max_tokens": 64, "stream": true}),
            );
            let reply = ureq::post(&url)
                .send_json(body)
                .unwrap()
                .into_string()
                .unwrap();
            (reply, started.elapsed())
        })
    };
    let text = "bread and butter ".repeat(200_000); // 3.4 MB
    let reply = post(
        &server,
        "/v1/chat/completions",
        &chat(&text, json!({"n": 4})),
    );
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.error_code().as_deref(),
        Some("context_length_exceeded")
    );
    let (stream, _) = bystander.join().unwrap();
    assert!(stream.trim_end().ends_with("data: [DONE]"), "{stream}");
    assert!(!stream.contains("\"error\""), "{stream}");
    assert_eq!(restarts(&server), 0.0);
}

#[test]
fn request_cost_is_bounded_before_it_queues() {
    let server = Server::start(&[
        "--preload",
        "--parallel",
        "2",
        "--max-body-bytes",
        "40000000",
    ]);
    // Four 3 MiB stop strings used to slow every stream of the worker.
    let stop = vec!["x".repeat(3 << 20); 4];
    assert_error(
        &post(
            &server,
            "/v1/chat/completions",
            &chat("hi", json!({"stop": stop})),
        ),
        400,
        "stop",
    );
    // A prompt × n past the work limit is refused without reaching a worker.
    let text = "a".repeat(15 << 20);
    assert_error(
        &post(
            &server,
            "/v1/chat/completions",
            &chat(&text, json!({"n": 16})),
        ),
        400,
        "n",
    );
    let prompts: Vec<String> = (0..16).map(|i| format!("prompt {i}")).collect();
    assert_error(
        &post(
            &server,
            "/v1/completions",
            &json!({"model": "smol", "prompt": prompts, "n": 16}),
        ),
        400,
        "n",
    );
    // max_tokens past the context (1024 in tests) is a 400 like OpenAI's, not a clamp.
    for field in ["max_tokens", "max_completion_tokens"] {
        let reply = post(
            &server,
            "/v1/chat/completions",
            &json!({"model": "smol", "messages": [{"role": "user", "content": "hi"}], field: 5000}),
        );
        assert_error(&reply, 400, field);
        assert_eq!(
            reply.error_code().as_deref(),
            Some("context_length_exceeded")
        );
    }
    let reply = post(
        &server,
        "/v1/completions",
        &json!({"model": "smol", "prompt": "hi", "max_tokens": 1024}),
    );
    assert_error(&reply, 400, "max_tokens");
    assert_eq!(restarts(&server), 0.0);
}

#[test]
fn unsupported_features_are_refused_by_name() {
    let server = Server::start(&["--parallel", "1"]);
    let tool = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    // Tools themselves are served (SmolLM2 through the generic fallback); what cannot be
    // honoured is refused by name.
    let cases = [
        (
            json!({"tools": tool, "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"tools": [{"type": "function"}]}), "tools[0]"),
        (
            json!({"tools": tool, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"functions": [{"name": "f g"}]}), "functions[0].name"),
        (json!({"function_call": "auto"}), "function_call"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (
            json!({"audio": {"voice": "alloy", "format": "wav"}}),
            "audio",
        ),
    ];
    for (extra, param) in cases {
        let reply = post(&server, "/v1/chat/completions", &chat("hi", extra.clone()));
        assert_error(&reply, 400, param);
    }
    let audio = json!({"model": "smol", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    ]}]});
    assert_error(
        &post(&server, "/v1/chat/completions", &audio),
        400,
        "messages[0].content[1].type",
    );
    // tool_choice "none" means no tools reach the template: accepted.
    let reply = post(
        &server,
        "/v1/chat/completions",
        &chat(
            "hi",
            json!({"tools": tool, "tool_choice": "none", "modalities": ["text"]}),
        ),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Whole JSON answers say how long they are (the access log's body wrapper keeps it).
    assert_eq!(
        reply.header("content-length").map(str::to_owned),
        Some(reply.text.len().to_string())
    );
}

#[test]
fn several_prompts_times_n_take_as_many_slots_in_admission() {
    let server = Server::start(&["--preload", "--parallel", "4"]);
    let long = json!({
        "model": "smol", "prompt": ["Once upon a time", "The history of bread"], "n": 2,
        "max_tokens": 200, "temperature": 0.8, "seed": 3, "stream": true,
        "logit_bias": {"2": -100, "0": -100},
    });
    let first = {
        let url = server.url("/v1/completions");
        std::thread::spawn(move || {
            ureq::post(&url)
                .send_json(long)
                .unwrap()
                .into_string()
                .unwrap()
        })
    };
    wait_until("the four sequences run", Duration::from_secs(20), || {
        server.worker_running("smol") == Some(4)
    });
    // All four slots are taken, so a one-slot request has to wait its turn.
    let second = {
        let url = server.url("/v1/completions");
        std::thread::spawn(move || {
            ureq::post(&url)
                .send_json(json!({"model": "smol", "prompt": "Hi", "max_tokens": 2}))
                .unwrap()
                .into_string()
                .unwrap()
        })
    };
    wait_until("the second request queues", Duration::from_secs(10), || {
        server.metric(
            "hearth:num_requests_waiting",
            r#"model="smol",priority="normal""#,
        ) == 1.0
    });
    assert!(first.join().unwrap().contains("[DONE]"));
    assert!(second.join().unwrap().contains("\"choices\""));
}

#[test]
fn a_request_the_lost_worker_had_not_started_is_retried_on_a_new_one() {
    let server = Server::start(&["--preload", "--parallel", "2"]);
    let pid = server.worker_pid("smol").unwrap();
    // Frozen, the worker takes the request but cannot accept or start it.
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let request = {
        let url = server.url("/v1/chat/completions");
        std::thread::spawn(move || {
            let body = chat("Say hello.", json!({"max_tokens": 4}));
            match ureq::post(&url).send_json(body) {
                Ok(r) => (r.status(), r.into_string().unwrap()),
                Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
                Err(e) => panic!("{e}"),
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let (status, body) = request.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert!(reply["choices"][0]["message"]["content"].is_string());
    assert_ne!(server.worker_pid("smol"), Some(pid));
}

#[test]
fn ctrl_c_drains_and_stops_workers_without_errors() {
    use std::os::unix::process::CommandExt;
    let model = format!("smol={}", model_path().display());
    let mut command = Server::command(&["--model", &model, "--preload"], &[]);
    // Its own group, as a shell gives a foreground job; the test is not in it.
    command.process_group(0);
    let server = Server::from_child(command.spawn().unwrap());
    let worker = server.worker_pid("smol").unwrap();
    let stream = {
        let url = server.url("/v1/chat/completions");
        std::thread::spawn(move || {
            let body = chat("Count to ten.", json!({"max_tokens": 40, "stream": true}));
            ureq::post(&url)
                .send_json(body)
                .unwrap()
                .into_string()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // What a terminal does on Ctrl-C: SIGINT to every process of the foreground group.
    let group = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGINT).unwrap();
    let body = stream.join().unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(
        !body.contains("\"error\""),
        "the in-flight stream was drained: {body}"
    );
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    wait_until("the worker exits", Duration::from_secs(10), || {
        !process_exists(worker)
    });
    let log = server.stderr_lines.lock().unwrap().join("\n");
    assert!(
        !log.contains("ERROR"),
        "a normal shutdown logs no errors:\n{log}"
    );
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}
