//! Python's `json.dumps`, byte for byte, for templates that serialise tools and arguments.

use serde_json::Value;

pub struct DumpOptions {
    /// `None` writes everything on one line.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
    pub ensure_ascii: bool,
}

pub fn dumps(value: &Value, options: &DumpOptions) -> String {
    let mut out = String::new();
    write_value(value, options, 0, &mut out);
    out
}

fn newline(options: &DumpOptions, depth: usize, out: &mut String) {
    if let Some(indent) = &options.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_value(value: &Value, options: &DumpOptions, depth: usize, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, options.ensure_ascii, out),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.item_separator);
                }
                newline(options, depth + 1, out);
                write_value(item, options, depth + 1, out);
            }
            newline(options, depth, out);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.item_separator);
                }
                newline(options, depth + 1, out);
                write_string(key, options.ensure_ascii, out);
                out.push_str(&options.key_separator);
                write_value(item, options, depth + 1, out);
            }
            newline(options, depth, out);
            out.push('}');
        }
    }
}

fn write_number(n: &serde_json::Number, out: &mut String) {
    match n.as_f64().filter(|_| n.is_f64()) {
        Some(f) => out.push_str(&float_repr(f)),
        None => out.push_str(&n.to_string()),
    }
}

/// Python's `repr(float)` (which `json.dumps` and `str()` use): the shortest digits that
/// round-trip, in positional notation while the decimal point falls within 16 digits
/// (`1e+16`, `1e-05` otherwise), always with a '.' or an exponent. Rust's `{}` never uses
/// an exponent and ryu writes `1e20`, so neither matches as is.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let point = exponent + 1; // digits before the decimal point
    let mut out = String::new();
    if f.is_sign_negative() {
        out.push('-');
    }
    if !(-4 < point && point <= 16) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(&format!("e{sign}{:02}", exponent.abs()));
    } else if point <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat(point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else if (point as usize) < digits.len() {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else {
        out.push_str(&digits);
        out.push_str(&"0".repeat(point as usize - digits.len()));
        out.push_str(".0");
    }
    out
}

fn write_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compact() -> DumpOptions {
        DumpOptions {
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
            ensure_ascii: false,
        }
    }

    #[test]
    fn matches_python_default_separators_and_key_order() {
        let v = json!({"b": [1, 2.5, "x"], "a": {"é": null, "t": true}});
        assert_eq!(
            dumps(&v, &compact()),
            r#"{"b": [1, 2.5, "x"], "a": {"é": null, "t": true}}"#
        );
    }

    #[test]
    fn floats_print_like_python_repr() {
        for (f, python) in [
            (1.5, "1.5"),
            (2.0, "2.0"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1e20, "1e+20"),
            (1.5e300, "1.5e+300"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (123.456, "123.456"),
        ] {
            assert_eq!(float_repr(f), python, "{f:?}");
        }
    }

    #[test]
    fn indents_like_python() {
        let options = DumpOptions {
            indent: Some("  ".into()),
            item_separator: ",".into(),
            ..compact()
        };
        assert_eq!(
            dumps(&json!({"a": [1, {}], "b": []}), &options),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
    }

    #[test]
    fn escapes_like_python() {
        let options = DumpOptions {
            ensure_ascii: true,
            ..compact()
        };
        assert_eq!(
            dumps(&json!("a\"\n\u{1}é😀"), &options),
            r#""a\"\n\u0001\u00e9\ud83d\ude00""#
        );
        assert_eq!(dumps(&json!(3.0), &compact()), "3.0");
    }
}
