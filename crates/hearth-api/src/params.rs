//! Sampling fields shared by chat and text completions, validated into `GenerationParams`:
//! the engine-neutral description of one generated sequence that travels to a worker.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most parallel choices per request.
pub const MAX_N: u32 = 16;
/// Most alternatives per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Longest stop string, in bytes. The stop matcher holds back and rescans up to this much
/// text per token: four 3 MiB stop strings slowed every stream of a worker to 35 ms/token.
pub const MAX_STOP_BYTES: usize = 1024;
/// Most sequences one request may run (prompts × `n`).
pub const MAX_SEQUENCES: usize = 64;
/// Most prompt bytes one request may ask the model to read, over all its sequences
/// (prompt bytes × `n`, summed over prompts). A 15 MiB prompt with `n: 16` would otherwise
/// mean 240 MiB of prefill work queued behind one request.
pub const MAX_PROMPT_WORK_BYTES: usize = 32 << 20;

/// Refuse requests whose total work is out of bounds before anything is queued.
/// `prompt_bytes` holds the size of each distinct prompt; each runs `n` times.
pub fn check_request_size(prompt_bytes: &[usize], n: u32) -> Result<(), ApiError> {
    let sequences = prompt_bytes.len() * n as usize;
    if sequences > MAX_SEQUENCES {
        return Err(ApiError::invalid_value(
            "n",
            format!(
                "this request would run {sequences} sequences ({} prompts × n = {n}); \
                 at most {MAX_SEQUENCES} are allowed",
                prompt_bytes.len()
            ),
        ));
    }
    let work: usize = prompt_bytes
        .iter()
        .map(|b| b.saturating_mul(n as usize))
        .sum();
    if work > MAX_PROMPT_WORK_BYTES {
        return Err(ApiError::invalid_value(
            "n",
            format!(
                "the prompt is {} bytes and n = {n}: {work} bytes to read in all, over this \
                 server's limit of {MAX_PROMPT_WORK_BYTES}; lower n or shorten the prompt",
                prompt_bytes.iter().sum::<usize>()
            ),
        ));
    }
    Ok(())
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both endpoints accept. Unknown fields are ignored, as OpenAI's clients expect.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (vLLM, llama.cpp): keep the K most likely tokens.
    pub top_k: Option<i64>,
    /// Extension: drop tokens below this fraction of the best one.
    pub min_p: Option<f32>,
    /// Extension: HF-style multiplicative penalty.
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub seed: Option<i64>,
    pub n: Option<u32>,
    pub stop: Option<StopSpec>,
    pub max_tokens: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    /// `text`, `json_object` or `json_schema`.
    pub response_format: Option<serde_json::Value>,
    /// vLLM's `guided_json`, `guided_regex`, `guided_choice`. Read in a pass of their own
    /// (`parse_request`): `#[serde(flatten)]` would lose the path of a bad value.
    #[serde(skip)]
    pub guided: crate::format::GuidedFields,
}

/// One sequence's generation settings, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// Alternatives per token; `None` reports no logprobs.
    pub top_logprobs: Option<usize>,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Structured output; `None` is free text.
    pub json: Option<crate::format::JsonFormat>,
}

