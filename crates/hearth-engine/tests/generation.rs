//! The engine on the real default model: loading, greedy and sampled decoding, batching,
//! stops, UTF-8 safety, limits and cancellation.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use hearth_engine::{
    Engine, EngineConfig, EngineError, Event, FinishReason, GenerationRequest, LoadOptions, Model,
    Priority, SamplingParams,
};

#[test]
fn model_facts_come_from_the_gguf() {
    let model = model();
    let info = model.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.context_length, 8192);
    assert_eq!(info.eos_token, Some(2));
    assert!(info.eog_tokens.contains(&2), "<|im_end|> ends a turn");
    assert!(!info.add_bos);
    let fixture = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/templates/smollm2.jinja"),
    )
    .unwrap();
    assert_eq!(info.chat_template.as_deref(), Some(fixture.as_str()));
    assert_eq!(
        model.detokenize(&model.tokenize("Hello, world!", false, false)),
        "Hello, world!"
    );
}

#[test]
fn bad_model_files_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("hearth-bad-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = Model::load(dir.join("nope.gguf"), &LoadOptions::default());
    assert!(
        matches!(missing, Err(EngineError::ModelNotFound(_))),
        "{missing:?}"
    );

    let text = dir.join("text.gguf");
    std::fs::write(&text, "this is not a model, just some text in a file").unwrap();
    let not_gguf = Model::load(&text, &LoadOptions::default());
    assert!(
        matches!(not_gguf, Err(EngineError::NotGguf { .. })),
        "{not_gguf:?}"
    );

    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let result = Model::load(&truncated, &LoadOptions::default());
    assert!(
        matches!(result, Err(EngineError::LoadFailed(_))),
        "{result:?}"
    );
    let message = result.unwrap_err().to_string();
    assert!(message.contains("truncated"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn greedy_answers_and_repeats_itself_exactly() {
    let engine = engine(1);
    let prompt = chat_prompt("What is the capital of Germany?");
    let first = generate(&engine, greedy(prompt.clone(), 24));
    assert!(first.text.contains("Berlin"), "{:?}", first.text);
    let second = generate(&engine, greedy(prompt.clone(), 24));
    assert_eq!(first.tokens, second.tokens);
    assert_eq!(first.text, second.text);
    assert_eq!(first.usage.prompt_tokens, prompt.len());
    assert_eq!(first.usage.completion_tokens, first.tokens.len());
}

#[test]
fn batched_output_equals_output_alone_including_a_recycled_slot() {
    let target = chat_prompt("Write a short poem about the sea.");
    let alone = generate(&engine(1), greedy(target.clone(), 48));

    let engine = engine(4);
    let main = engine.submit(greedy(target, 48)).unwrap();
    let _b = engine
        .submit(greedy(chat_prompt("List three fruits."), 40))
        .unwrap();
    let _c = engine
        .submit(greedy(chat_prompt("Explain gravity to a child."), 40))
        .unwrap();
    let short = engine.submit(greedy(chat_prompt("Say hi."), 3)).unwrap();
    let short = collect(short.events);
    assert_eq!(short.usage.completion_tokens, 3);
    // The short one's slot is free again: a new sequence joins mid-way into it.
    let late = engine
        .submit(greedy(chat_prompt("What colour is the sky?"), 20))
        .unwrap();
    let batched = collect(main.events);
    let late = collect(late.events);
    assert_eq!(batched.tokens, alone.tokens, "batched output diverged");
    assert!(!late.tokens.is_empty());
}

#[test]
fn seeded_sampling_is_reproducible_and_top_k_one_is_greedy() {
    let engine = engine(2);
    let prompt = chat_prompt("Tell me a story about a dragon.");
    let sampled = |seed| GenerationRequest {
        prompt: prompt.clone(),
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        max_tokens: Some(32),
        ..GenerationRequest::default()
    };
    let a = generate(&engine, sampled(11));
    let b = generate(&engine, sampled(11));
    let c = generate(&engine, sampled(12));
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens, "different seeds should explore");

    let greedy_out = generate(&engine, greedy(prompt.clone(), 32));
    let top_k_one = generate(
        &engine,
        GenerationRequest {
            sampling: SamplingParams {
                top_k: 1,
                temperature: 1.5,
                seed: Some(5),
                ..SamplingParams::default()
            },
            ..greedy(prompt, 32)
        },
    );
    assert_eq!(greedy_out.tokens, top_k_one.tokens);
}

#[test]
fn logit_bias_bans_and_forces_tokens() {
    let engine = engine(1);
    let prompt = chat_prompt("What is the capital of Germany?");
    let base = generate(&engine, greedy(prompt.clone(), 16));
    let banned = base.tokens[0];
    let mut bias = HashMap::new();
    bias.insert(banned, -100.0);
    let out = generate(
        &engine,
        GenerationRequest {
            sampling: SamplingParams {
                logit_bias: bias,
                ..SamplingParams::greedy()
            },
            ..greedy(prompt.clone(), 16)
        },
    );
    assert!(!out.tokens.contains(&banned));

    let forced = engine.model().tokenize(" banana", false, false)[0];
    let mut bias = HashMap::new();
    bias.insert(forced, 100.0);
    let out = generate(
        &engine,
        GenerationRequest {
            sampling: SamplingParams {
                logit_bias: bias,
                temperature: 1.0,
                seed: Some(3),
                ..SamplingParams::default()
            },
            ..greedy(prompt, 8)
        },
    );
    assert_eq!(out.tokens, vec![forced; 8]);
}

#[test]
fn stop_strings_are_cut_across_token_boundaries() {
    let engine = engine(1);
    let model = engine.model().clone();
    let prompt = chat_prompt("Write a short poem about the sea.");
    let base = generate(&engine, greedy(prompt.clone(), 40));
    // A stop string made of the end of one token and the start of the next.
    let (i, stop) = (4..base.tokens.len() - 1)
        .find_map(|i| {
            let a = String::from_utf8(model.token_bytes(base.tokens[i]).to_vec()).ok()?;
            let b = String::from_utf8(model.token_bytes(base.tokens[i + 1]).to_vec()).ok()?;
            let a_tail: String = a
                .chars()
                .rev()
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let b_head: String = b.chars().take(2).collect();
            (a.chars().count() >= 2 && b.chars().count() >= 2).then(|| (i, a_tail + &b_head))
        })
        .expect("the poem has two adjacent tokens of two or more characters");
    let out = generate(
        &engine,
        GenerationRequest {
            stop: vec![stop.clone()],
            ..greedy(prompt, 40)
        },
    );
    let cut = base.text.find(&stop).unwrap();
    assert!(cut <= model.detokenize(&base.tokens[..=i + 1]).len());
    assert_eq!(out.text, base.text[..cut], "stop {stop:?}");
    assert_eq!(out.finish_reason, FinishReason::StopString(0));
    assert!(!out.text.contains(&stop));
    assert!(out.deltas.iter().all(|d| !d.contains(&stop)));
}

#[test]
fn streamed_text_is_never_broken_utf8() {
    let engine = engine(1);
    let model = engine.model().clone();
    let out = generate(
        &engine,
        greedy(
            chat_prompt("Reply with only these characters, repeated: 🎉🚀 你好世界 こんにちは 😀"),
            48,
        ),
    );
    let split_tokens = out
        .tokens
        .iter()
        .filter(|&&t| std::str::from_utf8(model.token_bytes(t)).is_err())
        .count();
    assert!(
        split_tokens > 0,
        "the reply should contain characters split across tokens: {:?}",
        out.text
    );
    assert!(!out.text.contains('\u{fffd}'), "{:?}", out.text);
    assert!(
        out.text.chars().any(|c| c as u32 > 0x2e80),
        "{:?}",
        out.text
    );
    assert_eq!(out.text, model.detokenize(&out.tokens));
}

#[test]
fn max_tokens_and_context_limits_end_with_length() {
    let engine = engine_with(1, 96);
    let out = generate(
        &engine,
        greedy(chat_prompt("Write a long story about a cat."), 5),
    );
    assert_eq!(out.usage.completion_tokens, 5);
    assert_eq!(out.finish_reason, FinishReason::Length);

    let prompt = chat_prompt("Count from one to one hundred in words, please.");
    let room = 96 - prompt.len();
    let out = generate(
        &engine,
        GenerationRequest {
            max_tokens: None,
            sampling: SamplingParams {
                logit_bias: engine
                    .model()
                    .info()
                    .eog_tokens
                    .iter()
                    .map(|&t| (t, -100.0))
                    .collect(),
                ..SamplingParams::greedy()
            },
            ..greedy(prompt, 0)
        },
    );
    assert_eq!(out.finish_reason, FinishReason::Length);
    assert_eq!(out.usage.completion_tokens, room);

    let long: Vec<u32> = std::iter::repeat_n(100, 96).collect();
    match engine.submit(greedy(long, 4)) {
        Err(EngineError::ContextLengthExceeded {
            prompt_tokens: 96,
            context_tokens: 96,
        }) => {}
        other => panic!(
            "expected context_length_exceeded, got {:?}",
            other.map(|h| h.id)
        ),
    }

    // Asking for more tokens than the context has room for is refused, not clamped.
    let prompt = chat_prompt("Hi");
    let too_many = 96 - prompt.len() + 1;
    match engine.submit(greedy(prompt.clone(), too_many)) {
        Err(EngineError::CompletionExceedsContext {
            max_tokens,
            context_tokens: 96,
            ..
        }) if max_tokens == too_many => {}
        other => panic!(
            "expected completion_exceeds_context, got {:?}",
            other.map(|h| h.id)
        ),
    }
    assert!(engine.submit(greedy(prompt, too_many - 1)).is_ok());
}

#[test]
fn logprobs_report_the_chosen_token_and_alternatives() {
    let engine = engine(1);
    let out = generate(
        &engine,
        GenerationRequest {
            sampling: SamplingParams {
                top_logprobs: Some(5),
                ..SamplingParams::greedy()
            },
            ..greedy(chat_prompt("What is the capital of Germany?"), 6)
        },
    );
    assert_eq!(out.logprobs.len(), out.tokens.len());
    for (token, lp) in out.tokens.iter().zip(&out.logprobs) {
        let lp = lp.as_ref().unwrap();
        assert_eq!(lp.top.len(), 5);
        assert_eq!(lp.top[0].0, *token, "greedy picks the most likely token");
        assert!(lp.logprob <= 0.0);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

#[test]
fn cancelling_frees_the_slot_for_the_next_request() {
    let engine = engine(1);
    let long = GenerationRequest {
        sampling: SamplingParams {
            logit_bias: engine
                .model()
                .info()
                .eog_tokens
                .iter()
                .map(|&t| (t, -100.0))
                .collect(),
            ..SamplingParams::greedy()
        },
        ..greedy(chat_prompt("Write a very long essay about bread."), 900)
    };
    let first = engine.submit(long.clone()).unwrap();
    let waiting = engine.submit(greedy(chat_prompt("Say hi."), 4)).unwrap();
    assert!(matches!(first.events.recv().unwrap(), Event::Delta { .. }));
    assert_eq!(engine.stats().running, 1);
    assert_eq!(engine.stats().waiting, 1);
    engine.cancel(first.id);
    let cancelled = collect(first.events);
    assert_eq!(cancelled.finish_reason, FinishReason::Cancelled);
    let next = collect(waiting.events);
    assert_eq!(next.usage.completion_tokens, 4);

    // Dropping a handle cancels too: the slot comes back without anyone calling cancel.
    let dropped = engine.submit(long).unwrap();
    assert!(matches!(
        dropped.events.recv().unwrap(),
        Event::Delta { .. }
    ));
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().running > 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped request kept its slot"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = generate(&engine, greedy(chat_prompt("Say hi."), 4));
    assert_eq!(after.usage.completion_tokens, 4);
}

#[test]
fn invalid_requests_are_rejected_with_the_parameter_named() {
    let engine = engine(1);
    let err = engine.submit(greedy(vec![], 4)).err().unwrap();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = engine
        .submit(GenerationRequest {
            sampling: SamplingParams {
                temperature: -1.0,
                ..SamplingParams::default()
            },
            ..greedy(vec![1, 2, 3], 4)
        })
        .err()
        .unwrap();
    assert!(err.to_string().contains("temperature"), "{err}");
    let err = engine.submit(greedy(vec![999_999], 4)).err().unwrap();
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let err = engine
        .submit(GenerationRequest {
            stop: vec!["a".into(), "b".into(), "c".into(), "d".into(), "e".into()],
            ..greedy(vec![1, 2, 3], 4)
        })
        .err()
        .unwrap();
    assert!(err.to_string().contains("stop"), "{err}");
}

#[test]
fn structured_output_is_valid_json_and_grammars_are_cached() {
    let engine = engine(2);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "people": {"type": "integer", "minimum": 0}},
        "required": ["city", "people"],
        "additionalProperties": false
    });
    let before = engine.model().grammars().unwrap().cached();
    for (format, seed) in [
        (hearth_engine::OutputFormat::JsonObject, None),
        (
            hearth_engine::OutputFormat::JsonSchema(schema.clone()),
            None,
        ),
        (
            hearth_engine::OutputFormat::JsonSchema(schema.clone()),
            Some(9),
        ),
    ] {
        let sampling = match seed {
            None => SamplingParams::greedy(),
            Some(seed) => SamplingParams {
                seed: Some(seed),
                ..SamplingParams::default()
            },
        };
        let out = generate(
            &engine,
            GenerationRequest {
                sampling,
                format: Some(format.clone()),
                ..greedy(
                    chat_prompt("Describe the biggest city of Germany in JSON."),
                    200,
                )
            },
        );
        assert_eq!(out.finish_reason, FinishReason::Stop, "{}", out.text);
        let value: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        assert!(value.is_object());
        if let hearth_engine::OutputFormat::JsonSchema(_) = format {
            assert!(
                value["city"].is_string() && value["people"].is_u64(),
                "{value}"
            );
            assert_eq!(value.as_object().unwrap().len(), 2);
        }
    }
    // json_object and the schema: two compiled grammars, the repeat came from the cache.
    assert_eq!(engine.model().grammars().unwrap().cached(), before + 2);
    let bad = hearth_engine::OutputFormat::JsonSchema(serde_json::json!({"$ref": "#/$defs/nope"}));
    let err = engine
        .submit(GenerationRequest {
            format: Some(bad),
            ..greedy(chat_prompt("hi"), 5)
        })
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::InvalidRequest(_)), "{err}");
}

