//! Per-request bookkeeping: the `x-request-id` (the client's when it is plain, else
//! generated; always echoed), the facts handlers learn along the way, one access-log line
//! when the response body is done (streams included), and the rejection counter.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::admission::Priority;
use crate::ids::{self, valid_request_id};
use crate::metrics::Rejection;
use crate::state::AppState;

pub const REQUEST_ID: &str = "x-request-id";

/// What one request turned out to be, filled in as it runs.
#[derive(Debug, Default, Clone)]
pub struct AccessFields {
    pub model: Option<String>,
    pub priority: Option<Priority>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub queue_time: Option<Duration>,
    /// Set when a stream ends with an error after its 200 was sent.
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct AccessRecord {
    pub request_id: String,
    pub arrived: Instant,
    fields: Mutex<AccessFields>,
}

impl AccessRecord {
    pub fn new(request_id: String) -> AccessRecord {
        AccessRecord {
            request_id,
            arrived: Instant::now(),
            fields: Mutex::new(AccessFields::default()),
        }
    }

    pub fn fields(&self) -> MutexGuard<'_, AccessFields> {
        self.fields.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The error code an `HttpError` response carried, for classifying rejections.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub Option<String>);

/// Middleware: request id in, request id out, one log line and the rejection count after.
pub async fn track(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| valid_request_id(id))
        .map(str::to_owned)
        .unwrap_or_else(ids::request_id);
    let record = Arc::new(AccessRecord::new(request_id.clone()));
    request.extensions_mut().insert(record.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();

    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .and_then(|c| c.0.clone());
    if let Some(reason) = rejection(status, code.as_deref()) {
        let model = record.fields().model.clone().unwrap_or_default();
        state.metrics.reject(&model, reason);
    }
    if path.starts_with("/health") || path == "/metrics" {
        return response;
    }
    // Log when the body is finished (or the client goes away), so streams log their totals.
    let line = AccessLine {
        record,
        method: method.to_string(),
        path,
        status,
    };
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, axum::body::Body::new(Logged { body, _line: line }))
}

/// A response body that logs its access line when dropped: after the last frame, or when
/// the client goes away. It forwards the body's size, so a JSON answer keeps its
/// `Content-Length` instead of going out chunked.
struct Logged {
    body: axum::body::Body,
    _line: AccessLine,
}

impl http_body::Body for Logged {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn rejection(status: StatusCode, code: Option<&str>) -> Option<Rejection> {
    match (status.as_u16(), code) {
        (401, _) => Some(Rejection::Unauthorized),
        (429, Some("queue_full")) => Some(Rejection::QueueFull),
        (429, _) => Some(Rejection::RateLimited),
        (503, Some("queue_timeout")) => Some(Rejection::QueueTimeout),
        (400 | 403 | 404 | 405 | 408 | 413 | 415 | 422, _) => Some(Rejection::Invalid),
        _ => None,
    }
}

struct AccessLine {
    record: Arc<AccessRecord>,
    method: String,
    path: String,
    status: StatusCode,
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        let fields = self.record.fields().clone();
        tracing::info!(
            target: "hearth_access",
            request_id = %self.record.request_id,
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            model = fields.model.as_deref().unwrap_or("-"),
            priority = fields.priority.map(Priority::as_str).unwrap_or("-"),
            prompt_tokens = fields.prompt_tokens,
            completion_tokens = fields.completion_tokens,
            queue_ms = fields.queue_time.map(|t| t.as_millis() as u64).unwrap_or(0),
            total_ms = self.record.arrived.elapsed().as_millis() as u64,
            error = fields.error.as_deref().unwrap_or("-"),
            "request"
        );
    }
}
