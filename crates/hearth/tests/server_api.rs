//! The OpenAI-compatible API of `hearth serve`, end to end over HTTP with the real model.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn chat_completion_has_openai_shape_and_answers() {
    let server = Server::start(&[]);
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
            "temperature": 0,
            "max_tokens": 20,
            "some_future_field": {"ignored": true},
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "smol");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert!(body["system_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("fp_hearth"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(
        choice["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Berlin"),
        "{body}"
    );
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // `default` names the first model; content may be a list of text parts.
    let (status, again) = server.post(
        "/v1/chat/completions",
        &json!({
            "model": "default",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is the capital of Germany?"}]}],
            "temperature": 0,
            "max_completion_tokens": 20,
        }),
    );
    assert_eq!(status, 200);
    assert_eq!(again["choices"][0]["message"], choice["message"]);
}

#[test]
fn completions_equal_the_engines_greedy_output() {
    let server = Server::start(&[]);
    let prompt = "The three primary colours are";
    let (status, body) = server.post(
        "/v1/completions",
        &json!({"model": "smol", "prompt": prompt, "temperature": 0, "max_tokens": 24}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");

    let model =
        std::sync::Arc::new(hearth_engine::Model::load(model_path(), &Default::default()).unwrap());
    let engine = hearth_engine::Engine::start(
        model.clone(),
        hearth_engine::EngineConfig {
            parallel: 1,
            context_per_slot: 1024,
            batch_size: 512,
            threads: 1,
            prompt_cache_ram: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let handle = engine
        .submit(hearth_engine::GenerationRequest {
            prompt: model.tokenize(prompt, true, false),
            sampling: hearth_engine::SamplingParams::greedy(),
            max_tokens: Some(24),
            ..Default::default()
        })
        .unwrap();
    let mut text = String::new();
    for event in handle.events {
        match event {
            hearth_engine::Event::Delta { text: t, .. } => text.push_str(&t),
            _ => break,
        }
    }
    assert_eq!(body["choices"][0]["text"].as_str().unwrap(), text);
    assert_eq!(body["usage"]["completion_tokens"], 24);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[test]
fn streaming_is_openai_sse() {
    let server = Server::start(&[]);
    let raw = server.stream_raw(
        "/v1/chat/completions",
        &json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "Name three fruits."}],
            "temperature": 0,
            "max_tokens": 30,
            "stream": true,
            "stream_options": {"include_usage": true},
        }),
    );
    assert!(raw.starts_with("data: {"), "{raw:?}");
    let data = sse_data(&raw);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert!(finish["choices"][0]["finish_reason"].is_string());
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();

    let (_, whole) = server.post(
        "/v1/chat/completions",
        &json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "Name three fruits."}],
            "temperature": 0,
            "max_tokens": 30,
        }),
    );
    assert_eq!(
        streamed,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage_chunk["usage"][field], whole["usage"][field]);
    }
    // The second time, the prompt (all but its last token, read again for fresh logits)
    // came from the prompt cache.
    assert_eq!(
        whole["usage"]["prompt_tokens_details"]["cached_tokens"],
        whole["usage"]["prompt_tokens"].as_u64().unwrap() - 1
    );
}

#[test]
fn bad_requests_get_openai_errors() {
    let server = Server::start(&[]);
    let chat = |body: Value| server.post("/v1/chat/completions", &body);
    let user = json!([{"role": "user", "content": "hi"}]);

    let (status, body) = chat(json!({"model": "nope", "messages": user}));
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");

    let (status, body) = chat(json!({"model": "smol", "messages": user, "temperature": 5}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "temperature");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let (status, body) = chat(json!({"model": "smol", "messages": user, "temperature": "hot"}));
    assert_eq!(status, 400);
    assert!(
        body["error"]["param"]
            .as_str()
            .unwrap()
            .contains("temperature"),
        "{body}"
    );

    let (status, body) = chat(json!({"model": "smol", "messages": []}));
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("messages"))
    );

    let (status, body) = chat(json!({"model": "smol", "messages": user, "n": 0}));
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("n")));

    let (status, body) =
        chat(json!({"model": "smol", "messages": [{"role": "wizard", "content": "x"}]}));
    assert_eq!(status, 400, "{body}");

    let (status, body) =
        chat(json!({"model": "smol", "messages": user, "logit_bias": {"99999999": 5}}));
    assert_eq!(status, 400, "{body}");

    let long = "word ".repeat(2000);
    let (status, body) =
        chat(json!({"model": "smol", "messages": [{"role": "user", "content": long}]}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("1024"), "{message}");

    let raw = ureq::post(&server.url("/v1/chat/completions"))
        .set("content-type", "application/json")
        .send_string("{not json");
    match raw {
        Err(ureq::Error::Status(400, r)) => {
            let body: Value = r.into_json().unwrap();
            assert!(body["error"]["message"].as_str().unwrap().contains("JSON"));
        }
        other => panic!("expected 400, got {other:?}"),
    }

    // The worker survived all of that.
    let (status, _) = chat(json!({"model": "smol", "messages": user, "max_tokens": 2}));
    assert_eq!(status, 200);
}

