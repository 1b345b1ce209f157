//! OpenAI's `POST /v1/embeddings`: the request (one input or many, as text or token ids;
//! `encoding_format`; `dimensions`), its checks, and the base64 form of float vectors that
//! the response (when asked) and the worker's answer use.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ApiError;

/// Inputs per request, as OpenAI allows.
pub const MAX_INPUTS: usize = 2048;
/// Tokens per request, as OpenAI allows (~2 minutes of a small encoder on 2 CPU threads).
pub const MAX_TOKENS: usize = 300_000;
/// Floats per answer (inputs × dimensions): 32 MiB of vectors, whose base64 fits one
/// worker frame.
pub const MAX_FLOATS: usize = 8 << 20;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"model": "default", "input": ["The sea is calm.", "A quiet ocean."]}))]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Value,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<Value>,
    /// A hint for abuse monitoring at OpenAI; nothing to do here.
    #[serde(default)]
    pub user: Option<Value>,
}

/// One input as the worker gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmbedInput {
    /// Tokenized by the worker, with the model's special tokens (BERT's `[CLS]`/`[SEP]`).
    Text(String),
    /// Used as given.
    Tokens(Vec<u32>),
}

impl EmbeddingRequest {
    /// The inputs: a string, a list of strings, a list of token ids, or a list of those.
    pub fn inputs(&self) -> Result<Vec<EmbedInput>, ApiError> {
        let invalid = |message: &str| ApiError::invalid_value("input", format!("input: {message}"));
        let inputs = match &self.input {
            Value::String(text) => vec![EmbedInput::Text(text.clone())],
            Value::Array(items) if items.is_empty() => {
                return Err(invalid("must not be an empty list"))
            }
            Value::Array(items) if items.iter().all(Value::is_string) => items
                .iter()
                .map(|v| EmbedInput::Text(v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            Value::Array(items) if items.iter().all(Value::is_number) => {
                vec![EmbedInput::Tokens(token_ids(items).ok_or_else(|| {
                    invalid("token ids must be non-negative integers")
                })?)]
            }
            Value::Array(items) if items.iter().all(Value::is_array) => items
                .iter()
                .map(|v| {
                    let ids = v.as_array().map(Vec::as_slice).unwrap_or_default();
                    match token_ids(ids) {
                        Some(ids) if !ids.is_empty() => Ok(EmbedInput::Tokens(ids)),
                        Some(_) => Err(invalid("a list of token ids must not be empty")),
                        None => Err(invalid("token ids must be non-negative integers")),
                    }
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(invalid(
                    "must be a string, a list of strings, a list of token ids, or a list of \
                     lists of token ids",
                ))
            }
        };
        if inputs.len() > MAX_INPUTS {
            return Err(invalid(&format!(
                "at most {MAX_INPUTS} inputs per request (got {})",
                inputs.len()
            )));
        }
        if inputs
            .iter()
            .any(|i| matches!(i, EmbedInput::Text(t) if t.is_empty()))
        {
            return Err(invalid("an input string must not be empty"));
        }
        Ok(inputs)
    }

    /// Whether vectors go back as base64 (little-endian f32) rather than float lists.
    pub fn base64(&self) -> Result<bool, ApiError> {
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(false),
            Some("base64") => Ok(true),
            Some(other) => Err(ApiError::invalid_value(
                "encoding_format",
                format!("encoding_format: must be 'float' or 'base64', not '{other}'"),
            )),
        }
    }

    /// Check `dimensions` against the model's: only its own length can be served (cutting
    /// vectors short is right only for models trained for it, which a GGUF does not say).
    pub fn check_dimensions(&self, model_dims: usize) -> Result<(), ApiError> {
        match &self.dimensions {
            None | Some(Value::Null) => Ok(()),
            Some(v) if v.as_u64() == Some(model_dims as u64) => Ok(()),
            Some(v) if v.as_u64().is_some_and(|d| d >= 1) => Err(ApiError::invalid_value(
                "dimensions",
                format!(
                    "dimensions: this model's embeddings have {model_dims} dimensions and \
                     cannot be shortened to {v}"
                ),
            )),
            Some(_) => Err(ApiError::invalid_value(
                "dimensions",
                "dimensions: must be a positive integer",
            )),
        }
    }
}

fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect()
}

/// Floats as base64 of their little-endian bytes (OpenAI's `encoding_format: base64`).
pub fn f32s_to_base64(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of `f32s_to_base64`; `None` if it is not such a string.
pub fn base64_to_f32s(text: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(input: Value) -> EmbeddingRequest {
        serde_json::from_value(json!({"model": "m", "input": input})).unwrap()
    }

    #[test]
    fn every_input_form_openai_takes() {
        assert_eq!(
            request(json!("hi")).inputs().unwrap(),
            vec![EmbedInput::Text("hi".into())]
        );
        assert_eq!(request(json!(["a", "b"])).inputs().unwrap().len(), 2);
        assert_eq!(
            request(json!([1, 2, 3])).inputs().unwrap(),
            vec![EmbedInput::Tokens(vec![1, 2, 3])]
        );
        assert_eq!(
            request(json!([[1], [2, 3]])).inputs().unwrap(),
            vec![EmbedInput::Tokens(vec![1]), EmbedInput::Tokens(vec![2, 3])]
        );
        for bad in [
            json!([]),
            json!(""),
            json!(["a", ""]),
            json!(["a", 1]),
            json!([-1]),
            json!([1.5]),
            json!([[]]),
            json!({"text": "x"}),
            json!(vec!["x"; MAX_INPUTS + 1]),
        ] {
            let e = request(bad.clone()).inputs().unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some("input")),
                "{bad}"
            );
        }
    }

    #[test]
    fn formats_and_dimensions() {
        let mut r = request(json!("x"));
        assert!(!r.base64().unwrap());
        r.encoding_format = Some("base64".into());
        assert!(r.base64().unwrap());
        r.encoding_format = Some("int8".into());
        assert!(r.base64().is_err());
        assert!(r.check_dimensions(384).is_ok());
        r.dimensions = Some(json!(384));
        assert!(r.check_dimensions(384).is_ok());
        r.dimensions = Some(json!(128));
        assert_eq!(
            r.check_dimensions(384).unwrap_err().param.as_deref(),
            Some("dimensions")
        );
        let v = [1.0f32, -0.5, 3.25e-7];
        assert_eq!(base64_to_f32s(&f32s_to_base64(&v)).unwrap(), v);
        assert!(base64_to_f32s("!!").is_none());
    }
}
