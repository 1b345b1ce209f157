//! Chat templates rendered the way Hugging Face `transformers` renders them.
//!
//! HF compiles templates in a Jinja sandbox with `trim_blocks`, `lstrip_blocks` and loop
//! controls (`{% break %}`, `{% continue %}`: minijinja's `loop_controls` feature), a
//! `tojson` filter that is Python's `json.dumps` (not Jinja's HTML-safe one),
//! `raise_exception` and `strftime_now`, and passes the special tokens by name, `tools` and
//! `documents` (None when absent). Python string and dict methods (`strip`, `startswith`,
//! `items`, ...) come from minijinja's pycompat; how values print and Python's meaning of
//! `iterable`, `sequence` and `number` from [`crate::pyvalue`].

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::pyjson::{dumps, DumpOptions};
use crate::pyvalue;

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template plus the special-token strings it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template reads a `tools` variable: it can put tool definitions in the prompt.
    supports_tools: bool,
}

/// What a template is rendered from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TemplateInput {
    /// OpenAI-style messages (`role`, `content`, optional `tool_calls`, `name`, ...).
    pub messages: Vec<serde_json::Value>,
    /// Tool definitions, passed only when present (templates test `if tools`).
    pub tools: Option<Vec<serde_json::Value>>,
    pub add_generation_prompt: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        pyvalue::install(&mut env);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // jinja2 reads a template with every line ending (\r\n, \r) made "\n", in text and
        // in string literals alike; minijinja keeps them, so a template saved with CRLF
        // endings would render "\r\n" into the prompt and defeat trim_blocks.
        let source = source.replace("\r\n", "\n").replace('\r', "\n");
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        let supports_tools = env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .unwrap_or(false);
        Ok(ChatTemplate {
            env,
            supports_tools,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Whether tool definitions passed to `render` reach the prompt at all.
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    pub fn render(&self, input: &TemplateInput) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::Template(describe(&e)))?;
        let tools = input.tools.as_ref().map(Value::from_serialize);
        let ctx = minijinja::context! {
            messages => Value::from_serialize(&input.messages),
            tools => tools,
            documents => Value::from(()),
            add_generation_prompt => input.add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        template.render(ctx).map_err(|e| match e.kind() {
            // A template's own raise_exception is a message about the request, not a bug.
            ErrorKind::InvalidOperation if is_raised(&e) => {
                let detail = e.detail().unwrap_or_default();
                EngineError::InvalidRequest(detail.trim_start_matches(RAISED_PREFIX).to_owned())
            }
            _ => EngineError::Template(describe(&e)),
        })
    }
}

const RAISED_PREFIX: &str = "template raised: ";

fn is_raised(e: &Error) -> bool {
    e.detail().is_some_and(|d| d.starts_with(RAISED_PREFIX))
}

fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED_PREFIX}{message}"),
    ))
}

/// HF's `strftime_now` is `datetime.now().strftime(format)`: local time (the TZ of the
/// process), and the C library's `strftime` (which CPython calls) for every code but the
/// few Python handles itself. Month and day names are the C locale's, as in Python, which
/// leaves LC_TIME alone.
fn strftime_now(format: String) -> std::result::Result<String, Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // What `datetime.strftime` does before calling C: for a naive datetime %z and %Z
    // (and %:z) are empty, %f is the microseconds.
    let mut c_format = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            c_format.push(c);
            continue;
        }
        match chars.next() {
            Some('z' | 'Z') => {}
            Some(':') if chars.peek() == Some(&'z') => {
                chars.next();
            }
            Some('f') => c_format.push_str(&format!("{:06}", now.subsec_micros())),
            Some(other) => {
                c_format.push('%');
                c_format.push(other);
            }
            None => c_format.push('%'),
        }
    }
    if c_format.is_empty() {
        return Ok(String::new());
    }
    let invalid = |detail: &str| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: {detail}"),
        )
    };
    let c_format =
        std::ffi::CString::new(c_format).map_err(|_| invalid("embedded null character"))?;
    let secs = libc::time_t::try_from(now.as_secs()).map_err(|_| invalid("time out of range"))?;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe form.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return Err(invalid("no local time"));
    }
    // Python's `timetuple()` of a naive datetime: daylight saving unknown.
    tm.tm_isdst = -1;
    // strftime returns 0 when the buffer is too small (or the result is empty): grow it,
    // and give up (empty, as CPython does) at 256 bytes per format byte.
    let limit = 256 * c_format.as_bytes().len().max(1);
    let mut size = 256;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: buf has `size` writable bytes, the format is NUL-terminated, tm is valid.
        let written =
            unsafe { libc::strftime(buf.as_mut_ptr().cast(), size, c_format.as_ptr(), &tm) };
        if written > 0 {
            buf.truncate(written);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if size >= limit {
            return Ok(String::new());
        }
        size *= 2;
    }
}

/// HF's `tojson`: Python `json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let json: serde_json::Value = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => Some(" ".repeat(usize::try_from(v).unwrap_or(0))),
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "separators must be a pair",
            ))
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let options = DumpOptions {
        indent,
        item_separator: item_sep,
        key_separator: key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    Ok(Value::from_safe_string(dumps(&json, &options)))
}
