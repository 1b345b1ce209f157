//! Tool calling on the request side: `tools`, `tool_choice`, `parallel_tool_calls` and the
//! legacy `functions` / `function_call`, validated into one `ToolUse` that travels to the
//! worker (which owns the model's call syntax, the call grammar and the reply parser).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::format::check_schema;

/// Most tools per request (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;
/// Most bytes of parameter schemas over all tools: each is compiled into the call grammar
/// (two or three times for `auto`), so the sum is what bounds a request's compile work.
pub const MAX_TOOL_SCHEMA_BYTES: usize = 256 * 1024;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    /// JSON Schema of the arguments object (`{"type": "object"}` when none was given).
    pub parameters: Value,
    /// `strict: true`: every keyword of the schema must be enforced, or the request fails.
    /// Otherwise keywords the grammar engine cannot enforce are relaxed, not refused.
    pub strict: bool,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolChoice {
    /// No call grammar; the tools are still shown to the model if its template wants them.
    None,
    /// Free text, or calls: the model decides.
    Auto,
    /// At least one call, from the first token.
    Required,
    /// Exactly this function.
    Named(String),
}

/// How the request wants tools used, and how the reply reports calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    pub tools: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): more than one call in a reply.
    pub parallel: bool,
    /// The request used the legacy `functions` API: the reply carries `function_call`.
    pub legacy: bool,
}

impl ToolUse {
    /// Whether calls are parsed out of the reply (and constrained by a grammar).
    pub fn calls_possible(&self) -> bool {
        self.choice != ToolChoice::None
    }
}

/// The tool fields of a chat request, as sent.
pub struct ToolFields<'a> {
    pub tools: Option<&'a Vec<Value>>,
    pub tool_choice: Option<&'a Value>,
    pub parallel_tool_calls: Option<bool>,
    pub functions: Option<&'a Value>,
    pub function_call: Option<&'a Value>,
}

/// The tool definitions the template sees (OpenAI's `tools` shape) and how they are used;
/// `None` when the request has no tools.
pub fn parse_tools(fields: ToolFields<'_>) -> Result<Option<(Vec<Value>, ToolUse)>, ApiError> {
    let functions = fields.functions.filter(|v| !v.is_null());
    let function_call = fields.function_call.filter(|v| !v.is_null());
    let tool_choice = fields.tool_choice.filter(|v| !v.is_null());
    if functions.is_some() && fields.tools.is_some() {
        return Err(ApiError::invalid_value(
            "functions",
            "send 'tools' or the legacy 'functions', not both",
        ));
    }
    if function_call.is_some() && tool_choice.is_some() {
        return Err(ApiError::invalid_value(
            "function_call",
            "send 'tool_choice' or the legacy 'function_call', not both",
        ));
    }
    // Legacy function calling maps onto tools: each function is a tool's `function`.
    let (tools, legacy): (Vec<Value>, bool) = match (fields.tools, functions) {
        (Some(tools), _) => (tools.clone(), false),
        (None, Some(functions)) => {
            let list = functions.as_array().ok_or_else(|| {
                ApiError::invalid_value("functions", "functions must be a list of functions")
            })?;
            let tools = list
                .iter()
                .map(|f| json!({"type": "function", "function": f}))
                .collect();
            (tools, true)
        }
        (None, None) => {
            // "none" without tools asks for nothing; any other choice needs tools to choose.
            if tool_choice.is_some_and(|c| c != "none") {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    "tool_choice is only allowed when tools are given",
                ));
            }
            if function_call.is_some() {
                return Err(ApiError::invalid_value(
                    "function_call",
                    "function_call is only allowed when functions are given",
                ));
            }
            return Ok(None);
        }
    };
    let list_param = if legacy { "functions" } else { "tools" };
    if tools.is_empty() {
        return Err(ApiError::invalid_value(
            list_param,
            format!("'{list_param}' must not be empty; leave it out to send no tools"),
        ));
    }
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid_value(
            list_param,
            format!("at most {MAX_TOOLS} tools are allowed, got {}", tools.len()),
        ));
    }
    let mut specs: Vec<ToolSpec> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = |field: &str| {
            if legacy {
                format!("functions[{i}]{field}")
            } else {
                format!("tools[{i}]{}", field_path(field))
            }
        };
        let spec = parse_tool(tool, legacy, &at)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(ApiError::invalid_value(
                &at(".name"),
                format!("two tools are named '{}'; names must be unique", spec.name),
            ));
        }
        specs.push(spec);
    }
    let schema_bytes: usize = specs.iter().map(|s| s.parameters.to_string().len()).sum();
    if schema_bytes > MAX_TOOL_SCHEMA_BYTES {
        return Err(ApiError::invalid_value(
            list_param,
            format!(
                "the tools' parameter schemas come to {schema_bytes} bytes; the limit is \
                 {MAX_TOOL_SCHEMA_BYTES}"
            ),
        ));
    }
    let (choice_param, choice) = match (tool_choice, function_call) {
        (Some(choice), _) => ("tool_choice", parse_choice(choice, false)?),
        (None, Some(call)) => ("function_call", parse_choice(call, true)?),
        (None, None) => ("tool_choice", ToolChoice::Auto),
    };
    if let ToolChoice::Named(name) = &choice {
        if !specs.iter().any(|s| &s.name == name) {
            return Err(ApiError::invalid_value(
                choice_param,
                format!("{choice_param} names '{name}', which is not one of the tools given"),
            ));
        }
    }
    // The legacy API returns a single `function_call`.
    let parallel = !legacy && fields.parallel_tool_calls.unwrap_or(true);
    Ok(Some((
        tools,
        ToolUse {
            tools: specs,
            choice,
            parallel,
            legacy,
        },
    )))
}