#[test]
fn prompt_cache_hits_are_token_identical_to_cold_runs_including_copied_caches() {
    let cold_engine = Engine::start(
        model(),
        EngineConfig {
            prompt_cache: false,
            prompt_cache_ram: 0,
            ..config(3, 1024)
        },
    )
    .unwrap();
    let engine = engine(3);
    let x = chat_prompt("Name three rivers of Europe and say one thing about each.");
    let y = chat_prompt("Explain in two sentences why the sky is blue.");
    let first = generate(&engine, greedy(x.clone(), 24));
    assert_eq!(first.usage.cached_tokens, 0);
    // The same prompt again: all but its last token come from the cache.
    let again = generate(&engine, greedy(x.clone(), 24));
    assert_eq!(again.usage.cached_tokens, x.len() - 1);
    assert_eq!(again.tokens, first.tokens);
    // A second conversation takes slot 0; x's cache is copied to another slot and back.
    let other = generate(&engine, greedy(y.clone(), 24));
    assert_eq!(
        other.tokens,
        generate(&cold_engine, greedy(y.clone(), 24)).tokens
    );
    let copied = generate(&engine, greedy(x.clone(), 24));
    assert_eq!(copied.usage.cached_tokens, x.len() - 1);
    assert_eq!(copied.tokens, first.tokens);
    // A follow-up turn reuses the earlier turn and reply, and replays exactly. (Against a
    // cold run it can differ in the last bits: the reply's KV was computed by one-row decode
    // kernels, a cold prompt's by tiled ones. See docs/architecture.md, exactness.)
    let mut follow_up = x.clone();
    follow_up.extend(&first.tokens);
    follow_up.extend(model().tokenize("\nAnd one more river?", false, false));
    let warm = generate(&engine, greedy(follow_up.clone(), 24));
    assert_eq!(warm.usage.cached_tokens, x.len() + first.tokens.len() - 1);
    let replay = engine_with(3, 1024);
    generate(&replay, greedy(x.clone(), 24));
    assert_eq!(generate(&replay, greedy(follow_up, 24)).tokens, warm.tokens);
}

