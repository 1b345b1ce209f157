//! Property tests for the orchestrator⇄worker frame codec, through its public functions
//! only (`write_frame`, `read_frame` and their async twins), so they follow changes to the
//! frame layout: arbitrary bytes never panic a reader, and every message round-trips, one
//! after another, through readers that return data in arbitrary small pieces.
//!
//! Short by default; `PROPTEST_CASES=100000 cargo test --release -p hearth-ipc --test
//! fuzz_codec` for a long run (see docs/testing.md).

use std::io::Read;

use hearth_api::format::JsonFormat;
use hearth_api::logprobs::{TokenOutput, TopToken};
use hearth_api::{ApiError, GenerationParams};
use hearth_ipc::{
    read_frame, read_frame_async, write_frame, FrameIds, FromWorker, Incoming, PromptSpec,
    ToWorker, WorkerReady, WorkerStatus,
};
use proptest::prelude::*;
use serde_json::Value;

#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;
use proptest_config::config;

/// A reader that hands out at most `sizes[i]` bytes per call, like a socket.
struct Trickle<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    call: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes[self.call % self.sizes.len()].max(1);
        self.call += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Read frames until the end or an error; panics are what we look for.
fn drain<T: serde::de::DeserializeOwned>(mut reader: impl Read) -> usize {
    let mut frames = 0;
    while let Ok(Some(_)) = read_frame::<_, T>(&mut reader) {
        frames += 1;
    }
    frames
}

// ---------------------------------------------------------------------------------------
// Strategies for every message.

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>().prop_filter("finite", |f| f.is_finite()),
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::MAX),
        Just(f32::MIN_POSITIVE),
        Just(-1e-45f32),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just(String::new()),
        Just("\u{0}\u{fffd}\"\\\n😀".to_owned()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Exactly representable decimals: serde_json's default float parser is not
        // correctly rounded for every f64, which is not what this test is about.
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 4.0)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(8, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_format() -> impl Strategy<Value = JsonFormat> {
    prop_oneof![
        Just(JsonFormat::Object),
        json_value().prop_map(JsonFormat::Schema),
        text().prop_map(JsonFormat::Regex),
        prop::collection::vec(text(), 0..4).prop_map(JsonFormat::Choice),
    ]
}

fn params() -> impl Strategy<Value = GenerationParams> {
    (
        (
            finite_f32(),
            finite_f32(),
            any::<usize>(),
            finite_f32(),
            finite_f32(),
            finite_f32(),
            finite_f32(),
        ),
        (
            prop::collection::vec((any::<u32>(), finite_f32()), 0..4),
            any::<Option<u64>>(),
            any::<Option<usize>>(),
            any::<Option<usize>>(),
            prop::collection::vec(text(), 0..4),
            prop::option::of(json_format()),
        ),
    )
        .prop_map(
            |(
                (
                    temperature,
                    top_p,
                    top_k,
                    min_p,
                    repetition_penalty,
                    frequency_penalty,
                    presence_penalty,
                ),
                (logit_bias, seed, top_logprobs, max_tokens, stop, json),
            )| GenerationParams {
                temperature,
                top_p,
                top_k,
                min_p,
                repetition_penalty,
                frequency_penalty,
                presence_penalty,
                logit_bias,
                seed,
                top_logprobs,
                max_tokens,
                stop,
                json,
            },
        )
}

fn prompt() -> impl Strategy<Value = PromptSpec> {
    prop_oneof![
        (
            prop::collection::vec(json_value(), 0..4),
            prop::option::of(prop::collection::vec(json_value(), 0..3)),
        )
            .prop_map(|(messages, tools)| PromptSpec::Chat {
                messages,
                tools,
                tool_use: None,
                images: Vec::new(),
                image_marker: String::new(),
                keep: Default::default(),
            }),
        text().prop_map(PromptSpec::Text),
        prop::collection::vec(any::<u32>(), 0..64).prop_map(PromptSpec::Tokens),
    ]
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        (
            any::<u64>(),
            prompt(),
            prop::collection::vec(params(), 0..3),
            prop::sample::select(hearth_api::Priority::ALL.to_vec()),
        )
            .prop_map(|(id, prompt, choices, priority)| ToWorker::Generate {
                id,
                prompt: std::sync::Arc::new(prompt),
                choices,
                priority,
            }),
        any::<u64>().prop_map(|id| ToWorker::Cancel { id }),
        any::<u64>().prop_map(|nonce| ToWorker::Ping { nonce }),
        Just(ToWorker::Shutdown),
    ]
}

