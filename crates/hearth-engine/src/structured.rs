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
    /// An llguidance Lark grammar (tool calls), from the first token.
    Lark(String),
    /// Free text until the reply writes one of these openers; that opener's grammar governs
    /// what follows it (`tool_choice: auto`).
    Triggered(LazyGrammars),
}

/// Grammars that start once their opener is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LazyGrammars {
    pub grammars: Vec<LazyGrammar>,
    /// Where a reasoning model's think block stands: openers inside it are thoughts.
    pub think: ThinkStart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThinkStart {
    /// No think block: openers count from the first token.
    None,
    /// The reply may open with `<think>`; openers count after its `</think>`.
    Maybe,
    /// The prompt opened the think block; openers count after `</think>`.
    Inside,
}

/// A grammar that starts once its opener is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LazyGrammar {
    /// The text that wakes the grammar, in parts that whitespace may separate (a call marker;
    /// or `{` then `"name"` opening the reply).
    pub opener: Vec<String>,
    /// Only as the first thing in the reply (after whitespace, and after a think block);
    /// else anywhere (a marker: exactly one part).
    pub at_start: bool,
    /// Lark grammar of what follows the opener.
    pub grammar: String,
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
            OutputFormat::Lark(grammar) => (
                TopLevelGrammar::from_lark(grammar.clone()),
                format!("lark:{grammar}"),
            ),
            // Compiled one grammar at a time (see `GrammarCompiler::matcher`).
            OutputFormat::Triggered(_) => {
                (TopLevelGrammar::from_lark(String::new()), String::new())
            }
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
    numbers: Arc<NumberBound>,
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
        let (env, numbers) = token_env(llama, eog_tokens);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Template(format!("structured output setup: {e}")))?;
        factory.set_stderr_log_level(0);
        // llguidance's fuel limits bound how much work (and so time) one schema may cost.
        let limits = factory.limits_mut();
        limits.initial_lexer_fuel = limits.initial_lexer_fuel.min(COMPILE_FUEL);
        limits.step_lexer_fuel = limits.step_lexer_fuel.min(COMPILE_FUEL);
        Ok(GrammarCompiler {
            factory,
            numbers: Arc::new(numbers),
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
            compiled: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// A fresh matcher for this format; schemas the compiler rejects are request errors.
    pub fn matcher(&self, format: &OutputFormat) -> Result<Constraint> {
        if let OutputFormat::Triggered(lazy) = format {
            let mut triggers = Vec::with_capacity(lazy.grammars.len());
            for grammar in &lazy.grammars {
                let compiled = self.matcher(&OutputFormat::Lark(grammar.grammar.clone()))?;
                triggers.push((grammar.clone(), compiled.into_matcher()));
            }
            let placeholder = match triggers.first() {
                Some((_, matcher)) => matcher.deep_clone(),
                None => return Err(EngineError::InvalidRequest("no call grammar".into())),
            };
            return Ok(Constraint::waiting(
                placeholder,
                triggers,
                lazy.think,
                self.numbers.clone(),
            ));
        }
        let (grammar, key) = format.grammar();
        // JSON number literals are bounded (see `NumberBound`); regex and choice are the
        // caller's exact language and stay as written.
        let numbers = match format {
            OutputFormat::Regex(_) | OutputFormat::Choice(_) => None,
            _ => Some(self.numbers.clone()),
        };
        if let Some(compiled) = self.lock().get(&key) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Constraint::new(compiled.deep_clone(), numbers));
        }
        let what = match format {
            OutputFormat::Regex(_) | OutputFormat::Choice(_) => "the regular expression",
            OutputFormat::Lark(_) | OutputFormat::Triggered(_) => "the tools' schemas",
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
        Ok(Constraint::new(matcher, numbers))
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
    /// A lazy grammar not yet woken: nothing is masked.
    waiting: Option<Box<Waiting>>,
    mask: SimpleVob,
    /// JSON formats: the number bound, and where the output so far has left the JSON text.
    numbers: Option<(Arc<NumberBound>, JsonLex)>,
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
    fn new(matcher: Matcher, numbers: Option<Arc<NumberBound>>) -> Constraint {
        Constraint {
            matcher,
            waiting: None,
            mask: SimpleVob::new(),
            numbers: numbers.map(|bound| (bound, JsonLex::default())),
        }
    }

    /// Compute this step's mask: the grammar's tokens, or only end-of-turn once it is done;
    /// inside a JSON number, without the tokens that would take it past the bound.
    pub(crate) fn compute_mask(&mut self) -> std::result::Result<(), String> {
        self.mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        if let Some((bound, lex)) = &self.numbers {
            bound.restrict(*lex, &mut self.mask);
        }
        Ok(())
    }

    /// Free text watched for openers; the matcher is a placeholder until one is written.
    fn waiting(
        placeholder: Matcher,
        triggers: Vec<(LazyGrammar, Matcher)>,
        think: ThinkStart,
        numbers: Arc<NumberBound>,
    ) -> Constraint {
        let mut constraint = Constraint::new(placeholder, Some(numbers));
        constraint.waiting = Some(Box::new(Waiting {
            triggers,
            text: Vec::new(),
            think,
        }));
        constraint
    }

    fn into_matcher(self) -> Matcher {
        self.matcher
    }

    /// Nothing is masked: a lazy grammar whose opener has not been written.
    pub(crate) fn is_dormant(&self) -> bool {
        self.waiting.is_some()
    }

    /// Advance by the token that was sampled.
    pub(crate) fn accept(&mut self, token: u32) -> std::result::Result<(), String> {
        if let Some(waiting) = self.waiting.as_mut() {
            let Some((bound, _)) = &self.numbers else {
                return Ok(());
            };
            if let Some((matcher, overshoot)) = waiting.advance(bound.token(token), bound) {
                // The grammar governs from the opener on; the rest of the token that wrote the
                // opener is its first text.
                self.matcher = matcher;
                self.waiting = None;
                if let Some((_, lex)) = &mut self.numbers {
                    *lex = JsonLex::Outside.advance(&overshoot);
                }
            }
            return Ok(());
        }
        if let Some((bound, lex)) = &mut self.numbers {
            *lex = lex.advance(bound.token(token));
        }
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }
}

/// A lazy grammar's watch over the free text before its opener.
struct Waiting {
    triggers: Vec<(LazyGrammar, Matcher)>,
    /// The reply so far (after any think block) while an at-start opener may still come,
    /// then only a tail long enough to hold any opener.
    text: Vec<u8>,
    think: ThinkStart,
}

/// Reply text kept to find an opener split across tokens.
const OPENER_WINDOW: usize = 64;
const THINK_OPEN: &[u8] = b"<think>";
const THINK_CLOSE: &[u8] = b"</think>";

/// How far an opener (parts with optional whitespace before and between them) matches.
enum Opening {
    /// Complete, ending at this byte.
    Written(usize),
    /// What is written so far could still become it.
    Possible,
    Impossible,
}

fn opening(text: &[u8], parts: &[String]) -> Opening {
    let mut at = 0;
    for part in parts {
        at += text[at..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        let rest = &text[at..];
        let part = part.as_bytes();
        if rest.starts_with(part) {
            at += part.len();
        } else if part.starts_with(rest) {
            return Opening::Possible;
        } else {
            return Opening::Impossible;
        }
    }
    Opening::Written(at)
}

impl Waiting {
    /// Add a token's bytes; the grammar to switch to (with the bytes written past its
    /// opener already consumed) once an opener is complete.
    fn advance(&mut self, bytes: &[u8], bound: &NumberBound) -> Option<(Matcher, Vec<u8>)> {
        let mut before = self.text.len();
        self.text.extend_from_slice(bytes);
        // A reasoning model's thoughts may mention calls: openers count after `</think>`.
        loop {
            match self.think {
                ThinkStart::None => break,
                ThinkStart::Maybe => {
                    let start = self
                        .text
                        .iter()
                        .take_while(|b| b.is_ascii_whitespace())
                        .count();
                    let written = &self.text[start..];
                    if written.starts_with(THINK_OPEN) {
                        self.think = ThinkStart::Inside;
                    } else if THINK_OPEN.starts_with(written) {
                        return None;
                    } else {
                        self.think = ThinkStart::None;
                    }
                }
                ThinkStart::Inside => {
                    let from = before.saturating_sub(THINK_CLOSE.len());
                    match find(&self.text[from..], THINK_CLOSE) {
                        Some(at) => {
                            self.text.drain(..from + at + THINK_CLOSE.len());
                            before = 0;
                            self.think = ThinkStart::None;
                        }
                        None => {
                            let keep = self.text.len().saturating_sub(THINK_CLOSE.len());
                            self.text.drain(..keep);
                            return None;
                        }
                    }
                }
            }
        }
        let mut fired = None;
        for (i, (lazy, _)) in self.triggers.iter().enumerate() {
            let end = if lazy.at_start {
                match opening(&self.text, &lazy.opener) {
                    Opening::Written(end) => Some(end),
                    _ => None,
                }
            } else {
                // A marker (one part), found where this token could have completed it.
                let opener = lazy.opener.first().map_or(&[][..], |o| o.as_bytes());
                let from = before.saturating_sub(opener.len());
                find(&self.text[from..], opener).map(|at| from + at + opener.len())
            };
            if let Some(end) = end {
                fired = Some((i, end));
                break;
            }
        }
        if let Some((i, end)) = fired {
            let overshoot = self.text[end..].to_vec();
            let (_, mut matcher) = self.triggers.swap_remove(i);
            let consumed = bound
                .encode(&overshoot)
                .is_some_and(|tokens| matcher.consume_tokens(&tokens).is_ok());
            if consumed {
                return Some((matcher, overshoot));
            }
            // The model wrote the opener and then something the grammar refuses: the reply
            // stays free text (the parser shows it as written).
        }
        // At-start openers are dead once the reply has text that cannot begin one.
        let text = &self.text;
        self.triggers.retain(|(lazy, _)| {
            !lazy.at_start || matches!(opening(text, &lazy.opener), Opening::Possible)
        });
        if self.triggers.iter().all(|(lazy, _)| !lazy.at_start) && self.text.len() > OPENER_WINDOW {
            self.text.drain(..self.text.len() - OPENER_WINDOW);
        }
        None
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
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
/// them; end-of-turn tokens are what the grammar allows once it is complete. The same bytes
/// make the number-bound table.
fn token_env(llama: &LlamaModel, eog_tokens: &[u32]) -> (TokEnv, NumberBound) {
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
    let numbers = NumberBound::new(words.iter().map(Vec::as_slice));
    (Arc::new(ApproximateTokEnv::new(trie)), numbers)
}

/// Most digits in a generated JSON number's mantissa (integer and fraction digits together):
/// what a float64 carries (17 significant digits round-trip any double).
const MAX_MANTISSA_DIGITS: u8 = 17;
/// Most digits in its exponent (float64 exponents stay within ±308).
const MAX_EXPONENT_DIGITS: u8 = 3;

/// Where a JSON text is, byte by byte: just enough to count the digits of the number being
/// written. llguidance's number lexemes are unbounded (`[0-9]+` fractions), and a tiny model
/// under a grammar can write digits until `max_tokens` cuts the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum JsonLex {
    #[default]
    Outside,
    InString {
        escaped: bool,
    },
    /// Integer or fraction part: the digits so far (both parts).
    Mantissa(u8),
    /// After `e`/`E`: the digits so far, and whether a sign may still come.
    Exponent {
        digits: u8,
        sign_allowed: bool,
    },
}

impl JsonLex {
    fn in_number(self) -> bool {
        matches!(self, JsonLex::Mantissa(_) | JsonLex::Exponent { .. })
    }

    /// The state after `byte`, and whether the number (if any) is still within the bound.
    /// Counts saturate at the bound, so text that went past it (the fallback below) keeps
    /// being tracked.
    fn step(self, byte: u8) -> (JsonLex, bool) {
        use JsonLex::*;
        match (self, byte) {
            (InString { escaped: true }, _) => (InString { escaped: false }, true),
            (InString { .. }, b'\\') => (InString { escaped: true }, true),
            (InString { .. }, b'"') => (Outside, true),
            (InString { .. }, _) => (self, true),
            (Mantissa(n), b'0'..=b'9') => (
                Mantissa((n + 1).min(MAX_MANTISSA_DIGITS)),
                n < MAX_MANTISSA_DIGITS,
            ),
            // A digit must follow the point: none may once the mantissa is full.
            (Mantissa(n), b'.') => (self, n < MAX_MANTISSA_DIGITS),
            (Mantissa(_), b'e' | b'E') => (
                Exponent {
                    digits: 0,
                    sign_allowed: true,
                },
                true,
            ),
            (
                Exponent {
                    digits: 0,
                    sign_allowed: true,
                },
                b'+' | b'-',
            ) => (
                Exponent {
                    digits: 0,
                    sign_allowed: false,
                },
                true,
            ),
            (Exponent { digits, .. }, b'0'..=b'9') => (
                Exponent {
                    digits: (digits + 1).min(MAX_EXPONENT_DIGITS),
                    sign_allowed: false,
                },
                digits < MAX_EXPONENT_DIGITS,
            ),
            // Anything else ends the number and is read as outside one.
            (Mantissa(_) | Exponent { .. }, _) => Outside.step(byte),
            (Outside, b'"') => (InString { escaped: false }, true),
            (Outside, b'-') => (Mantissa(0), true),
            (Outside, b'0'..=b'9') => (Mantissa(1), true),
            (Outside, _) => (Outside, true),
        }
    }

    /// The state after these bytes (a consumed token).
    fn advance(self, bytes: &[u8]) -> JsonLex {
        bytes.iter().fold(self, |lex, &byte| lex.step(byte).0)
    }

    /// Whether these bytes keep every number within the bound.
    fn admits(self, bytes: &[u8]) -> bool {
        let mut lex = self;
        bytes.iter().all(|&byte| {
            let (next, ok) = lex.step(byte);
            lex = next;
            ok
        })
    }
}

/// Bounds JSON number literals (json_object and json_schema formats) to what a float64
/// carries: `MAX_MANTISSA_DIGITS` and `MAX_EXPONENT_DIGITS`. llguidance has no such option.
/// Every token's bytes, and the tokens that can continue a number (those beginning with one
/// of `0-9 . e E + -`), are kept once per model; only those are checked, and only while a
/// number is being written.
pub(crate) struct NumberBound {
    /// All tokens' bytes end to end; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    continuing: Vec<u32>,
    /// Token ids by their bytes, built on first use.
    by_bytes: std::sync::OnceLock<std::collections::HashMap<Vec<u8>, u32>>,
}

impl NumberBound {
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = &'a [u8]>) -> NumberBound {
        let mut bound = NumberBound {
            bytes: Vec::new(),
            offsets: vec![0],
            continuing: Vec::new(),
            by_bytes: std::sync::OnceLock::new(),
        };
        for (id, token) in tokens.into_iter().enumerate() {
            if matches!(
                token.first(),
                Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
            ) {
                bound.continuing.push(id as u32);
            }
            bound.bytes.extend_from_slice(token);
            bound.offsets.push(bound.bytes.len() as u32);
        }
        bound
    }

    /// Tokens spelling `bytes`, longest match first (for the few bytes a token wrote past a
    /// lazy grammar's opener); `None` if some byte starts no token.
    fn encode(&self, bytes: &[u8]) -> Option<Vec<u32>> {
        let by_bytes = self.by_bytes.get_or_init(|| {
            let mut map = std::collections::HashMap::new();
            for id in (0..self.offsets.len().saturating_sub(1)).rev() {
                let token = self.token(id as u32);
                if !token.is_empty() && token[0] != 0xFF {
                    map.insert(token.to_vec(), id as u32);
                }
            }
            map
        });
        let mut tokens = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let longest = (at + 1..=bytes.len().min(at + 64))
                .rev()
                .find_map(|end| by_bytes.get(&bytes[at..end]).map(|&id| (id, end)))?;
            tokens.push(longest.0);
            at = longest.1;
        }
        Some(tokens)
    }

    fn token(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.offsets.get(id), self.offsets.get(id + 1)) {
            (Some(&start), Some(&end)) => &self.bytes[start as usize..end as usize],
            _ => &[],
        }
    }

    /// Inside a number, clear from `mask` the tokens that would take it past the bound,
    /// unless that leaves no token at all (then the grammar's mask stands: a schema that
    /// demands longer numbers wins over the bound). Returns how many were cleared.
    fn restrict(&self, lex: JsonLex, mask: &mut SimpleVob) -> usize {
        if !lex.in_number() {
            return 0;
        }
        let mut cleared = Vec::new();
        for &id in &self.continuing {
            if (id as usize) < mask.len() && mask.is_allowed(id) && !lex.admits(self.token(id)) {
                mask.disallow_token(id);
                cleared.push(id);
            }
        }
        if !cleared.is_empty() && mask.is_zero() {
            for &id in &cleared {
                mask.allow_token(id);
            }
            return 0;
        }
        cleared.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: every printable ASCII byte, a few multi-byte pieces, and token 0 as
    /// end of turn.
    fn toy_vocab() -> Vec<Vec<u8>> {
        let mut words: Vec<Vec<u8>> = vec![vec![0xFF, b'E']];
        words.extend((b' '..=b'~').map(|b| vec![b]));
        words.push(b"\n".to_vec());
        for piece in [
            "<tool_call>",
            "```",
            "json",
            "{\"",
            "\":",
            "ok\"}",
            "Hi there",
        ] {
            words.push(piece.as_bytes().to_vec());
        }
        words
    }

    fn piece_id(words: &[Vec<u8>], piece: &str) -> u32 {
        words.iter().position(|w| w == piece.as_bytes()).unwrap() as u32
    }

    fn lazy_constraint(words: &[Vec<u8>], triggers: &[(&str, bool)]) -> Constraint {
        lazy_constraint_thinking(words, triggers, ThinkStart::None)
    }

    fn lazy_constraint_thinking(
        words: &[Vec<u8>],
        triggers: &[(&str, bool)],
        think: ThinkStart,
    ) -> Constraint {
        let info = TokRxInfo::new(words.len() as u32, 0);
        let trie = TokTrie::from(&info, words).with_eos_tokens(&[0]);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).unwrap();
        factory.set_stderr_log_level(0);
        let numbers = Arc::new(NumberBound::new(words.iter().map(Vec::as_slice)));
        let grammar = r#"start: "\"a\": \"ok\"}""#;
        let compiled: Vec<(LazyGrammar, Matcher)> = triggers
            .iter()
            .map(|&(opener, at_start)| {
                let parser = factory
                    .create_parser(TopLevelGrammar::from_lark(grammar.to_owned()))
                    .unwrap();
                // "a|b" is an opener in two parts that whitespace may separate.
                let lazy = LazyGrammar {
                    opener: opener.split('|').map(str::to_owned).collect(),
                    at_start,
                    grammar: grammar.to_owned(),
                };
                (lazy, Matcher::new(Ok(parser)))
            })
            .collect();
        let placeholder = compiled[0].1.deep_clone();
        Constraint::waiting(placeholder, compiled, think, numbers)
    }

    fn feed(constraint: &mut Constraint, words: &[Vec<u8>], pieces: &[&str]) {
        for piece in pieces {
            constraint.accept(piece_id(words, piece)).unwrap();
        }
    }

    #[test]
    fn a_lazy_grammar_wakes_on_its_opener_anywhere_even_split_across_tokens() {
        let words = toy_vocab();
        let mut c = lazy_constraint(&words, &[("<tool_call>", false)]);
        feed(&mut c, &words, &["Hi there", " ", "<", "t", "o"]);
        assert!(c.is_dormant());
        feed(&mut c, &words, &["o", "l", "_", "c", "a", "l", "l", ">"]);
        assert!(
            !c.is_dormant(),
            "the opener spelled out of pieces wakes it too"
        );
        // From here only the grammar's text may follow.
        c.compute_mask().unwrap();
        assert!(c.allows(piece_id(&words, "\"")) && !c.allows(piece_id(&words, "x")));
        let mut c = lazy_constraint(&words, &[("<tool_call>", false)]);
        feed(&mut c, &words, &["<tool_call>"]);
        assert!(!c.is_dormant());
    }

    #[test]
    fn bytes_written_past_an_opener_are_consumed_by_its_grammar() {
        let words = toy_vocab();
        // `{"` opens the reply: the grammar already has its `"`.
        let mut c = lazy_constraint(&words, &[("{", true)]);
        feed(&mut c, &words, &[" ", "{\""]);
        assert!(!c.is_dormant());
        c.compute_mask().unwrap();
        assert!(c.allows(piece_id(&words, "a")) && !c.allows(piece_id(&words, "\"")));
        feed(&mut c, &words, &["a", "\":", " ", "\"", "ok\"}"]);
        c.compute_mask().unwrap();
        assert!(c.allows(0), "after the call only end of turn");
    }

    #[test]
    fn json_that_is_not_a_call_stays_free_and_thoughts_do_not_call() {
        let words = toy_vocab();
        let mut c = lazy_constraint(&words, &[("{|\"", true)]);
        feed(&mut c, &words, &["{", "\n", " ", " "]);
        assert!(c.is_dormant(), "whitespace may come between the parts");
        feed(&mut c, &words, &["\""]);
        assert!(!c.is_dormant());
        let mut c = lazy_constraint(&words, &[("{|\"", true)]);
        feed(&mut c, &words, &["{", "x"]);
        assert!(c.is_dormant());
        feed(&mut c, &words, &["\""]);
        assert!(c.is_dormant(), "the opener died at x");
        // A marker inside a think block is a thought; after `</think>` it calls.
        let mut c = lazy_constraint_thinking(&words, &[("<tool_call>", false)], ThinkStart::Maybe);
        feed(
            &mut c,
            &words,
            &["<", "t", "h", "i", "n", "k", ">", "<tool_call>"],
        );
        assert!(c.is_dormant());
        feed(
            &mut c,
            &words,
            &["<", "/", "t", "h", "i", "n", "k", ">", "\n", "<tool_call>"],
        );
        assert!(!c.is_dormant());
        let mut c = lazy_constraint_thinking(&words, &[("{|\"", true)], ThinkStart::Inside);
        feed(
            &mut c,
            &words,
            &["{\"", "<", "/", "t", "h", "i", "n", "k", ">", "\n"],
        );
        assert!(c.is_dormant());
        feed(&mut c, &words, &["{\""]);
        assert!(
            !c.is_dormant(),
            "at the start of the answer, after the thoughts"
        );
    }

    #[test]
    fn openers_at_the_start_die_once_the_reply_is_text_and_fences_wait_for_json() {
        let words = toy_vocab();
        let mut c = lazy_constraint(&words, &[("{", true), ("```json", true)]);
        feed(&mut c, &words, &["Hi there", "{\""]);
        assert!(c.is_dormant(), "a brace later in the text is not a call");
        let mut c = lazy_constraint(&words, &[("{", true), ("```json", true)]);
        feed(&mut c, &words, &["```", "p"]);
        assert!(c.is_dormant(), "```python is code, not a call");
        let mut c = lazy_constraint(&words, &[("{", true), ("```json", true)]);
        feed(&mut c, &words, &["```", "json"]);
        assert!(!c.is_dormant());
    }

    fn lex(text: &str) -> JsonLex {
        JsonLex::default().advance(text.as_bytes())
    }

    #[test]
    fn the_lexer_counts_digits_only_in_numbers() {
        assert_eq!(lex(r#"{"radius": 2.56"#), JsonLex::Mantissa(3));
        assert_eq!(lex(r#"{"r": -0.5"#), JsonLex::Mantissa(2));
        assert_eq!(lex(r#"{"r": 12, "s": 3"#), JsonLex::Mantissa(1));
        assert_eq!(lex(r#"{"a": [1, 22, 333"#), JsonLex::Mantissa(3));
        // Digits in strings (escaped quotes included) and in keys are not numbers.
        assert_eq!(lex(r#"{"12345678901234567890": "#), JsonLex::Outside);
        assert_eq!(
            lex(r#"{"s": "a\"12345678901234567890"#),
            JsonLex::InString { escaped: false }
        );
        assert_eq!(lex(r#"{"s": "a\\"#), JsonLex::InString { escaped: false });
        assert_eq!(lex(r#"{"s": "a\\", "n": 7"#), JsonLex::Mantissa(1));
        assert_eq!(
            lex("1.5e+1"),
            JsonLex::Exponent {
                digits: 1,
                sign_allowed: false
            }
        );
        assert_eq!(
            lex("1E"),
            JsonLex::Exponent {
                digits: 0,
                sign_allowed: true
            }
        );
        assert_eq!(lex("[1e5, true, null"), JsonLex::Outside);
    }

    #[test]
    fn the_bound_is_what_a_float64_carries() {
        let sixteen = lex("[1234567890.123456");
        assert_eq!(sixteen, JsonLex::Mantissa(16));
        assert!(sixteen.admits(b"7"));
        assert!(sixteen.admits(b"7]"));
        assert!(!sixteen.admits(b"78"));
        assert!(sixteen.admits(b"7e308"));
        assert!(!sixteen.admits(b"7e3081"));
        assert!(sixteen.admits(b", 1234"));
        let full = lex("[12345678901234567");
        assert!(!full.admits(b"0"));
        // No digit could follow the point, so the point itself is out.
        assert!(!full.admits(b"."));
        assert!(full.admits(b"e-12"));
        assert!(full.admits(b","));
        assert!(full.admits(b"}"));
        let integer = lex("[1234567890123456");
        assert!(integer.admits(b"."));
        assert!(integer.admits(b".5"));
        assert!(!integer.admits(b".56"));
        assert!(!lex("0.").admits(b"00000000000000000"));
        assert!(lex("0.").admits(b"0000000000000000"));
        assert!(!lex("1e-99").admits(b"99"));
        assert!(lex("1e-99").admits(b"9"));
        // Outside a number the bound says nothing.
        assert!(lex("{").admits(b"\"1234567890123456789012345"));
    }

    const VOCAB: &[&[u8]] = &[
        b"0",
        b"1",
        b"12",
        b"123",
        b".",
        b"5.",
        b".5",
        b",",
        b"}",
        b"e",
        b"e+1234",
        b"\"",
        b"\xFF<eos>",
        b"7,",
    ];

    fn vocab() -> Vec<&'static [u8]> {
        VOCAB.to_vec()
    }

    fn id(token: &[u8]) -> u32 {
        vocab().iter().position(|t| *t == token).unwrap() as u32
    }

    fn allowed(mask: &SimpleVob) -> Vec<&'static [u8]> {
        (0..vocab().len() as u32)
            .filter(|&t| mask.is_allowed(t))
            .map(|t| vocab()[t as usize])
            .collect()
    }

    #[test]
    fn a_full_number_masks_out_its_continuations_only() {
        let bound = NumberBound::new(vocab());
        assert_eq!(bound.token(id(b"e+1234")), b"e+1234");
        assert_eq!(bound.token(99), b"");
        let all = || SimpleVob::alloc_ones(vocab().len());

        let mut mask = all();
        assert_eq!(bound.restrict(lex("{\"a\": 1"), &mut mask), 1);
        assert_eq!(allowed(&mask).len(), vocab().len() - 1); // only e+1234

        let mut mask = all();
        let cleared = bound.restrict(lex("{\"a\": 123456789012345.6"), &mut mask);
        assert_eq!(cleared, 4);
        assert_eq!(
            allowed(&mask),
            [
                &b"0"[..],
                b"1",
                b".",
                b".5",
                b",",
                b"}",
                b"e",
                b"\"",
                b"\xFF<eos>",
                b"7,"
            ]
        );

        let mut mask = all();
        bound.restrict(lex("{\"a\": 12345678901234567"), &mut mask);
        assert_eq!(allowed(&mask), [&b","[..], b"}", b"e", b"\"", b"\xFF<eos>"]);

        // Not in a number: nothing changes.
        let mut mask = all();
        assert_eq!(
            bound.restrict(lex("{\"a\": \"12345678901234567"), &mut mask),
            0
        );
        assert_eq!(allowed(&mask).len(), vocab().len());
    }

    #[test]
    fn the_grammar_wins_when_the_bound_would_allow_nothing() {
        let bound = NumberBound::new(vocab());
        let mut mask = SimpleVob::alloc(vocab().len());
        mask.allow_token(id(b"0"));
        mask.allow_token(id(b"12"));
        assert_eq!(bound.restrict(lex("[0.0000000000000000"), &mut mask), 0);
        assert_eq!(allowed(&mask), [&b"0"[..], b"12"]);
    }
}