/// Conversations that come back to their cached slots 0 and 3 of four would be decoded in
/// two passes a step; one of them moves next to the other (a KV copy across llama.cpp's
/// per-slot streams, carried out at the next decode) and both answer exactly as before.
#[test]
fn sequences_moved_to_consecutive_slots_answer_as_before() {
    let engine = engine(4);
    let prompts: Vec<Vec<u32>> = [
        "Name a river of Europe.",
        "Say something about cats.",
        "What is two plus two?",
        "Write one line about the sea.",
    ]
    .iter()
    .map(|q| chat_prompt(q))
    .collect();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(greedy(p.clone(), 24)).unwrap())
        .collect();
    let firsts: Vec<_> = handles.into_iter().map(|h| collect(h.events)).collect();
    assert_eq!(engine.stats().slot_moves, 0);
    let handles: Vec<_> = [0, 3]
        .iter()
        .map(|&i| engine.submit(greedy(prompts[i].clone(), 24)).unwrap())
        .collect();
    let seconds: Vec<_> = handles.into_iter().map(|h| collect(h.events)).collect();
    assert!(engine.stats().slot_moves >= 1, "{:?}", engine.stats());
    for (second, &i) in seconds.iter().zip(&[0, 3]) {
        assert_eq!(second.usage.cached_tokens, prompts[i].len() - 1);
        assert_eq!(
            second.tokens, firsts[i].tokens,
            "prompt {i} answered differently"
        );
    }
}

