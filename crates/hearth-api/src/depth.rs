//! Nesting depth of a JSON body, measured on the raw bytes before anything parses it.
//!
//! serde_json stops at 128 levels; a body just under that parsed here but failed again once
//! wrapped in an IPC frame, deeper on the worker, and took the worker down. Bounding depth
//! once at the edge keeps every later parse far from the limit, and a byte scan can name the
//! top-level field that holds the deep part even when the body is too deep to parse at all.

/// Deepest nesting of objects and arrays a request body may have. Real requests (JSON
/// schemas, tool definitions, message lists) stay well under 20.
pub const MAX_JSON_DEPTH: usize = 64;

/// The body nests objects/arrays deeper than the limit. `field` is the top-level key whose
/// value goes too deep, when the body is an object and the key could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooDeep {
    pub field: Option<String>,
}

/// Check `body` against `limit` levels. Malformed JSON is not this function's concern: it
/// only counts brackets outside strings, and the parser reports the rest.
pub fn check_depth(body: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // The last string that ended at depth 1 (a candidate top-level key) and where it began.
    let mut key_start = None;
    let mut last_key: Option<(usize, usize)> = None;
    for (i, &byte) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
                if let Some(start) = key_start.take() {
                    last_key = Some((start, i));
                }
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                if depth == 1 {
                    key_start = Some(i + 1);
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    let field = last_key
                        .filter(|_| body.first_non_space() == Some(b'{'))
                        .map(|(start, end)| {
                            String::from_utf8_lossy(&body[start..end]).into_owned()
                        });
                    return Err(TooDeep { field });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

trait FirstNonSpace {
    fn first_non_space(&self) -> Option<u8>;
}

impl FirstNonSpace for [u8] {
    fn first_non_space(&self) -> Option<u8> {
        self.iter().copied().find(|b| !b.is_ascii_whitespace())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        "[".repeat(levels) + &"]".repeat(levels)
    }

    #[test]
    fn counts_brackets_outside_strings_only() {
        assert!(check_depth(b"{\"a\": \"[[[[[[[[[[\"}", 2).is_ok());
        assert!(check_depth(b"{\"a\": \"\\\"[[[[\"}", 2).is_ok());
        assert!(check_depth(nested(64).as_bytes(), 64).is_ok());
        assert_eq!(
            check_depth(nested(65).as_bytes(), 64),
            Err(TooDeep { field: None })
        );
    }

    #[test]
    fn names_the_top_level_field_that_goes_deep() {
        let body = format!(
            r#"{{"model": "x", "messages": [{{"role": "user", "content": "hi"}}], "tools": {}}}"#,
            nested(200)
        );
        let err = check_depth(body.as_bytes(), 64).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("tools"));
        // Keys of nested objects are not top-level keys.
        let body = format!(
            r#"{{"response_format": {{"json_schema": {}}}}}"#,
            nested(100)
        );
        let err = check_depth(body.as_bytes(), 64).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("response_format"));
    }
}