fn in_range(
    param: &str,
    value: Option<f32>,
    lo: f32,
    hi: f32,
    default: f32,
) -> Result<f32, ApiError> {
    let v = value.unwrap_or(default);
    if !v.is_finite() || v < lo || v > hi {
        return Err(ApiError::invalid_value(
            param,
            format!("{param} must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(v)
}

impl SamplingFields {
    /// Validate and convert. `max_tokens` is the effective limit (chat prefers
    /// `max_completion_tokens`); `top_logprobs` is already resolved per endpoint.
    pub fn to_params(
        &self,
        max_tokens: Option<u32>,
        top_logprobs: Option<usize>,
    ) -> Result<GenerationParams, ApiError> {
        let temperature = in_range("temperature", self.temperature, 0.0, 2.0, 1.0)?;
        let top_p = in_range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        if top_p == 0.0 {
            return Err(ApiError::invalid_value(
                "top_p",
                "top_p must be greater than 0",
            ));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => {
                return Err(ApiError::invalid_value(
                    "top_k",
                    format!("top_k must be -1, 0 (off) or positive, got {k}"),
                ))
            }
        };
        let min_p = in_range("min_p", self.min_p, 0.0, 1.0, 0.0)?;
        let repetition_penalty = in_range(
            "repetition_penalty",
            self.repetition_penalty,
            0.01,
            10.0,
            1.0,
        )?;
        let frequency_penalty =
            in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?;
        let presence_penalty = in_range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?;
        let mut logit_bias = Vec::new();
        for (token, &bias) in self.logit_bias.iter().flatten() {
            let id: u32 = token.parse().map_err(|_| {
                ApiError::invalid_value(
                    "logit_bias",
                    format!("logit_bias keys must be token ids, got {token:?}"),
                )
            })?;
            if !bias.is_finite() || !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid_value(
                    "logit_bias",
                    format!("logit_bias values must be between -100 and 100, got {bias}"),
                ));
            }
            logit_bias.push((id, bias));
        }
        logit_bias.sort_by_key(|&(id, _)| id);
        let stop = self
            .stop
            .clone()
            .map(StopSpec::into_vec)
            .unwrap_or_default();
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid_value(
                "stop",
                format!(
                    "at most {MAX_STOP} stop sequences are allowed, got {}",
                    stop.len()
                ),
            ));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid_value(
                "stop",
                format!(
                    "stop strings may be at most {MAX_STOP_BYTES} bytes long, got one of {}",
                    long.len()
                ),
            ));
        }
        if max_tokens == Some(0) {
            return Err(ApiError::invalid_value(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        Ok(GenerationParams {
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            frequency_penalty,
            presence_penalty,
            logit_bias,
            seed: self.seed.map(|s| s as u64),
            top_logprobs,
            max_tokens: max_tokens.map(|m| m as usize),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            json: crate::format::parse_constraint(self.response_format.as_ref(), &self.guided)?,
        })
    }

    /// Number of choices, 1 to `MAX_N`.
    pub fn choices(&self) -> Result<u32, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_N => Ok(n),
            n => Err(ApiError::invalid_value(
                "n",
                format!("n must be between 1 and {MAX_N}, got {n}"),
            )),
        }
    }

    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

impl GenerationParams {
    /// The i-th of n choices: with a seed, each choice gets its own but reproducible seed.
    pub fn for_choice(&self, index: u32) -> GenerationParams {
        let mut params = self.clone();
        params.seed = self.seed.map(|s| s.wrapping_add(u64::from(index)));
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_name_their_parameter() {
        let fields = SamplingFields {
            temperature: Some(3.0),
            ..Default::default()
        };
        assert_eq!(
            fields.to_params(None, None).unwrap_err().param.as_deref(),
            Some("temperature")
        );
        let fields = SamplingFields {
            stop: Some(StopSpec::Many(vec!["a".into(); 5])),
            ..Default::default()
        };
        assert_eq!(
            fields.to_params(None, None).unwrap_err().param.as_deref(),
            Some("stop")
        );
        let fields = SamplingFields {
            logit_bias: Some([("x".to_string(), 1.0)].into()),
            ..Default::default()
        };
        assert_eq!(
            fields.to_params(None, None).unwrap_err().param.as_deref(),
            Some("logit_bias")
        );
    }

    #[test]
    fn long_stop_strings_and_oversized_requests_are_refused() {
        let fields = SamplingFields {
            stop: Some(StopSpec::One("x".repeat(MAX_STOP_BYTES + 1))),
            ..Default::default()
        };
        assert_eq!(
            fields.to_params(None, None).unwrap_err().param.as_deref(),
            Some("stop")
        );
        assert!(check_request_size(&[1 << 20], 16).is_ok());
        let err = check_request_size(&[15 << 20], 16).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("n"));
        let err = check_request_size(&[10; 16], 16).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("n"));
    }

    #[test]
    fn defaults_follow_openai() {
        let p = SamplingFields::default().to_params(Some(5), None).unwrap();
        assert_eq!((p.temperature, p.top_p, p.max_tokens), (1.0, 1.0, Some(5)));
    }

    #[test]
    fn choices_get_distinct_reproducible_seeds() {
        let p = SamplingFields {
            seed: Some(10),
            ..Default::default()
        }
        .to_params(None, None)
        .unwrap();
        assert_eq!(p.for_choice(0).seed, Some(10));
        assert_eq!(p.for_choice(1).seed, Some(11));
    }
}