#[test]
fn greedy_tokens_chosen_by_llama_cpp_match_the_hosts_beside_sampled_requests() {
    // `--greedy-on-device on` (on the CPU here: the same graph a GPU runs): greedy requests'
    // tokens come from llama.cpp's argmax (after their logit bias), a sampled request beside
    // them still gets its logits; every reply is what the host's own choice gives, and the
    // second round reuses the slots' chains.
    let requests = || {
        let questions = [
            "Name a river of Europe.",
            "Say something about cats.",
            "What is two plus two?",
        ];
        let mut requests: Vec<GenerationRequest> = questions
            .iter()
            .map(|q| greedy(chat_prompt(q), 20))
            .collect();
        // A ban on what the second would say first: the bias goes to the device too.
        let first = generate(&engine(1), requests[1].clone()).tokens[0];
        requests[1].sampling.logit_bias.insert(first, -100.0);
        requests.push(GenerationRequest {
            sampling: SamplingParams {
                temperature: 0.8,
                seed: Some(11),
                ..SamplingParams::default()
            },
            ..greedy(chat_prompt("Write one line about the sea."), 20)
        });
        requests
    };
    let run = |on_device: bool| {
        let engine = Engine::start(
            model(),
            EngineConfig {
                greedy_on_device: on_device,
                ..config(4, 1024)
            },
        )
        .unwrap();
        let mut rounds = Vec::new();
        for _ in 0..2 {
            let handles: Vec<_> = requests()
                .into_iter()
                .map(|r| engine.submit(r).unwrap())
                .collect();
            let outputs: Vec<Vec<u32>> = handles
                .into_iter()
                .map(|h| collect(h.events).tokens)
                .collect();
            rounds.push(outputs);
        }
        // Three greedy requests a round, every token of theirs chosen by llama.cpp (and an
        // end of turn, if one ended so).
        let chosen = engine.stats().device_choices as usize;
        let greedy_tokens: usize = rounds.iter().flat_map(|r| &r[..3]).map(Vec::len).sum();
        if on_device {
            assert!(
                (greedy_tokens..=greedy_tokens + 6).contains(&chosen),
                "{chosen}"
            );
        } else {
            assert_eq!(chosen, 0);
        }
        rounds
    };
    let host = run(false);
    let device = run(true);
    assert!(host[0][1] != generate(&engine(1), greedy(requests()[1].prompt.clone(), 20)).tokens);
    assert_eq!(device, host);
}

