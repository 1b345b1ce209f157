//! Structured output: `json_object` and `json_schema` response formats as llguidance
//! grammars, applied as token masks at every decoding step.
//!
//! The token environment (a trie of every token's bytes) is built once per model; compiled
//! grammars are kept in a bounded LRU keyed by the schema's text, and each request gets a
//! deep clone of the compiled matcher (cloning is cheap, compiling is not).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};

use crate::error::{EngineError, Result};
use crate::sampling::TokenMask;

/// Compiled grammars kept per model unless configured otherwise.
pub const GRAMMAR_CACHE_CAPACITY: usize = 10;

/// What shape the output must take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutputFormat {
    /// Any JSON object.
    JsonObject,
    /// A JSON document valid under this schema.
    JsonSchema(Value),
    /// Text matching this regular expression (vLLM's `guided_regex`).
    Regex(String),
    /// Exactly one of these strings (vLLM's `guided_choice`).
    Choice(Vec<String>),
}

impl OutputFormat {
    /// The schema llguidance compiles, with our JSON layout (compact, one space after ':' and
    /// ','; no free whitespace, which small models would loop on) unless the caller chose one.
    fn json_schema(schema: &Value) -> Value {
        let mut schema = schema.clone();
        if let Some(object) = schema.as_object_mut() {
            object.entry("x-guidance").or_insert_with(|| {
                json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
            });
        }
        schema
    }

    /// The grammar and the cache key it is stored under.
    fn grammar(&self) -> (TopLevelGrammar, String) {
        match self {
            OutputFormat::JsonObject | OutputFormat::JsonSchema(_) => {
                let schema = match self {
                    OutputFormat::JsonSchema(schema) => Self::json_schema(schema),
                    _ => Self::json_schema(&json!({"type": "object"})),
                };
                let key = format!("json:{schema}");
                (TopLevelGrammar::from_json_schema(schema), key)
            }
            OutputFormat::Regex(rx) => (TopLevelGrammar::from_regex(rx), format!("regex:{rx}")),
            OutputFormat::Choice(choices) => {
                let rx = choices
                    .iter()
                    .map(|c| escape_regex(c))
                    .collect::<Vec<_>>()
                    .join("|");
                let rx = format!("({rx})");
                let key = format!("regex:{rx}");
                (TopLevelGrammar::from_regex(&rx), key)
            }
        }
    }
}

/// Compiles output formats for one model.
pub struct GrammarCompiler {
    factory: ParserFactory,
    cache: Mutex<LruCache<String, Matcher>>,
    compiled: AtomicU64,
    cache_hits: AtomicU64,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    pub(crate) fn new(
        llama: &LlamaModel,
        eog_tokens: &[u32],
        capacity: usize,
    ) -> Result<GrammarCompiler> {
        let env = token_env(llama, eog_tokens);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Template(format!("structured output setup: {e}")))?;
        factory.set_stderr_log_level(0);
        // llguidance's fuel limits bound how much work (and so time) one schema may cost.
        let limits = factory.limits_mut();
        limits.initial_lexer_fuel = limits.initial_lexer_fuel.min(COMPILE_FUEL);
        limits.step_lexer_fuel = limits.step_lexer_fuel.min(COMPILE_FUEL);
        Ok(GrammarCompiler {
            factory,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// A fresh matcher for this format; schemas the compiler rejects are request errors.
    pub fn matcher(&self, format: &OutputFormat) -> Result<Constraint> {
        let (grammar, key) = format.grammar();
        if let Some(compiled) = self.lock().get(&key) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Constraint::new(compiled.deep_clone()));
        }
        let what = match format {
            OutputFormat::Regex(_) | OutputFormat::Choice(_) => "the regular expression",
            _ => "the JSON schema",
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| EngineError::InvalidRequest(format!("{what} cannot be enforced: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(EngineError::InvalidRequest(format!(
                "{what} cannot be enforced: {error}"
            )));
        }
        self.compiled.fetch_add(1, Ordering::Relaxed);
        self.lock().put(key, matcher.deep_clone());
        Ok(Constraint::new(matcher))
    }

    /// Compiled grammars currently cached.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    /// Grammars compiled so far (cache misses).
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Requests served from the cache without compiling.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Matcher>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One sequence's grammar state: the allowed tokens now, advanced by each sampled token.
pub struct Constraint {
    matcher: Matcher,
    mask: SimpleVob,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

/// The mask of the last `compute_mask` call.
impl TokenMask for Constraint {
    fn allows(&self, token: u32) -> bool {
        self.mask.is_allowed(token)
    }

    /// Word at a time: a JSON grammar usually allows a few hundred of 49k tokens, so most
    /// 32-token words are all-disallowed and are filled without looking at bits.
    fn apply(&self, logits: &mut [f32]) {
        let words = self.mask.as_slice();
        for (chunk, &word) in logits
            .chunks_mut(32)
            .zip(words.iter().chain(std::iter::repeat(&0)))
        {
            match word {
                0 => chunk.fill(f32::NEG_INFINITY),
                u32::MAX => {}
                _ => {
                    for (bit, logit) in chunk.iter_mut().enumerate() {
                        if word & (1 << bit) == 0 {
                            *logit = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
    }
}

impl Constraint {
    fn new(matcher: Matcher) -> Constraint {
        Constraint {
            matcher,
            mask: SimpleVob::new(),
        }
    }

    /// Compute this step's mask: the grammar's tokens, or only end-of-turn once it is done.
    pub(crate) fn compute_mask(&mut self) -> std::result::Result<(), String> {
        self.mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Advance by the token that was sampled.
    pub(crate) fn accept(&mut self, token: u32) -> std::result::Result<(), String> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }
}

/// Lexer work allowed per compile and per step; llguidance's own defaults are the ceiling.
const COMPILE_FUEL: u64 = 1_000_000;

/// Escape regex metacharacters so a choice matches literally.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every token's bytes, with special tokens marked (0xFF prefix) so text can never spell
/// them; end-of-turn tokens are what the grammar allows once it is complete.
fn token_env(llama: &LlamaModel, eog_tokens: &[u32]) -> TokEnv {
    let vocab = llama.vocab();
    let n_vocab = llama.n_vocab() as u32;
    let primary = eog_tokens.first().copied().unwrap_or(0);
    let info = TokRxInfo::new(n_vocab, primary);
    let words: Vec<Vec<u8>> = (0..n_vocab as i32)
        .map(|id| {
            let plain = vocab.token_to_piece(LlamaToken(id), false, None);
            if !plain.is_empty() {
                return plain;
            }
            let special = vocab.token_to_piece(LlamaToken(id), true, None);
            if special.is_empty() {
                return special;
            }
            let mut marked = Vec::with_capacity(special.len() + 1);
            marked.push(0xFF);
            marked.extend(special);
            marked
        })
        .collect();
    let trie = TokTrie::from(&info, &words).with_eos_tokens(eog_tokens);
    Arc::new(ApproximateTokEnv::new(trie))
}
