//! What handlers take from a request besides its JSON: the body within the size limit (an
//! OpenAI-style 413 past it) and the body timeout (408), the `X-Priority` header and the
//! request's access record.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use hearth_api::ApiError;

use crate::access::AccessRecord;
use crate::admission::Priority;
use crate::error::HttpError;
use crate::state::AppState;

/// The raw request body, at most `max_body_bytes`, in full within `body_timeout`.
pub struct RequestBody(pub Bytes);

impl FromRequest<AppState> for RequestBody {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.max_body_bytes;
        // A client that announces a body and then stalls must not hold the handler (and
        // its connection) forever.
        let read = axum::body::to_bytes(request.into_body(), limit);
        let body = tokio::time::timeout(state.body_timeout, read)
            .await
            .map_err(|_| ApiError::request_timeout(state.body_timeout.as_secs_f64()))?
            .map_err(|e| {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if too_large {
                    ApiError::body_too_large(limit)
                } else {
                    ApiError::invalid_request(format!("could not read the request body: {e}"), None)
                }
            })?;
        Ok(RequestBody(body))
    }
}

/// Who is asking and how urgently.
pub struct RequestMeta {
    pub priority: Priority,
    pub record: Arc<AccessRecord>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let record = parts
            .extensions
            .get::<Arc<AccessRecord>>()
            .cloned()
            .unwrap_or_else(|| Arc::new(AccessRecord::new(String::new())));
        let priority = match parts.headers.get("x-priority") {
            None => Priority::Normal,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(Priority::parse)
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "X-Priority",
                        format!(
                            "X-Priority must be high, normal or low, not {:?}",
                            String::from_utf8_lossy(value.as_bytes())
                        ),
                    )
                })?,
        };
        record.fields().priority = Some(priority);
        Ok(RequestMeta { priority, record })
    }
}
