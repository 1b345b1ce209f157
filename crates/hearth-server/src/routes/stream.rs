//! Turning a started request into a response: collected JSON, or OpenAI-style SSE
//! (`data: {chunk}` events, `data: [DONE]` at the end, comment keep-alives while waiting).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hearth_api::chat::Usage;
use hearth_api::logprobs::TokenOutput;
use hearth_api::tools::{FunctionCall, ToolCall, ToolCallDelta};
use hearth_api::ApiError;
use serde_json::Value;

use crate::generate::Started;
use crate::worker::WorkerEvent;

/// Comment lines keep proxies and clients from timing out while a long prompt is read.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What every response and chunk of one request carries.
pub struct ResponseHead {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
    /// `chat.completion.chunk` or `text_completion`.
    chunk_object: &'static str,
}

impl ResponseHead {
    pub fn new(id: String, model: &str, chunk_object: &'static str) -> ResponseHead {
        ResponseHead {
            id,
            created: hearth_api::unix_now(),
            model: model.to_owned(),
            fingerprint: crate::ids::system_fingerprint(),
            chunk_object,
        }
    }

    pub fn chunk(&self, choices: Value) -> Value {
        serde_json::json!({
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        })
    }

    /// The last chunk when `include_usage` was asked for: no choices, the totals.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut chunk = self.chunk(serde_json::json!([]));
        chunk["usage"] = serde_json::json!(usage);
        chunk
    }
}

/// One finished choice.
#[derive(Debug, Default)]
pub struct ChoiceResult {
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub tokens: Vec<TokenOutput>,
    pub finish_reason: String,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    /// Which of the request's stop strings ended it, if one did.
    pub stop_index: Option<usize>,
}

impl ChoiceResult {
    /// Add a call's first piece (id and name) or more of its arguments.
    fn add_call_piece(&mut self, piece: ToolCallDelta) {
        let index = piece.index as usize;
        if let (Some(id), Some(name)) = (piece.id, piece.name) {
            self.tool_calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: piece.arguments,
                },
            });
        } else if let Some(call) = self.tool_calls.get_mut(index) {
            call.function.arguments.push_str(&piece.arguments);
        }
    }
}

/// What one delta event adds to a choice.
pub struct Piece<'a> {
    pub text: &'a str,
    pub reasoning: &'a str,
    pub tool_calls: &'a [ToolCallDelta],
    pub tokens: &'a [TokenOutput],
}

/// Wait for every choice; the first error wins.
pub async fn collect(mut started: Started) -> Result<(Vec<ChoiceResult>, Usage), ApiError> {
    let mut results: Vec<ChoiceResult> = (0..started.choices())
        .map(|_| ChoiceResult::default())
        .collect();
    while let Some((index, event)) = started.next().await? {
        let result = &mut results[index];
        match event {
            WorkerEvent::Accepted { .. } => {}
            WorkerEvent::Delta {
                text,
                reasoning,
                tool_calls,
                tokens,
                ..
            } => {
                result.text.push_str(&text);
                result.reasoning.push_str(&reasoning);
                for piece in tool_calls {
                    result.add_call_piece(piece);
                }
                result.tokens.extend(tokens);
            }
            WorkerEvent::Done {
                finish_reason,
                completion_tokens,
                cached_tokens,
                stop_index,
            } => {
                result.finish_reason = finish_reason;
                result.completion_tokens = completion_tokens;
                result.cached_tokens = cached_tokens;
                result.stop_index = stop_index;
            }
            WorkerEvent::Failed(error) | WorkerEvent::Lost(error) => return Err(error),
        }
    }
    let completion = results.iter().map(|r| r.completion_tokens).sum();
    let cached: Vec<usize> = results.iter().map(|r| r.cached_tokens).collect();
    let usage = started.usage(completion, &cached);
    Ok((results, usage))
}

/// The shape of one endpoint's stream events.
pub trait ChunkFormat: Send + 'static {
    /// Sent for each choice before its first token (chat: the role).
    fn opening(&mut self, index: usize) -> Vec<Value>;
    /// New text (and reasoning, call pieces) and the tokens behind it.
    fn delta(&mut self, index: usize, piece: Piece<'_>) -> Vec<Value>;
    /// A choice ended (`stop_index`: by the request's stop string with that index).
    fn finish(
        &mut self,
        index: usize,
        finish_reason: &str,
        stop_index: Option<usize>,
    ) -> Vec<Value>;
    /// After the last choice: OpenAI's usage chunk (when asked for), and then `[DONE]`
    /// unless `done_marker` says otherwise.
    fn close(&mut self, usage: Usage, include_usage: bool) -> Vec<Value>;
    /// Whether `data: [DONE]` ends the stream (OpenAI's APIs).
    fn done_marker(&self) -> bool {
        true
    }
    /// Whether each event is named by its chunk's `type` (`event: message_start`, as
    /// Anthropic's and OpenAI's Responses streams are).
    fn named_events(&self) -> bool {
        false
    }
    /// The event that reports an error after the stream began.
    fn error(&self, error: &ApiError) -> Value {
        error.body()
    }
}