#[test]
fn n_choices_stop_seed_and_logprobs() {
    let server = Server::start(&[]);
    let ask = |extra: Value| {
        let mut body = json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "Tell me a story about a dragon."}],
            "max_tokens": 16,
        });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        server.post("/v1/chat/completions", &body)
    };
    let (_, two) = ask(json!({"n": 2, "seed": 4, "temperature": 1.0}));
    assert_eq!(two["choices"].as_array().unwrap().len(), 2);
    assert_eq!(two["choices"][1]["index"], 1);
    let (_, again) = ask(json!({"n": 2, "seed": 4, "temperature": 1.0}));
    assert_eq!(two["choices"], again["choices"], "same seed, same choices");

    let (_, full) = ask(json!({"temperature": 0}));
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop: String = text.chars().skip(6).take(3).collect();
    let (_, stopped) = ask(json!({"temperature": 0, "stop": [stop.clone()]}));
    let cut = stopped["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(cut, &text[..text.find(&stop).unwrap()]);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    let (status, lp) = ask(json!({"temperature": 0, "logprobs": true, "top_logprobs": 3}));
    assert_eq!(status, 200, "{lp}");
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for entry in content {
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(entry["top_logprobs"].as_array().unwrap().len(), 3);
        assert_eq!(entry["top_logprobs"][0]["token"], entry["token"]);
    }
    let joined: String = content
        .iter()
        .map(|e| e["token"].as_str().unwrap())
        .collect();
    assert_eq!(
        joined,
        lp["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[test]
fn models_and_health_endpoints() {
    let server = Server::start(&[]);
    let (status, body) = server.get("/health");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "smol");
    assert_eq!(models["data"][0]["state"], "unloaded");
    let (status, _) = server.get("/v1/models/nope");
    assert_eq!(status, 404);
    server.post(
        "/v1/completions",
        &json!({"model": "smol", "prompt": "Hi", "max_tokens": 1}),
    );
    let (_, card) = server.get("/v1/models/smol");
    assert_eq!(card["state"], "loaded");
    let (status, ready) = server.get("/health/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["models"]["smol"]["status"], "ready");
}

#[test]
fn prompts_that_cannot_fit_are_refused_without_loading_the_model() {
    // Six models (one file), none loaded: counting uses vocabulary-only workers, at most 5.
    let model = common::model_path().display().to_string();
    let specs: Vec<String> = (0..6).map(|i| format!("m{i}={model}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for spec in &specs {
        args.extend(["--model", spec.as_str()]);
    }
    // (The harness serves 1024 tokens of context per sequence.)
    let server = common::Server::launch(&args, &[]);
    let long = "hello ".repeat(1500);
    let (status, body) = server.post(
        "/v1/chat/completions",
        &json!({"model": "m0", "messages": [{"role": "user", "content": long}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    // The count is the worker's own: the same as /tokenize of the rendered chat.
    let (_, counted) = server.post(
        "/tokenize",
        &json!({"model": "m0", "messages": [{"role": "user", "content": long}]}),
    );
    let count = counted["count"].as_u64().unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("prompt is {count} tokens")),
        "{body}"
    );
    // A prompt that fits but asks for more than the rest of the context.
    let (status, body) = server.post(
        "/v1/completions",
        &json!({"model": "m0", "prompt": "Once upon a time", "max_tokens": 1100}),
    );
    assert_eq!(status, 400, "{body}");
    let (_, ready) = server.get("/health/ready");
    assert_eq!(
        ready["models"]["m0"]["state"], "unloaded",
        "refused without waking the model: {ready}"
    );
    assert_eq!(ready["counting"], json!(["m0"]));
    for i in 1..6 {
        let (status, _) = server.post(
            "/tokenize",
            &json!({"model": format!("m{i}"), "content": "hi"}),
        );
        assert_eq!(status, 200);
    }
    let (_, ready) = server.get("/health/ready");
    assert_eq!(
        ready["counting"],
        json!(["m1", "m2", "m3", "m4", "m5"]),
        "{ready}"
    );
    // A request that fits still runs, on the model's own worker.
    let (status, body) = server.post(
        "/v1/completions",
        &json!({"model": "m0", "prompt": "Once upon a time", "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{body}");
}