#[test]
fn choices_of_one_prompt_share_its_prefill_and_match_a_lone_run() {
    let engine = engine(4);
    let prompt = chat_prompt("Write two sentences about the sea.");
    let alone = generate(&engine_with(1, 1024), greedy(prompt.clone(), 20));
    let handles: Vec<_> = (0..3)
        .map(|_| engine.submit(greedy(prompt.clone(), 20)).unwrap())
        .collect();
    let outputs: Vec<_> = handles.into_iter().map(|h| collect(h.events)).collect();
    let mut cached: Vec<usize> = outputs.iter().map(|o| o.usage.cached_tokens).collect();
    cached.sort_unstable();
    // One prefill; the other two copied it and decoded only the last prompt token again.
    assert_eq!(cached, vec![0, prompt.len() - 1, prompt.len() - 1]);
    for output in &outputs {
        assert_eq!(output.tokens, alone.tokens);
    }
}

#[test]
fn a_conversation_restored_from_host_memory_answers_as_cold() {
    // One slot: every other conversation pushes this one out to host memory.
    let engine = engine(1);
    let question = "Here is a long question so that the prompt is worth saving: which three \
                    rivers of Europe are the longest, through which countries does each flow, \
                    and what is one thing worth knowing about each of them?";
    let x = chat_prompt(question);
    assert!(x.len() >= 64, "{}", x.len());
    let first = generate(&engine, greedy(x.clone(), 16));
    let other = chat_prompt(&question.replace("rivers", "mountains"));
    generate(&engine, greedy(other, 16));
    let restored = generate(&engine, greedy(x.clone(), 16));
    assert_eq!(restored.usage.cached_tokens, x.len() - 1);
    assert_eq!(restored.tokens, first.tokens);
}

