//! OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` plus an HTTP status.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds a client should wait before retrying (the `Retry-After` header).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ApiError,
}

impl ApiError {
    pub fn new(status: u16, kind: &str, code: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind: kind.to_owned(),
            param: None,
            code: code.map(str::to_owned),
            retry_after: None,
        }
    }

    pub fn with_param(mut self, param: Option<&str>) -> Self {
        self.param = param.map(str::to_owned);
        self
    }

    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(400, "invalid_request_error", None, message).with_param(param)
    }

    pub fn invalid_value(param: &str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", Some("invalid_value"), message)
            .with_param(Some(param))
    }

    pub fn context_length_exceeded(prompt_tokens: usize, context_tokens: usize) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
            format!(
                "This model's maximum context length is {context_tokens} tokens, \
                 but the prompt is {prompt_tokens} tokens. Shorten the prompt."
            ),
        )
        .with_param(Some("messages"))
    }

    /// Prompt plus `max_tokens` do not fit the context (OpenAI's wording and code).
    pub fn completion_exceeds_context(
        prompt_tokens: usize,
        max_tokens: usize,
        context_tokens: usize,
    ) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
            format!(
                "This model's maximum context length is {context_tokens} tokens. However, you \
                 requested {} tokens ({prompt_tokens} in the prompt, {max_tokens} in the \
                 completion). Please reduce the prompt or max_tokens.",
                prompt_tokens + max_tokens
            ),
        )
        .with_param(Some("max_tokens"))
    }

    /// Image parts sent to a model without a vision projector.
    pub fn model_not_multimodal() -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("model_not_multimodal"),
            "this model reads no images: it was not served with a vision projector (--mmproj, \
             an mmproj*.gguf beside the model file, or `mmproj` in its config entry)",
        )
        .with_param(Some("messages"))
    }

    /// Text generation asked of an encoder, which only embeds.
    pub fn embedding_model_only() -> Self {
        Self::invalid_value(
            "model",
            "this is an embedding model (its attention is not causal): it serves \
             /v1/embeddings, not text generation",
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model '{model}' does not exist or is not served here"),
        )
        .with_param(Some("model"))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "invalid_request_error", Some("not_found"), message)
    }

    pub fn worker_failed(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", Some("worker_unavailable"), message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "server_error", Some("timeout"), message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", Some("internal_error"), message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", Some("unavailable"), message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Every slot is busy and too many requests already wait.
    pub fn queue_full(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(429, "server_error", Some("queue_full"), message)
            .with_retry_after(retry_after_secs)
    }

    /// Waited in the queue past the priority's timeout.
    pub fn queue_timeout(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", Some("queue_timeout"), message)
    }

    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(429, "requests", Some("rate_limit_exceeded"), message)
            .with_retry_after(retry_after_secs)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("The request body is larger than this server's limit of {limit} bytes."),
        )
    }

    /// The body did not arrive in full within the server's body timeout.
    pub fn request_timeout(seconds: f64) -> Self {
        Self::new(
            408,
            "invalid_request_error",
            Some("request_timeout"),
            format!("The request body did not arrive within {seconds} s."),
        )
    }

    /// A POST whose body is not declared as JSON.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let got = match got {
            Some(value) => format!("got Content-Type {value:?}"),
            None => "no Content-Type was sent".to_owned(),
        };
        Self::new(
            415,
            "invalid_request_error",
            Some("unsupported_media_type"),
            format!("Send the request body as JSON with Content-Type: application/json ({got})."),
        )
    }

    /// `allow` lists the methods the path does take (the `Allow` header's value).
    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> Self {
        let allowed = if allow.is_empty() {
            String::new()
        } else {
            format!(" (allowed: {allow})")
        };
        Self::new(
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("Method {method} is not allowed on {path}{allowed}."),
        )
    }

    /// The `Host` header names a host this server does not answer to (DNS rebinding).
    pub fn host_not_allowed(host: &str) -> Self {
        Self::new(
            403,
            "invalid_request_error",
            Some("host_not_allowed"),
            format!(
                "Host {host:?} is not allowed. Start the server with --allowed-hosts {host} to \
                 accept it."
            ),
        )
    }

    /// The JSON body clients receive.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Envelope { error: self }).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}
