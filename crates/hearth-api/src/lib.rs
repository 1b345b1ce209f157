//! OpenAI wire types for hearth: requests, responses, stream chunks, validation, and the
//! error type with its JSON body and HTTP status.

pub mod anthropic;
pub mod chat;
pub mod completions;
pub mod depth;
pub mod embeddings;
pub mod error;
pub mod format;
pub mod logprobs;
pub mod models;
pub mod params;
pub mod priority;
pub mod responses;
pub mod tools;

pub use error::ApiError;
pub use params::{GenerationParams, StopSpec};
pub use priority::Priority;

/// Parse a JSON request body; a type error names the parameter it is about.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Err(deep) = depth::check_depth(body, depth::MAX_JSON_DEPTH) {
        let limit = depth::MAX_JSON_DEPTH;
        let message = match &deep.field {
            Some(field) => format!("'{field}' is nested more than {limit} levels deep"),
            None => format!("the request body is nested more than {limit} levels deep"),
        };
        return Err(ApiError::invalid_request(message, deep.field.as_deref()));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(format!("the request body is not valid JSON: {e}"), None)
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid_request(
            "the request body must be a JSON object",
            None,
        ));
    }
    from_value(&value)
}

/// A request with the sampling fields both endpoints share. They are read in a second pass
/// rather than with `#[serde(flatten)]`, which would lose the path of a bad value.
pub fn parse_request<T: WithSampling>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = parse_body(body)?;
    request_from_value(&value)
}

/// `parse_request` for a body already parsed (and depth-checked) into a value.
pub fn request_from_value<T: WithSampling>(value: &serde_json::Value) -> Result<T, ApiError> {
    let mut request: T = from_value(value)?;
    *request.sampling_mut() = from_value(value)?;
    request.sampling_mut().guided = from_value(value)?;
    Ok(request)
}

/// A request body that carries the shared sampling fields.
pub trait WithSampling: serde::de::DeserializeOwned {
    fn sampling_mut(&mut self) -> &mut params::SamplingFields;
}

impl WithSampling for chat::ChatCompletionRequest {
    fn sampling_mut(&mut self) -> &mut params::SamplingFields {
        &mut self.sampling
    }
}

impl WithSampling for completions::CompletionRequest {
    fn sampling_mut(&mut self) -> &mut params::SamplingFields {
        &mut self.sampling
    }
}

/// A value already parsed (and depth-checked) as a request type; a type error names the
/// parameter.
pub fn parse_value<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, ApiError> {
    from_value(value)
}

fn from_value<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let param = (path != ".").then_some(path);
        ApiError::invalid_request(format!("invalid request: {inner}"), param.as_deref())
    })
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
