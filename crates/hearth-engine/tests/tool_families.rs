//! Each tool-call family end to end on a real model: the family's own chat template renders
//! the tools, the call grammar generates (Qwen2.5-Coder-0.5B, whatever syntax the template
//! asks for), the reply parser reads the calls back, and every call's arguments are JSON that
//! satisfies its tool's schema — at several temperatures and seeds.

use std::path::PathBuf;
use std::sync::Arc;

use hearth_engine::tools::{call_grammar, CallFamily, CallMode, CallTool, ReplyParser, ToolSyntax};
use hearth_engine::{
    ChatTemplate, Engine, EngineConfig, Event, FinishReason, GenerationRequest, LoadOptions, Model,
    SamplingParams, TemplateInput,
};
use serde_json::{json, Value};

fn tool_model() -> Arc<Model> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    Arc::new(
        Model::load(&path, &LoadOptions::default())
            .expect("run ./scripts/fetch-tool-model.sh to fetch the tool-calling test model"),
    )
}

fn template(name: &str, bos: &str, eos: &str) -> (ChatTemplate, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/templates/{name}.jinja"));
    let source = std::fs::read_to_string(path).unwrap();
    (ChatTemplate::new(&source, bos, eos).unwrap(), source)
}

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }
        }}),
        json!({"type": "function", "function": {
            "name": "get_time",
            "description": "Local time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
                "required": ["zone"],
                "additionalProperties": false
            }
        }}),
    ]
}

/// The schema checks these tools need: required keys, types, enums, bounds, no extras.
fn check_arguments(name: &str, arguments: &str) {
    let args: Value = serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("{name} arguments are not JSON ({e}): {arguments}"));
    let object = args.as_object().expect("arguments are an object");
    match name {
        "get_weather" => {
            assert!(object["city"].is_string(), "{arguments}");
            assert!(["celsius", "fahrenheit"].contains(&object["unit"].as_str().unwrap()));
            if let Some(days) = object.get("days") {
                let days = days.as_i64().expect("days is an integer");
                assert!((1..=7).contains(&days), "{arguments}");
            }
            assert!(object
                .keys()
                .all(|k| ["city", "days", "unit"].contains(&k.as_str())));
        }
        "get_time" => {
            assert!(["UTC", "CET", "JST"].contains(&object["zone"].as_str().unwrap()));
            assert_eq!(object.len(), 1, "{arguments}");
        }
        other => panic!("unknown tool {other}"),
    }
}

fn tool_engine(model: &Arc<Model>, parallel: usize) -> Engine {
    Engine::start(
        model.clone(),
        EngineConfig {
            parallel,
            context_per_slot: 2048,
            threads: 2,
            ..EngineConfig::default()
        },
    )
    .unwrap()
}

/// The token a text is, when it is exactly one.
fn single_token(model: &Model, text: &str) -> Option<u32> {
    match model.tokenize(text, false, true)[..] {
        [id] => Some(id),
        _ => None,
    }
}

fn call_tools(strict: bool) -> Vec<CallTool> {
    tools()
        .iter()
        .map(|t| CallTool {
            name: t["function"]["name"].as_str().unwrap().into(),
            parameters: t["function"]["parameters"].clone(),
            strict,
        })
        .collect()
}

struct Case {
    template: &'static str,
    bos: &'static str,
    eos: &'static str,
    family: CallFamily,
    reasoning: bool,
}

const CASES: &[Case] = &[
    Case {
        template: "qwen25",
        bos: "",
        eos: "<|im_end|>",
        family: CallFamily::Hermes,
        reasoning: false,
    },
    Case {
        template: "hermes3",
        bos: "<|begin_of_text|>",
        eos: "<|im_end|>",
        family: CallFamily::Hermes,
        reasoning: false,
    },
    Case {
        template: "qwen3",
        bos: "",
        eos: "<|im_end|>",
        family: CallFamily::Hermes,
        reasoning: true,
    },
    Case {
        template: "llama32",
        bos: "<|begin_of_text|>",
        eos: "<|eot_id|>",
        family: CallFamily::Llama3,
        reasoning: false,
    },
    Case {
        template: "llama33",
        bos: "<|begin_of_text|>",
        eos: "<|eot_id|>",
        family: CallFamily::Llama3,
        reasoning: false,
    },
    Case {
        template: "mistral_nemo",
        bos: "<s>",
        eos: "</s>",
        family: CallFamily::Mistral,
        reasoning: false,
    },
];