/// OpenAI's chunk shapes (chat and text completions): at most one chunk per event, the
/// usage chunk at the end when asked for, then `[DONE]`.
pub trait OpenAiChunks: Send + 'static {
    fn head(&self) -> &ResponseHead;
    fn opening_chunk(&self, index: usize) -> Option<Value>;
    fn delta_chunk(&mut self, index: usize, piece: Piece<'_>) -> Option<Value>;
    fn finish_chunk(&self, index: usize, finish_reason: &str) -> Value;
}

impl<T: OpenAiChunks> ChunkFormat for T {
    fn opening(&mut self, index: usize) -> Vec<Value> {
        self.opening_chunk(index).into_iter().collect()
    }

    fn delta(&mut self, index: usize, piece: Piece<'_>) -> Vec<Value> {
        self.delta_chunk(index, piece).into_iter().collect()
    }

    fn finish(&mut self, index: usize, finish_reason: &str, _: Option<usize>) -> Vec<Value> {
        vec![self.finish_chunk(index, finish_reason)]
    }

    fn close(&mut self, usage: Usage, include_usage: bool) -> Vec<Value> {
        include_usage
            .then(|| self.head().usage_chunk(usage))
            .into_iter()
            .collect()
    }
}

struct Driver<F> {
    started: Started,
    format: F,
    include_usage: bool,
    queue: VecDeque<Event>,
    opened: bool,
    finished: bool,
    completion_tokens: usize,
    /// Each choice's prompt-cache hit, by choice index.
    cached: Vec<usize>,
}

pub fn sse<F: ChunkFormat>(started: Started, format: F, include_usage: bool) -> Response {
    let choices = started.choices();
    let driver = Driver {
        started,
        format,
        include_usage,
        queue: VecDeque::new(),
        opened: false,
        finished: false,
        completion_tokens: 0,
        cached: vec![0; choices],
    };
    let stream = futures_util::stream::unfold(driver, |mut driver| async move {
        driver
            .next_event()
            .await
            .map(|event| (Ok::<_, Infallible>(event), driver))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

impl<F: ChunkFormat> Driver<F> {
    fn push(&mut self, mut chunk: Value) {
        // With include_usage, OpenAI sends `"usage": null` on every chunk but the last.
        if self.include_usage {
            if let Some(object) = chunk.as_object_mut() {
                object.entry("usage").or_insert(Value::Null);
            }
        }
        let mut event = Event::default();
        if self.format.named_events() {
            if let Some(name) = chunk.get("type").and_then(Value::as_str) {
                event = event.event(name);
            }
        }
        self.queue.push_back(event.data(chunk.to_string()));
    }

    fn push_all(&mut self, chunks: Vec<Value>) {
        for chunk in chunks {
            self.push(chunk);
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            if !self.opened {
                self.opened = true;
                for index in 0..self.started.choices() {
                    let chunks = self.format.opening(index);
                    self.push_all(chunks);
                }
                continue;
            }
            match self.started.next().await {
                Ok(Some((index, event))) => self.on_event(index, event),
                Ok(None) => {
                    let usage = self.started.usage(self.completion_tokens, &self.cached);
                    let chunks = self.format.close(usage, self.include_usage);
                    // The usage chunk is the one chunk without `"usage": null`.
                    self.include_usage = false;
                    self.push_all(chunks);
                    if self.format.done_marker() {
                        self.queue.push_back(Event::default().data("[DONE]"));
                    }
                    self.finished = true;
                }
                Err(error) => self.fail(error),
            }
        }
    }

    fn on_event(&mut self, index: usize, event: WorkerEvent) {
        match event {
            WorkerEvent::Accepted { .. } => {}
            WorkerEvent::Delta {
                text,
                reasoning,
                tool_calls,
                tokens,
                ..
            } => {
                let piece = Piece {
                    text: &text,
                    reasoning: &reasoning,
                    tool_calls: &tool_calls,
                    tokens: &tokens,
                };
                let chunks = self.format.delta(index, piece);
                self.push_all(chunks);
            }
            WorkerEvent::Done {
                finish_reason,
                completion_tokens,
                cached_tokens,
                stop_index,
            } => {
                self.completion_tokens += completion_tokens;
                self.cached[index] = cached_tokens;
                let chunks = self.format.finish(index, &finish_reason, stop_index);
                self.push_all(chunks);
            }
            WorkerEvent::Failed(error) | WorkerEvent::Lost(error) => self.fail(error),
        }
    }

    /// An error after the stream began: one error event, then the stream ends.
    fn fail(&mut self, error: ApiError) {
        tracing::warn!(%error, "stream ended with an error");
        let chunk = self.format.error(&error);
        self.include_usage = false;
        self.push(chunk);
        self.finished = true;
    }
}