/// `.name` under `tools[i]` is `tools[i].function.name` (`.type` stays where it is).
fn field_path(field: &str) -> String {
    match field {
        "" | ".type" => field.to_owned(),
        _ => format!(".function{field}"),
    }
}

fn parse_tool(
    tool: &Value,
    legacy: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<ToolSpec, ApiError> {
    let function = if legacy {
        tool.get("function").unwrap_or(&Value::Null)
    } else {
        if !tool.is_object() {
            return Err(ApiError::invalid_value(
                &at(""),
                "each tool must be {\"type\": \"function\", \"function\": {...}}",
            ));
        }
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(ApiError::invalid_value(
                    &at(".type"),
                    format!("tools of type '{other}' are not supported; use \"function\""),
                ))
            }
            None => {
                return Err(ApiError::invalid_value(
                    &at(".type"),
                    "each tool needs \"type\": \"function\"",
                ))
            }
        }
        tool.get("function").unwrap_or(&Value::Null)
    };
    if !function.is_object() {
        return Err(ApiError::invalid_value(
            &at(""),
            "a tool needs a \"function\" object with a name",
        ));
    }
    let name = match function.get("name").and_then(Value::as_str) {
        Some(name) if valid_name(name) => name.to_owned(),
        Some(name) => {
            return Err(ApiError::invalid_value(
                &at(".name"),
                format!(
                    "function names must be 1 to 64 letters, digits, '_' or '-'; got {:?}",
                    truncate(name, 80)
                ),
            ))
        }
        None => {
            return Err(ApiError::invalid_value(
                &at(".name"),
                "a function needs a name",
            ))
        }
    };
    if let Some(description) = function.get("description") {
        if !description.is_string() && !description.is_null() {
            return Err(ApiError::invalid_value(
                &at(".description"),
                "a function's description must be a string",
            ));
        }
    }
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema) => {
            let param = at(".parameters");
            if !schema.is_object() {
                return Err(ApiError::invalid_value(
                    &param,
                    "parameters must be a JSON Schema object",
                ));
            }
            if let Some(kind) = schema.get("type") {
                if kind != "object" {
                    return Err(ApiError::invalid_value(
                        &param,
                        format!("parameters must describe an object (\"type\": \"object\"), got \"type\": {kind}"),
                    ));
                }
            }
            check_schema(&param, schema)?;
            schema.clone()
        }
    };
    let strict = match function.get("strict") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(strict)) => *strict,
        Some(_) => {
            return Err(ApiError::invalid_value(
                &at(".strict"),
                "strict must be true or false",
            ))
        }
    };
    Ok(ToolSpec {
        name,
        parameters,
        strict,
    })
}

fn parse_choice(choice: &Value, legacy: bool) -> Result<ToolChoice, ApiError> {
    let param = if legacy {
        "function_call"
    } else {
        "tool_choice"
    };
    match choice {
        Value::String(s) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" if !legacy => Ok(ToolChoice::Required),
            other => Err(ApiError::invalid_value(
                param,
                if legacy {
                    format!("function_call must be \"none\", \"auto\" or {{\"name\": ...}}; got {other:?}")
                } else {
                    format!("tool_choice must be \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}; got {other:?}")
                },
            )),
        },
        Value::Object(object) => {
            let name = if legacy {
                object.get("name")
            } else {
                if object.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(ApiError::invalid_value(
                        "tool_choice",
                        "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ));
                }
                object.get("function").and_then(|f| f.get("name"))
            };
            match name.and_then(Value::as_str) {
                Some(name) => Ok(ToolChoice::Named(name.to_owned())),
                None => Err(ApiError::invalid_value(
                    param,
                    format!("{param} must name the function to call"),
                )),
            }
        }
        _ => Err(ApiError::invalid_value(
            param,
            format!("{param} must be a string or an object"),
        )),
    }
}