/// A low-priority sequence paused for a high-priority one (its KV saved to host memory and
/// restored) goes on exactly as if it had never stopped.
#[test]
fn a_preempted_sequence_resumes_token_identical_to_an_uninterrupted_run() {
    let no_eog = model()
        .info()
        .eog_tokens
        .iter()
        .map(|&t| (t, -100.0))
        .collect();
    let low = GenerationRequest {
        sampling: SamplingParams {
            logit_bias: no_eog,
            ..SamplingParams::greedy()
        },
        priority: Priority::Low,
        ..greedy(
            chat_prompt("Write a long story about a lighthouse keeper."),
            120,
        )
    };
    let alone = generate(&engine(1), low.clone());

    let engine = engine(1);
    let background = engine.submit(low).unwrap();
    // Let it write a few tokens, then send the urgent request.
    let mut early = Vec::new();
    while early.len() < 3 {
        early.push(background.events.recv().unwrap());
    }
    let urgent = engine
        .submit(GenerationRequest {
            priority: Priority::High,
            ..greedy(chat_prompt("What is 2 + 2?"), 8)
        })
        .unwrap();
    let urgent = collect(urgent.events);
    assert_eq!(urgent.usage.completion_tokens, 8);
    let resumed = collect(early.into_iter().chain(background.events));
    assert_eq!(
        engine.stats().preemptions,
        1,
        "the low sequence was not paused"
    );
    assert_eq!(resumed.tokens, alone.tokens);
    assert_eq!(resumed.text, alone.text);
    assert_eq!(resumed.finish_reason, FinishReason::Length);
    assert_eq!(engine.stats().paused, 0);
}

/// Batch invariance for a whole generation, with flash attention off: three greedy
/// sequences with prompts of different lengths join a running batch at different times and
/// write 600 tokens each; every one matches its run alone, token for token. (With it on,
/// llama.cpp's CPU kernels made such runs diverge after ~200 tokens: see `FlashAttention`.)
#[test]
fn sequences_joining_at_different_times_match_their_solo_runs_over_600_tokens() {
    let no_eog: std::collections::HashMap<u32, f32> = model()
        .info()
        .eog_tokens
        .iter()
        .map(|&t| (t, -100.0))
        .collect();
    let request = |message: &str| GenerationRequest {
        sampling: SamplingParams {
            logit_bias: no_eog.clone(),
            ..SamplingParams::greedy()
        },
        ..greedy(chat_prompt(message), 600)
    };
    let requests = [
        request("Tell me everything about the ocean."),
        request(
            "You are a patient teacher. Explain, step by step and with many examples, how \
             a steam engine turns heat into motion, and why it changed the world.",
        ),
        request("Hi!"),
    ];
    // Alone, one after another on one slot (each also starts from the previous one's cache).
    let off = hearth_engine::FlashAttention::Off;
    let solo_engine = engine_configured(1, 1024, off);
    let alone: Vec<Output> = requests
        .iter()
        .map(|r| generate(&solo_engine, r.clone()))
        .collect();

    let engine = engine_configured(4, 1024, off);
    let mut handles = Vec::new();
    let mut outputs: Vec<Vec<Event>> = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        handles.push(engine.submit(request.clone()).unwrap());
        outputs.push(Vec::new());
        // The next one joins after this one has written 40 * (i + 1) tokens.
        let mut written = 0;
        while i + 1 < requests.len() && written < 40 * (i + 1) {
            let event = handles[i].events.recv().unwrap();
            if let Event::Delta { tokens, .. } = &event {
                written += tokens.len();
            }
            outputs[i].push(event);
        }
    }
    for (i, handle) in handles.into_iter().enumerate() {
        let events = std::mem::take(&mut outputs[i])
            .into_iter()
            .chain(handle.events);
        let batched = collect(events);
        assert_eq!(batched.tokens.len(), 600);
        let first_difference = batched
            .tokens
            .iter()
            .zip(&alone[i].tokens)
            .position(|(a, b)| a != b);
        assert_eq!(
            first_difference, None,
            "sequence {i} diverged from its solo run"
        );
    }
}