fn token(logprob: BoxedStrategy<f32>) -> impl Strategy<Value = TokenOutput> {
    (
        any::<u32>(),
        text(),
        prop::collection::vec(any::<u8>(), 0..8),
        prop::option::of(logprob.clone()),
        prop::collection::vec(
            (
                any::<u32>(),
                text(),
                prop::collection::vec(any::<u8>(), 0..8),
                logprob,
            ),
            0..5,
        ),
    )
        .prop_map(|(id, text, bytes, logprob, top)| TokenOutput {
            id,
            text,
            bytes,
            logprob,
            top: top
                .into_iter()
                .map(|(id, text, bytes, logprob)| TopToken {
                    id,
                    text,
                    bytes,
                    logprob,
                })
                .collect(),
        })
}

fn api_error() -> impl Strategy<Value = ApiError> {
    (
        any::<u16>(),
        text(),
        text(),
        any::<Option<String>>(),
        any::<Option<String>>(),
    )
        .prop_map(|(status, message, kind, param, code)| ApiError {
            status,
            message,
            kind,
            param,
            code,
            retry_after: None,
        })
}

fn status() -> impl Strategy<Value = WorkerStatus> {
    (
        (
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
        ),
        (any::<usize>(), any::<u64>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                (running, waiting, slots, kv_used),
                (kv_capacity, grammars_compiled, grammar_cache_hits, steps),
            )| {
                WorkerStatus {
                    running,
                    waiting,
                    slots,
                    kv_used,
                    kv_capacity,
                    grammars_compiled,
                    grammar_cache_hits,
                    steps,
                    ..WorkerStatus::default()
                }
            },
        )
}

fn from_worker(logprob: BoxedStrategy<f32>) -> impl Strategy<Value = FromWorker> {
    prop_oneof![
        (
            any::<u32>(),
            text(),
            any::<u32>(),
            any::<u32>(),
            any::<usize>(),
            any::<u64>()
        )
            .prop_map(
                |(pid, architecture, vocab_size, context_per_slot, slots, size_bytes)| {
                    FromWorker::Ready(WorkerReady {
                        pid,
                        architecture,
                        vocab_size,
                        context_per_slot,
                        slots,
                        size_bytes,
                        pooling: (slots % 2 == 0).then(|| "mean".to_owned()),
                        causal: size_bytes % 2 == 0,
                        vision: slots % 3 == 0,
                        gpu_layers: vocab_size % 33,
                        layers: 32,
                        vram_bytes: size_bytes / 2,
                    })
                }
            ),
        (any::<u64>(), any::<usize>())
            .prop_map(|(id, prompt_tokens)| FromWorker::Accepted { id, prompt_tokens }),
        (
            any::<u64>(),
            text(),
            text(),
            prop::collection::vec(token(logprob), 0..4),
            any::<usize>()
        )
            .prop_map(
                |(id, text, reasoning, tokens, token_count)| FromWorker::Delta {
                    id,
                    text,
                    reasoning,
                    tool_calls: vec![hearth_api::tools::ToolCallDelta {
                        index: 0,
                        id: Some("call_1".into()),
                        name: Some("f".into()),
                        arguments: text_arguments(&id.to_string()),
                    }],
                    tokens,
                    token_count,
                }
            ),
        (any::<u64>(), text(), any::<usize>(), any::<usize>()).prop_map(
            |(id, finish_reason, prompt_tokens, completion_tokens)| FromWorker::Done {
                id,
                finish_reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens: prompt_tokens / 2,
                stop_index: (completion_tokens % 3 == 0).then_some(completion_tokens % 4),
            }
        ),
        (any::<u64>(), any::<u16>(), api_error())
            .prop_map(|(id, status, error)| FromWorker::Failed { id, status, error }),
        (any::<u64>(), status()).prop_map(|(nonce, status)| FromWorker::Pong { nonce, status }),
        text().prop_map(|message| FromWorker::Fatal { message }),
    ]
}

/// `ApiError` does not carry its status or `retry_after` on the wire (the frame does).
fn comparable(message: &FromWorker) -> FromWorker {
    let mut message = message.clone();
    if let FromWorker::Failed { error, .. } = &mut message {
        error.status = 0;
        error.retry_after = None;
    }
    message
}