fn run(engine: &Engine, request: GenerationRequest) -> (String, FinishReason) {
    let mut text = String::new();
    for event in engine.submit(request).unwrap().events {
        match event {
            Event::Delta { text: t, .. } => text.push_str(&t),
            Event::Done { finish_reason, .. } => return (text, finish_reason),
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    panic!("no final event")
}

#[test]
fn every_family_renders_generates_and_parses_schema_valid_calls() {
    let model = tool_model();
    let engine = tool_engine(&model, 4);
    let single_token = |text: &str| single_token(&model, text);
    let call_tools = call_tools(true);
    for case in CASES {
        let (template, source) = template(case.template, case.bos, case.eos);
        let syntax = ToolSyntax::detect(&source, template.supports_tools());
        assert_eq!(syntax.family, case.family, "{}", case.template);
        assert_eq!(syntax.reasoning, case.reasoning, "{}", case.template);
        assert!(syntax.template_renders_tools, "{}", case.template);
        let text = template
            .render(&TemplateInput {
                messages: vec![
                    json!({"role": "user", "content": "What is the weather in Paris, in celsius?"}),
                ],
                tools: Some(tools()),
                add_generation_prompt: true,
            })
            .unwrap();
        assert!(
            text.contains("get_weather"),
            "{}: the template shows the tools",
            case.template
        );
        let prompt = model.tokenize(&text, false, true);
        let opens_in_reasoning = syntax.reasoning && text.trim_end().ends_with("<think>");
        let modes = [
            (CallMode::Required, false),
            (CallMode::Named("get_time".into()), true),
        ];
        for (mode, parallel) in modes {
            let format = call_grammar(
                &syntax,
                &call_tools,
                &mode,
                parallel,
                opens_in_reasoning,
                &single_token,
            );
            // A think block is free text: at high temperature this tiny model never closes it.
            let temperatures: &[(f32, u64)] = if syntax.reasoning {
                &[(0.0, 0), (0.7, 7)]
            } else {
                &[(0.0, 0), (1.0, 7), (1.5, 42)]
            };
            for &(temperature, seed) in temperatures {
                let request = GenerationRequest {
                    prompt: prompt.clone(),
                    sampling: SamplingParams {
                        temperature,
                        seed: Some(seed),
                        ..SamplingParams::greedy()
                    },
                    max_tokens: Some(400),
                    stop: vec![],
                    format: Some(format.clone()),
                    ..GenerationRequest::default()
                };
                let (reply, finish) = run(&engine, request);
                let what = format!("{} {mode:?} t={temperature}: {reply:?}", case.template);
                assert_eq!(finish, FinishReason::Stop, "{what}");
                let mut parser = ReplyParser::new(
                    &syntax,
                    call_tools.iter().map(|t| t.name.clone()).collect(),
                    true,
                    opens_in_reasoning,
                );
                let mut deltas = vec![parser.push(&reply)];
                deltas.push(parser.finish());
                let mut calls: Vec<(String, String)> = Vec::new();
                let mut content = String::new();
                for delta in deltas {
                    content.push_str(&delta.content);
                    for piece in delta.calls {
                        if let Some(name) = piece.name {
                            calls.push((name, String::new()));
                        }
                        calls[piece.index as usize].1.push_str(&piece.arguments);
                    }
                }
                assert!(!calls.is_empty(), "{what}");
                assert!(
                    content.trim().is_empty(),
                    "no call syntax leaks into content: {what}"
                );
                if let CallMode::Named(name) = &mode {
                    assert_eq!(calls.len(), 1, "{what}");
                    assert_eq!(&calls[0].0, name, "{what}");
                }
                for (name, arguments) in &calls {
                    check_arguments(name, arguments);
                }
            }
        }
    }
}

#[test]
fn auto_calls_wake_on_a_call_opening_the_reply_and_leave_text_free() {
    let model = tool_model();
    let engine = tool_engine(&model, 1);
    let single_token = |text: &str| single_token(&model, text);
    let (template, source) = template("qwen25", "", "<|im_end|>");
    let syntax = ToolSyntax::detect(&source, template.supports_tools());
    let call_tools = call_tools(false);
    let names: Vec<String> = call_tools.iter().map(|t| t.name.clone()).collect();
    let format = call_grammar(
        &syntax,
        &call_tools,
        &CallMode::Auto,
        false,
        false,
        &single_token,
    );
    let prompt = |question: &str| {
        let text = template
            .render(&TemplateInput {
                messages: vec![json!({"role": "user", "content": question})],
                tools: Some(tools()),
                add_generation_prompt: true,
            })
            .unwrap();
        model.tokenize(&text, false, true)
    };
    let parse = |reply: &str| {
        let mut parser = ReplyParser::new(&syntax, names.clone(), true, false);
        let mut delta = parser.push(reply);
        let rest = parser.finish();
        delta.content.push_str(&rest.content);
        delta.calls.extend(rest.calls);
        delta
    };
    // This small model answers a weather question with a fenced or bare JSON call rather
    // than its `<tool_call>` marker: the opener wakes the grammar, the call parses.
    let (reply, finish) = run(
        &engine,
        GenerationRequest {
            prompt: prompt("What is the weather in Paris, in celsius?"),
            sampling: SamplingParams::greedy(),
            max_tokens: Some(200),
            stop: vec![],
            format: Some(format.clone()),
            ..GenerationRequest::default()
        },
    );
    assert_eq!(finish, FinishReason::Stop, "{reply:?}");
    let parsed = parse(&reply);
    assert_eq!(
        parsed.calls.iter().filter(|c| c.name.is_some()).count(),
        1,
        "{reply:?}"
    );
    let arguments: String = parsed.calls.iter().map(|c| c.arguments.as_str()).collect();
    check_arguments(parsed.calls[0].name.as_deref().unwrap(), &arguments);
    assert_eq!(parsed.content, "", "{reply:?}");
    // A question that needs no tool gets text, unconstrained.
    let (reply, finish) = run(
        &engine,
        GenerationRequest {
            prompt: prompt("Reply with the single word: hello"),
            sampling: SamplingParams::greedy(),
            max_tokens: Some(40),
            stop: vec![],
            format: Some(format),
            ..GenerationRequest::default()
        },
    );
    assert_eq!(finish, FinishReason::Stop, "{reply:?}");
    let parsed = parse(&reply);
    assert!(parsed.calls.is_empty(), "{reply:?}");
    assert!(parsed.content.to_lowercase().contains("hello"), "{reply:?}");
}
