//! The llguidance (Lark) grammar of a reply's tool calls: the family's envelope written
//! literally, each tool's name as a constant and its arguments as `%json` under the tool's
//! own schema, so every call parses and validates from the token the grammar starts at.

use serde_json::{json, Value};

use super::{CallFamily, ToolSyntax};

/// A function the grammar may call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallTool {
    pub name: String,
    pub parameters: Value,
    /// Refuse schemas with keywords llguidance cannot enforce (else they are relaxed).
    pub strict: bool,
}

/// `tool_choice`, as far as the grammar cares (`none` has no grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallMode {
    Auto,
    Required,
    Named(String),
}

/// A grammar and when it applies.
#[derive(Debug, Clone, PartialEq)]
pub struct CallGrammar {
    pub lark: String,
    /// `auto`: the grammar starts after the model writes this single token (the family's
    /// call opener); before it the reply is free text. `None`: it applies from the first token.
    pub trigger: Option<u32>,
}

/// The call grammar for a request, or `None` when `auto` cannot be constrained (the family
/// has no opener that is one token in this vocabulary): the reply is then parsed as written.
/// `single_token` says whether a text is exactly one token of the model, and which.
pub fn call_grammar(
    syntax: &ToolSyntax,
    tools: &[CallTool],
    mode: &CallMode,
    parallel: bool,
    opens_in_reasoning: bool,
    single_token: &dyn Fn(&str) -> Option<u32>,
) -> Option<CallGrammar> {
    let family = syntax.family;
    let spell = |text: &str| match single_token(text) {
        Some(id) => format!("<[{id}]>"),
        None => literal(text),
    };
    let chosen: Vec<&CallTool> = match mode {
        CallMode::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        _ => tools.iter().collect(),
    };
    let mut rules = Vec::new();
    let alternatives: Vec<String> = (0..chosen.len()).map(|i| format!("call_{i}")).collect();
    rules.push(format!("call: {}", alternatives.join(" | ")));
    for (i, tool) in chosen.iter().enumerate() {
        let head = format!(
            "{{\"name\": \"{}\", \"{}\": ",
            tool.name,
            family.arguments_key()
        );
        rules.push(format!("call_{i}: {} args_{i} \"}}\"", literal(&head)));
        rules.push(format!("args_{i}: %json {}", arguments_schema(tool)));
    }
    // The calls once the opener (if any) is written.
    let (after_opener, full) = match family {
        CallFamily::Hermes => {
            let close = spell("</tool_call>");
            let open = spell("<tool_call>");
            let more = if parallel {
                format!(" (\"\\n\" {open} \"\\n\" call \"\\n\" {close})*")
            } else {
                String::new()
            };
            (
                format!("\"\\n\" call \"\\n\" {close}{more}"),
                format!("{open} \"\\n\" call \"\\n\" {close}{more}"),
            )
        }
        CallFamily::Mistral => {
            let more = if parallel { " (\", \" call)*" } else { "" };
            let body = format!("\"[\" call{more} \"]\"");
            (body.clone(), format!("{} {body}", spell("[TOOL_CALLS]")))
        }
        // One call: these formats have no list.
        CallFamily::Llama3 | CallFamily::Generic => ("call".to_owned(), "call".to_owned()),
    };
    let start = match mode {
        CallMode::Auto => {
            let trigger = single_token(family.opener()?)?;
            rules.insert(0, format!("start: {after_opener}"));
            return Some(CallGrammar {
                lark: rules.join("\n"),
                trigger: Some(trigger),
            });
        }
        CallMode::Required | CallMode::Named(_) => full,
    };
    // A reasoning model thinks first; the calls follow its `</think>`.
    let start = if syntax.reasoning {
        rules.push(format!(
            "think_text[suffix={}]: /(.|\\n)*/",
            literal("</think>")
        ));
        rules.push("ws: /[ \\t\\n]+/".to_owned());
        if opens_in_reasoning {
            format!("think_text ws? {start}")
        } else {
            format!("({} think_text ws?)? {start}", spell("<think>"))
        }
    } else {
        start
    };
    rules.insert(0, format!("start: {start}"));
    Some(CallGrammar {
        lark: rules.join("\n"),
        trigger: None,
    })
}

/// A Lark string literal (JSON string syntax).
fn literal(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// The tool's schema with our JSON layout (the one the chat templates render calls in), and
/// unsupported keywords relaxed unless the tool is strict.
fn arguments_schema(tool: &CallTool) -> Value {
    let mut schema = tool.parameters.clone();
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "lenient": !tool.strict,
            })
        });
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> CallTool {
        CallTool {
            name: "get_weather".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            strict: false,
        }
    }

    fn syntax(family: CallFamily) -> ToolSyntax {
        ToolSyntax {
            family,
            template_renders_tools: true,
            reasoning: false,
        }
    }

    #[test]
    fn hermes_grammar_spells_single_tokens_by_id() {
        let tokens = |t: &str| match t {
            "<tool_call>" => Some(10),
            "</tool_call>" => Some(11),
            _ => None,
        };
        let g = call_grammar(
            &syntax(CallFamily::Hermes),
            &[weather()],
            &CallMode::Required,
            true,
            false,
            &tokens,
        )
        .unwrap();
        assert_eq!(g.trigger, None);
        assert!(
            g.lark
                .starts_with("start: <[10]> \"\\n\" call \"\\n\" <[11]> (\"\\n\" <[10]>"),
            "{}",
            g.lark
        );
        assert!(g
            .lark
            .contains("\"{\\\"name\\\": \\\"get_weather\\\", \\\"arguments\\\": \" args_0"));
        let auto = call_grammar(
            &syntax(CallFamily::Hermes),
            &[weather()],
            &CallMode::Auto,
            false,
            false,
            &tokens,
        )
        .unwrap();
        assert_eq!(auto.trigger, Some(10));
        assert!(
            auto.lark
                .starts_with("start: \"\\n\" call \"\\n\" <[11]>\n"),
            "{}",
            auto.lark
        );
    }

    #[test]
    fn auto_without_a_one_token_opener_is_unconstrained() {
        let none = |_: &str| None;
        for family in [CallFamily::Hermes, CallFamily::Generic] {
            assert_eq!(
                call_grammar(
                    &syntax(family),
                    &[weather()],
                    &CallMode::Auto,
                    true,
                    false,
                    &none
                ),
                None
            );
        }
    }

    #[test]
    fn named_choice_keeps_only_that_tool() {
        let other = CallTool {
            name: "get_time".into(),
            parameters: json!({"type": "object"}),
            strict: true,
        };
        let g = call_grammar(
            &syntax(CallFamily::Llama3),
            &[weather(), other],
            &CallMode::Named("get_time".into()),
            true,
            false,
            &|_| None,
        )
        .unwrap();
        assert!(g.lark.contains("get_time") && !g.lark.contains("get_weather"));
        assert!(g.lark.contains("\\\"parameters\\\": "));
        assert!(g.lark.contains("\"lenient\":false"));
    }
}