fn any_f32() -> BoxedStrategy<f32> {
    prop_oneof![
        any::<f32>(),
        Just(f32::NEG_INFINITY),
        Just(f32::INFINITY),
        Just(f32::NAN),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn arbitrary_bytes_never_panic_a_reader(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        sizes in prop::collection::vec(1usize..16, 1..4),
    ) {
        drain::<ToWorker>(bytes.as_slice());
        drain::<FromWorker>(bytes.as_slice());
        drain::<ToWorker>(Trickle { data: &bytes, sizes: sizes.clone(), call: 0 });
        drain::<FromWorker>(Trickle { data: &bytes, sizes, call: 0 });
    }

    /// Well-formed frames with a mangled body or length: errors, never panics, and a
    /// declared length far beyond the data never hangs (the reader hits the end).
    #[test]
    fn mangled_frames_never_panic_a_reader(
        messages in prop::collection::vec(to_worker(), 1..4),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Vec::new();
        for message in &messages {
            write_frame(&mut bytes, message).unwrap();
        }
        for (at, byte) in edits {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        drain::<ToWorker>(bytes.as_slice());
        let cut = cut.index(bytes.len() + 1);
        drain::<ToWorker>(&bytes[..cut]);
    }

    /// A frame whose body is arbitrary bytes with a correct header: it reads as a message
    /// or as unreadable *with the header's ids* (so those requests can be failed), and the
    /// stream goes on to the next frame.
    #[test]
    fn framed_garbage_names_its_requests(
        body in prop::collection::vec(any::<u8>(), 0..300),
        first in any::<u64>(),
        count in any::<u32>(),
    ) {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&first.to_be_bytes());
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&body);
        write_frame(&mut bytes, &ToWorker::Ping { nonce: 1 }).unwrap();
        let mut reader = bytes.as_slice();
        match read_frame::<_, ToWorker>(&mut reader).unwrap() {
            Some(Incoming::Message(message)) => {
                // It happened to be a message: then it reads back as itself.
                let mut again = Vec::new();
                write_frame(&mut again, &message).unwrap();
                prop_assert_eq!(
                    read_frame::<_, ToWorker>(&mut again.as_slice()).unwrap(),
                    Some(Incoming::Message(message))
                );
            }
            Some(Incoming::Unreadable { ids, .. }) => {
                prop_assert_eq!(ids, FrameIds { first, count });
            }
            None => prop_assert!(false, "a complete frame reads as something"),
        }
        prop_assert_eq!(
            read_frame::<_, ToWorker>(&mut reader).unwrap(),
            Some(Incoming::Message(ToWorker::Ping { nonce: 1 }))
        );
    }

    #[test]
    fn orchestrator_messages_round_trip(
        messages in prop::collection::vec(to_worker(), 1..6),
        sizes in prop::collection::vec(1usize..64, 1..4),
    ) {
        let mut bytes = Vec::new();
        for message in &messages {
            write_frame(&mut bytes, message).unwrap();
        }
        let mut reader = Trickle { data: &bytes, sizes, call: 0 };
        for message in &messages {
            let read = read_frame::<_, ToWorker>(&mut reader).unwrap();
            prop_assert_eq!(read, Some(Incoming::Message(message.clone())));
        }
        prop_assert_eq!(read_frame::<_, ToWorker>(&mut reader).unwrap(), None);
    }

    #[test]
    fn worker_messages_round_trip(
        messages in prop::collection::vec(from_worker(finite_f32().boxed()), 1..6),
        sizes in prop::collection::vec(1usize..64, 1..4),
    ) {
        let mut bytes = Vec::new();
        for message in &messages {
            write_frame(&mut bytes, message).unwrap();
        }
        let mut reader = Trickle { data: &bytes, sizes, call: 0 };
        for message in &messages {
            let read = match read_frame::<_, FromWorker>(&mut reader).unwrap() {
                Some(Incoming::Message(m)) => Some(comparable(&m)),
                other => panic!("expected a message, got {other:?}"),
            };
            prop_assert_eq!(read, Some(comparable(message)));
        }
        prop_assert_eq!(read_frame::<_, FromWorker>(&mut reader).unwrap(), None);
    }

    /// Non-finite logprobs (−inf from a grammar mask, NaN) must not panic the writer or the
    /// reader, whatever the codec decides to do with them.
    #[test]
    fn non_finite_floats_never_panic(message in from_worker(any_f32())) {
        let mut bytes = Vec::new();
        if write_frame(&mut bytes, &message).is_ok() {
            let _ = read_frame::<_, FromWorker>(&mut bytes.as_slice());
        }
    }
}

/// The async reader agrees with the sync one on arbitrary input.
#[test]
fn async_reader_agrees_on_arbitrary_bytes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(config(1000));
    runner
        .run(
            &prop_oneof![
                prop::collection::vec(any::<u8>(), 0..128),
                prop::collection::vec(to_worker(), 0..3).prop_map(|messages| {
                    let mut bytes = Vec::new();
                    for m in &messages {
                        write_frame(&mut bytes, m).unwrap();
                    }
                    bytes
                }),
            ],
            |bytes| {
                let mut sync_reader = bytes.as_slice();
                let mut async_reader = bytes.as_slice();
                loop {
                    let a = read_frame::<_, ToWorker>(&mut sync_reader);
                    let b = runtime.block_on(read_frame_async::<_, ToWorker>(&mut async_reader));
                    match (a, b) {
                        (Ok(a), Ok(b)) => {
                            prop_assert_eq!(&a, &b);
                            if a.is_none() {
                                break;
                            }
                        }
                        (Err(_), Err(_)) => break,
                        (a, b) => prop_assert!(false, "sync {a:?} vs async {b:?}"),
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Arguments text for a call piece (any text: the codec must carry it unchanged).
fn text_arguments(text: &str) -> String {
    text.chars().rev().collect()
}
