//! Property tests for request parsing and validation: whatever a client sends, parsing and
//! validation never panic, and every error is a 4xx with a message (and, when it names a
//! parameter, a non-empty one).
//!
//! Short by default; `PROPTEST_CASES=100000 cargo test --release -p hearth-api --test
//! fuzz_parse` for a long run (see docs/testing.md).

use hearth_api::chat::ChatCompletionRequest;
use hearth_api::completions::CompletionRequest;
use hearth_api::{parse_request, ApiError};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;
use proptest_config::config;

fn check_error(error: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(
        (400..500).contains(&error.status),
        "status {} for {error:?}",
        error.status
    );
    prop_assert!(!error.message.is_empty(), "empty message: {error:?}");
    if let Some(param) = &error.param {
        prop_assert!(!param.is_empty(), "empty param: {error:?}");
    }
    let body = error.body();
    prop_assert!(body["error"]["message"].is_string());
    prop_assert!(body["error"]["type"].is_string());
    prop_assert!(body["error"].get("param").is_some());
    prop_assert!(body["error"].get("code").is_some());
    Ok(())
}

/// Parse and validate a chat body the way the server does, checking every error.
fn exercise_chat(body: &[u8]) -> Result<(), TestCaseError> {
    let request = match parse_request::<ChatCompletionRequest>(body) {
        Ok(request) => request,
        Err(e) => return check_error(&e),
    };
    if let Err(e) = request.params() {
        check_error(&e)?;
    }
    if let Err(e) = request.sampling.choices() {
        check_error(&e)?;
    }
    if let Err(e) = request.tool_use() {
        check_error(&e)?;
    }
    match request.template_messages() {
        Ok(messages) => prop_assert_eq!(messages.len(), request.messages.len()),
        Err(e) => check_error(&e)?,
    }
    Ok(())
}

fn exercise_completion(body: &[u8]) -> Result<(), TestCaseError> {
    let request = match parse_request::<CompletionRequest>(body) {
        Ok(request) => request,
        Err(e) => return check_error(&e),
    };
    if let Err(e) = request.params() {
        check_error(&e)?;
    }
    if let Err(e) = request.sampling.choices() {
        check_error(&e)?;
    }
    match request.prompts() {
        Ok(prompts) => prop_assert!(!prompts.is_empty() && prompts.len() <= 16),
        Err(e) => check_error(&e)?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Strategies.

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "seed",
    "n",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "user",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "modalities",
    "audio",
    "echo",
    "suffix",
    "best_of",
];

const WORDS: &[&str] = &[
    "",
    "smol",
    "default",
    "user",
    "system",
    "developer",
    "assistant",
    "tool",
    "wizard",
    "text",
    "image_url",
    "input_audio",
    "json_object",
    "json_schema",
    "none",
    "auto",
    "include_usage",
    "type",
    "content",
    "role",
    "name",
    "schema",
    "{{ 7 * 7 }}",
    "{% raise_exception('x') %}",
    "\u{0}",
    "\u{feff}😀é",
    "99999999",
    "-1",
    "1",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(WORDS).prop_map(str::to_owned),
        any::<String>(),
        prop::sample::select(FIELDS).prop_map(str::to_owned),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            0i64,
            1,
            -1,
            2,
            16,
            17,
            100,
            1024,
            1025,
            u32::MAX as i64,
            1 << 32,
            i64::MIN,
            i64::MAX,
        ])
        .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            0.0f64, -0.0, 0.5, 1.0, 2.0, 2.0001, -2.0, 100.0, 1e-30, 1e38, 3.5e38, 1e300, -1e300,
        ])
        .prop_map(|f| Value::Number(Number::from_f64(f).unwrap())),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        word().prop_map(Value::String),
    ]
}

/// Any JSON value, biased towards the names and shapes requests use.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn message() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        3 => any::<String>().prop_map(Value::String),
        2 => prop::collection::vec(
            (prop::sample::select(vec!["text", "image_url", "input_audio", "x"]), any::<Option<String>>()),
            0..4,
        )
        .prop_map(|parts| {
            Value::Array(
                parts
                    .into_iter()
                    .map(|(kind, text)| serde_json::json!({"type": kind, "text": text}))
                    .collect(),
            )
        }),
        1 => value(),
    ];
    (
        prop::sample::select(vec![
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
            "wizard",
            "",
        ]),
        content,
        prop::option::of(value()),
    )
        .prop_map(|(role, content, extra)| {
            let mut message = serde_json::json!({"role": role, "content": content});
            if let Some(extra) = extra {
                message["tool_calls"] = extra;
            }
            message
        })
}