/// OpenAI's rule for function names: `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// A call the model made, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// A piece of a call as it streams: the first piece of each call has its id and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which call of the reply (0, 1, ...).
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' JSON text.
    #[serde(default)]
    pub arguments: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(value: Value) -> Result<Option<(Vec<Value>, ToolUse)>, ApiError> {
        let tools: Option<Vec<Value>> = value
            .get("tools")
            .map(|t| serde_json::from_value(t.clone()).unwrap());
        parse_tools(ToolFields {
            tools: tools.as_ref(),
            tool_choice: value.get("tool_choice"),
            parallel_tool_calls: value.get("parallel_tool_calls").and_then(Value::as_bool),
            functions: value.get("functions"),
            function_call: value.get("function_call"),
        })
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    fn param_of(value: Value) -> String {
        tools(value).unwrap_err().param.unwrap_or_default()
    }

    #[test]
    fn tools_and_choices_parse() {
        let (raw, used) = tools(json!({"tools": [weather()]})).unwrap().unwrap();
        assert_eq!(raw.len(), 1);
        assert_eq!(used.choice, ToolChoice::Auto);
        assert!(used.parallel && !used.legacy);
        let (_, used) = tools(json!({"tools": [weather()], "tool_choice": "required",
            "parallel_tool_calls": false}))
        .unwrap()
        .unwrap();
        assert_eq!(used.choice, ToolChoice::Required);
        assert!(!used.parallel);
        let (_, used) = tools(json!({"tools": [weather()],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
        .unwrap()
        .unwrap();
        assert_eq!(used.choice, ToolChoice::Named("get_weather".into()));
        assert_eq!(
            used.tools[0].parameters["properties"]["city"]["type"],
            "string"
        );
    }

    #[test]
    fn legacy_functions_map_onto_tools() {
        let (raw, used) = tools(json!({
            "functions": [{"name": "f", "parameters": {"type": "object"}}],
            "function_call": {"name": "f"}
        }))
        .unwrap()
        .unwrap();
        assert_eq!(raw[0]["type"], "function");
        assert_eq!(raw[0]["function"]["name"], "f");
        assert_eq!(used.choice, ToolChoice::Named("f".into()));
        assert!(used.legacy && !used.parallel);
        assert_eq!(
            param_of(json!({"functions": [{"name": "f"}], "function_call": {"name": "g"}})),
            "function_call"
        );
        assert_eq!(
            param_of(json!({"functions": [{"name": "bad name"}]})),
            "functions[0].name"
        );
    }

    #[test]
    fn bad_definitions_name_their_param() {
        assert_eq!(
            param_of(json!({"tools": [{"type": "retrieval"}]})),
            "tools[0].type"
        );
        assert_eq!(param_of(json!({"tools": ["x"]})), "tools[0]");
        assert_eq!(
            param_of(json!({"tools": [{"type": "function"}]})),
            "tools[0]"
        );
        assert_eq!(
            param_of(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})),
            "tools[0].function.name"
        );
        assert_eq!(
            param_of(json!({"tools": [weather(), weather()]})),
            "tools[1].function.name"
        );
        assert_eq!(
            param_of(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]})
            ),
            "tools[0].function.parameters"
        );
        assert_eq!(
            param_of(
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]})
            ),
            "tools[0].function.parameters"
        );
        assert_eq!(
            param_of(
                json!({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]})
            ),
            "tools[0].function.strict"
        );
        assert_eq!(param_of(json!({"tools": []})), "tools");
        assert_eq!(
            param_of(
                json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}})
            ),
            "tool_choice"
        );
        assert_eq!(
            param_of(json!({"tools": [weather()], "tool_choice": "always"})),
            "tool_choice"
        );
        assert_eq!(param_of(json!({"tool_choice": "auto"})), "tool_choice");
        assert!(tools(json!({"tool_choice": "none"})).unwrap().is_none());
        let many: Vec<Value> = (0..=MAX_TOOLS)
            .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
            .collect();
        assert_eq!(param_of(json!({ "tools": many })), "tools");
    }
}
