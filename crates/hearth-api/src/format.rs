//! `response_format`: text, any JSON object, or JSON matching a schema — with the size and
//! depth limits that keep grammar compilation bounded.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// Largest schema accepted, serialised (as the seed's 3.2.0 did).
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Deepest nesting of objects and arrays accepted in a schema.
pub const MAX_SCHEMA_DEPTH: usize = 20;

/// A validated structured-output request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JsonFormat {
    Object,
    Schema(Value),
    /// vLLM's `guided_regex`.
    Regex(String),
    /// vLLM's `guided_choice`.
    Choice(Vec<String>),
}

/// vLLM's guided-decoding fields, accepted next to OpenAI's `response_format`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GuidedFields {
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
}

impl GuidedFields {
    pub fn is_set(&self) -> bool {
        self.guided_json.is_some() || self.guided_regex.is_some() || self.guided_choice.is_some()
    }
}

/// The one constraint a request asks for, from `response_format` or a `guided_*` field.
pub fn parse_constraint(
    response_format: Option<&Value>,
    guided: &GuidedFields,
) -> Result<Option<JsonFormat>, ApiError> {
    let mut found: Vec<(&str, JsonFormat)> = Vec::new();
    if let Some(format) = parse_response_format(response_format)? {
        found.push(("response_format", format));
    }
    if let Some(schema) = &guided.guided_json {
        // vLLM accepts the schema as an object or as JSON text.
        let schema = match schema {
            Value::String(text) => serde_json::from_str(text).map_err(|e| {
                ApiError::invalid_value(
                    "guided_json",
                    format!("guided_json is not valid JSON: {e}"),
                )
            })?,
            other => other.clone(),
        };
        check_schema("guided_json", &schema)?;
        found.push(("guided_json", JsonFormat::Schema(schema)));
    }
    if let Some(rx) = &guided.guided_regex {
        if rx.is_empty() || rx.len() > MAX_SCHEMA_BYTES {
            return Err(ApiError::invalid_value(
                "guided_regex",
                format!("guided_regex must be 1 to {MAX_SCHEMA_BYTES} bytes"),
            ));
        }
        found.push(("guided_regex", JsonFormat::Regex(rx.clone())));
    }
    if let Some(choices) = &guided.guided_choice {
        let total: usize = choices.iter().map(String::len).sum();
        if choices.is_empty() || choices.iter().any(String::is_empty) || total > MAX_SCHEMA_BYTES {
            return Err(ApiError::invalid_value(
                "guided_choice",
                "guided_choice must be a non-empty list of non-empty strings",
            ));
        }
        found.push(("guided_choice", JsonFormat::Choice(choices.clone())));
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, f)| f)),
        _ => {
            Err(ApiError::invalid_value(
                found[1].0,
                format!(
                "use one of response_format, guided_json, guided_regex and guided_choice; got {}",
                found.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" and ")
            ),
            ))
        }
    }
}

/// Parse `response_format`; `None` means free text.
pub fn parse_response_format(format: Option<&Value>) -> Result<Option<JsonFormat>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    let bad = |message: &str| ApiError::invalid_value("response_format", message.to_owned());
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(JsonFormat::Object)),
        Some("json_schema") => {
            let spec = format.get("json_schema").ok_or_else(|| {
                bad("response_format.json_schema is required for type json_schema")
            })?;
            if let Some(name) = spec.get("name") {
                let valid = name.as_str().is_some_and(|n| {
                    !n.is_empty()
                        && n.len() <= 64
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
                if !valid {
                    return Err(bad(
                        "json_schema.name must be 1-64 letters, digits, '_' or '-'",
                    ));
                }
            }
            let schema = spec
                .get("schema")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            check_schema("response_format", &schema)?;
            Ok(Some(JsonFormat::Schema(schema)))
        }
        Some(other) => Err(bad(&format!(
            "unknown response_format type '{other}'; expected text, json_object or json_schema"
        ))),
        None => Err(bad("response_format needs a type")),
    }
}

/// Size and depth limits keep grammar compilation bounded.
pub(crate) fn check_schema(param: &str, schema: &Value) -> Result<(), ApiError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(ApiError::invalid_value(
            param,
            "the JSON schema must be an object",
        ));
    }
    let size = schema.to_string().len();
    if size > MAX_SCHEMA_BYTES {
        return Err(ApiError::invalid_value(
            param,
            format!("the JSON schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES}"),
        ));
    }
    let depth = depth(schema);
    if depth > MAX_SCHEMA_DEPTH {
        return Err(ApiError::invalid_value(
            param,
            format!("the JSON schema nests {depth} levels deep; the limit is {MAX_SCHEMA_DEPTH}"),
        ));
    }
    Ok(())
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_parse_and_limits_hold() {
        assert_eq!(
            parse_response_format(Some(&json!({"type": "text"}))).unwrap(),
            None
        );
        assert_eq!(
            parse_response_format(Some(&json!({"type": "json_object"}))).unwrap(),
            Some(JsonFormat::Object)
        );
        let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}});
        assert_eq!(
            parse_response_format(Some(&schema)).unwrap(),
            Some(JsonFormat::Schema(json!({"type": "integer"})))
        );
        let mut deep = json!({"type": "string"});
        for _ in 0..25 {
            deep = json!({"type": "array", "items": deep});
        }
        let err = parse_response_format(Some(
            &json!({"type": "json_schema", "json_schema": {"schema": deep}}),
        ))
        .unwrap_err();
        assert!(err.message.contains("levels deep"), "{}", err.message);
        let big = json!({"type": "json_schema", "json_schema": {"schema": {"description": "x".repeat(70_000)}}});
        assert!(parse_response_format(Some(&big))
            .unwrap_err()
            .message
            .contains("bytes"));
        assert!(parse_response_format(Some(&json!({"type": "xml"}))).is_err());
    }
}