/// A request object: mostly-plausible `model` and `messages`/`prompt`, then real field names
/// with random values, and a few random keys.
fn request(chat: bool) -> impl Strategy<Value = Value> {
    let main = if chat {
        prop_oneof![
            4 => prop::collection::vec(message(), 0..4).prop_map(Value::Array),
            1 => value(),
        ]
        .boxed()
    } else {
        prop_oneof![
            2 => any::<String>().prop_map(Value::String),
            1 => prop::collection::vec(any::<String>(), 0..20).prop_map(|v| serde_json::json!(v)),
            1 => prop::collection::vec(any::<u32>(), 0..8).prop_map(|v| serde_json::json!(v)),
            1 => prop::collection::vec(prop::collection::vec(0u32..60_000, 0..4), 0..4)
                .prop_map(|v| serde_json::json!(v)),
            1 => value(),
        ]
        .boxed()
    };
    (
        prop_oneof![
            4 => Just(Value::String("smol".into())),
            1 => value(),
        ],
        main,
        prop::collection::vec((prop::sample::select(FIELDS), value()), 0..8),
        prop::collection::vec((any::<String>(), leaf()), 0..2),
    )
        .prop_map(move |(model, main, fields, junk)| {
            let mut object = Map::new();
            object.insert("model".into(), model);
            object.insert(if chat { "messages" } else { "prompt" }.into(), main);
            for (key, value) in fields {
                object.insert(key.to_owned(), value);
            }
            for (key, value) in junk {
                object.insert(key, value);
            }
            Value::Object(object)
        })
}

/// Serialised JSON with a few bytes changed: invalid UTF-8, truncation, stray characters.
fn mangled(chat: bool) -> impl Strategy<Value = Vec<u8>> {
    (
        request(chat),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(value, edits, cut)| {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if let Some(cut) = cut {
                let len = bytes.len();
                bytes.truncate(cut.index(len + 1));
            }
            bytes
        })
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise_chat(&bytes)?;
        exercise_completion(&bytes)?;
    }

    #[test]
    fn chat_requests_never_panic_and_errors_are_4xx(body in request(true)) {
        exercise_chat(&serde_json::to_vec(&body).unwrap())?;
    }

    #[test]
    fn completion_requests_never_panic_and_errors_are_4xx(body in request(false)) {
        exercise_completion(&serde_json::to_vec(&body).unwrap())?;
    }

    #[test]
    fn mangled_requests_never_panic(chat in mangled(true), completion in mangled(false)) {
        exercise_chat(&chat)?;
        exercise_completion(&completion)?;
    }

    /// Field values of every type, one field at a time on a valid request: whatever is wrong
    /// is reported against that field (a type error names a path inside it).
    #[test]
    fn a_bad_field_is_named(field in prop::sample::select(FIELDS), value in value()) {
        let mut body = serde_json::json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "hi"}],
            "prompt": "hi",
        });
        body[field] = value;
        for chat in [true, false] {
            let bytes = serde_json::to_vec(&body).unwrap();
            let error = if chat {
                parse_request::<ChatCompletionRequest>(&bytes).err().or_else(|| {
                    let r = parse_request::<ChatCompletionRequest>(&bytes).unwrap();
                    r.params().err().or_else(|| r.sampling.choices().err()).or_else(|| r.template_messages().err())
                })
            } else {
                parse_request::<CompletionRequest>(&bytes).err().or_else(|| {
                    let r = parse_request::<CompletionRequest>(&bytes).unwrap();
                    r.params().err().or_else(|| r.sampling.choices().err()).or_else(|| r.prompts().err())
                })
            };
            if let Some(error) = error {
                check_error(&error)?;
                // `response_format` and the `guided_*` fields exclude each other: the error
                // names the second one. Otherwise the one bad field is the one named.
                let param = error.param.clone().unwrap_or_default();
                let expected = match field {
                    "messages" if !chat => None,
                    "prompt" if chat => None,
                    other => Some(other),
                };
                if let Some(expected) = expected {
                    prop_assert!(
                        param.starts_with(expected) || (expected == "max_tokens" && param == "max_completion_tokens"),
                        "{field} = {}: param {param:?} ({})",
                        body[field],
                        error.message
                    );
                }
            }
        }
    }
}
