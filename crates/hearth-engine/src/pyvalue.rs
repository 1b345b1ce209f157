//! Python's view of template values, where minijinja's defaults differ from jinja2's.
//!
//! jinja2 prints a value with Python's `str()`: a dict or list as its `repr`
//! (`{'role': 'user'}`, `['a', 1.0, None, True]`), a float as `repr(float)` (`1e+20`).
//! minijinja prints lists and maps as JSON-like text (`{"role": "user"}`) and floats with
//! Rust's `{}` (`100000000000000000000.0`). Templates do print such values (a tool's
//! `required` list, `content|string` of a dict in Mistral's templates, object arguments).
//!
//! jinja2's tests are Python's too: `none is iterable` is false (`iter(None)` fails),
//! strings and dicts are sequences (`len()` and `[]`), and `True is number` (bool is an
//! int). minijinja says the opposite for each, and e.g. `tools is iterable and tools|length`
//! then fails on `none|length` where Python is simply false.

use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};
use minijinja::{escape_formatter, Environment, Error, Output, State};

use crate::pyjson::float_repr;

/// Installs the Python printing, the `string` filter and the `iterable`, `sequence` and
/// `number` tests.
pub fn install(env: &mut Environment<'_>) {
    env.set_formatter(format_value);
    env.add_filter("string", string);
    env.add_test("iterable", |v: &Value| !v.is_none() && v.try_iter().is_ok());
    env.add_test("sequence", |v: &Value| {
        v.is_undefined()
            || matches!(
                v.kind(),
                ValueKind::String | ValueKind::Seq | ValueKind::Map
            )
    });
    env.add_test("number", |v: &Value| {
        matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
    });
}

/// `{{ value }}`: lists, maps, floats, none and booleans as Python's `str()`; the rest
/// (strings, integers, undefined, which prints nothing) as minijinja writes them.
fn format_value(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let python = match value.kind() {
        ValueKind::Seq | ValueKind::Map | ValueKind::None | ValueKind::Bool => true,
        ValueKind::Number => !value.is_integer(),
        _ => false,
    };
    if python {
        out.write_str(&py_str(value)).map_err(Error::from)
    } else {
        escape_formatter(out, state, value)
    }
}

/// The `string` filter is Python's `str()`.
fn string(value: &Value) -> Value {
    match value.kind() {
        ValueKind::String => value.clone(),
        _ => Value::from(py_str(value)),
    }
}

/// Python's `str(value)`.
pub fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => {
            let mut out = String::new();
            py_repr(value, &mut out);
            out
        }
    }
}

/// Python's `repr(value)` for the values JSON and templates make.
fn py_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => out.push_str(&float_repr(f)),
            Err(_) => write!(out, "{value}").unwrap_or(()),
        },
        ValueKind::String => str_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&key, out);
                    out.push_str(": ");
                    py_repr(&value.get_item(&key).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        // Integers print alike; iterators, macros and the like have no Python twin.
        _ => write!(out, "{value}").unwrap_or(()),
    }
}

/// Python's `repr(str)`: single quotes unless the text has one and no double quote,
/// backslash escapes for the quote, `\`, `\t\n\r` and unprintable characters.
fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let code = c as u32;
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character: not a control, format, separator
/// (other than the space), private-use or noncharacter code point. Without Unicode's
/// tables this knows the common ones; unassigned code points count as printable.
fn is_printable(c: char) -> bool {
    !matches!(c as u32,
        0..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2
        | 0x1680 | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064
        | 0x2066..=0x206f | 0x3000 | 0xfdd0..=0xfdef | 0xfeff | 0xfff9..=0xfffb
        | 0xe000..=0xf8ff | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f | 0xf0000..=0x10ffff)
        && (c as u32) & 0xfffe != 0xfffe
}
