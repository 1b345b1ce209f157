//! The llguidance (Lark) grammar of a reply's tool calls: the family's envelope written
//! literally, each tool's name as a constant and its arguments as `%json` under the tool's
//! own schema, so every call parses and validates from the token the grammar starts at.

use serde_json::{json, Value};

use super::{CallFamily, ToolSyntax};
use crate::structured::{LazyGrammar, LazyGrammars, OutputFormat, ThinkStart};

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

/// Most calls in one reply: small models asked for calls can repeat one without end.
pub const MAX_CALLS: usize = 8;

/// The call grammar for a request. `required` and a named tool: calls from the first token
/// (after a think block, for reasoning models). `auto`: free text, and each way the family
/// opens a call (its marker anywhere; a bare `{` or a ```json fence opening the reply)
/// wakes a grammar for the rest of the call. A named tool is called once.
/// `single_token` says whether a text is one token of the model, and which: markers that are
/// are written by id, so a grammar cannot spell them out of pieces.
pub fn call_grammar(
    syntax: &ToolSyntax,
    tools: &[CallTool],
    mode: &CallMode,
    parallel: bool,
    opens_in_reasoning: bool,
    single_token: &dyn Fn(&str) -> Option<u32>,
) -> OutputFormat {
    let family = syntax.family;
    let spell = |text: &str| match single_token(text) {
        Some(id) => format!("<[{id}]>"),
        None => literal(text),
    };
    let chosen: Vec<&CallTool> = match mode {
        CallMode::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
        _ => tools.iter().collect(),
    };
    let more = |item: &str| {
        if parallel && !matches!(mode, CallMode::Named(_)) {
            format!(" ({item}){{0,{}}}", MAX_CALLS - 1)
        } else {
            String::new()
        }
    };
    // Rules every grammar shares: a call object is `{"name"` and then one of the tools'
    // names with its arguments; whitespace between the parts is allowed (and bounded).
    let mut rules = vec![
        "call: \"{\" ws? \"\\\"name\\\"\" after_name".to_owned(),
        format!(
            "after_name: {}",
            (0..chosen.len())
                .map(|i| format!("after_name_{i}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        "ws: /[ \\t\\n]{1,16}/".to_owned(),
    ];
    for (i, tool) in chosen.iter().enumerate() {
        rules.push(format!(
            "after_name_{i}: ws? \":\" ws? {} ws? \",\" ws? {} ws? \":\" ws? args_{i} ws? \"}}\"",
            literal(&format!("\"{}\"", tool.name)),
            literal(&format!("\"{}\"", family.arguments_key())),
        ));
        rules.push(format!("args_{i}: %json {}", arguments_schema(tool)));
    }
    let grammar = |start: String, rules: &[String]| {
        let mut all = vec![format!("start: {start}")];
        all.extend(rules.iter().cloned());
        all.join("\n")
    };
    let (open, close) = (spell("<tool_call>"), spell("</tool_call>"));
    let hermes_block = format!("ws? {open} ws? call ws? {close}");
    if *mode == CallMode::Auto {
        let mut lazy = Vec::new();
        match family {
            CallFamily::Hermes => lazy.push(LazyGrammar {
                opener: vec!["<tool_call>".into()],
                at_start: false,
                grammar: grammar(
                    format!("ws? call ws? {close}{}", more(&hermes_block)),
                    &rules,
                ),
            }),
            CallFamily::Mistral => lazy.push(LazyGrammar {
                opener: vec!["[TOOL_CALLS]".into()],
                at_start: false,
                grammar: grammar(
                    format!("ws? \"[\" ws? call{} ws? \"]\"", more("ws? \",\" ws? call")),
                    &rules,
                ),
            }),
            CallFamily::Llama3 => lazy.push(LazyGrammar {
                opener: vec!["<|python_tag|>".into()],
                at_start: false,
                grammar: grammar("ws? call".into(), &rules),
            }),
            CallFamily::Generic => {}
        }
        if family != CallFamily::Mistral {
            // Small models often answer a call as bare JSON, or fenced. Only `{"name"` opening
            // the reply makes it a call: other JSON (a config file, a JSON answer) stays text.
            let name = "\"name\"".to_owned();
            lazy.push(LazyGrammar {
                opener: vec!["{".into(), name.clone()],
                at_start: true,
                grammar: grammar("after_name".into(), &rules),
            });
            lazy.push(LazyGrammar {
                opener: vec!["```json".into(), "{".into(), name],
                at_start: true,
                grammar: grammar("after_name ws? \"```\"".into(), &rules),
            });
        }
        let think = match (syntax.reasoning, opens_in_reasoning) {
            (false, _) => ThinkStart::None,
            (true, false) => ThinkStart::Maybe,
            (true, true) => ThinkStart::Inside,
        };
        return OutputFormat::Triggered(LazyGrammars {
            grammars: lazy,
            think,
        });
    }
    let calls = match family {
        CallFamily::Hermes => format!(
            "{open} \"\\n\" call \"\\n\" {close}{}",
            more(&format!("\"\\n\" {open} \"\\n\" call \"\\n\" {close}"))
        ),
        CallFamily::Mistral => format!(
            "{} \"[\" call{} \"]\"",
            spell("[TOOL_CALLS]"),
            more("\", \" call")
        ),
        // One call: these formats have no list.
        CallFamily::Llama3 | CallFamily::Generic => "call".to_owned(),
    };
    // A reasoning model thinks first; the calls follow its `</think>`.
    let start = if syntax.reasoning {
        rules.push(format!(
            "think_text[suffix={}]: /(.|\\n)*/",
            literal("</think>")
        ));
        if opens_in_reasoning {
            format!("think_text ws? {calls}")
        } else {
            format!("({} think_text ws?)? {calls}", spell("<think>"))
        }
    } else {
        calls
    };
    OutputFormat::Lark(grammar(start, &rules))
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
        // Ours, always: `lenient` must follow `strict`, and the layout is what the parser and
        // the templates expect.
        object.insert(
            "x-guidance".into(),
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "lenient": !tool.strict,
            }),
        );
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

    fn lark(format: OutputFormat) -> String {
        match format {
            OutputFormat::Lark(g) => g,
            other => panic!("expected a grammar from the first token, got {other:?}"),
        }
    }

    #[test]
    fn hermes_grammar_spells_single_tokens_by_id_and_bounds_parallel_calls() {
        let tokens = |t: &str| match t {
            "<tool_call>" => Some(10),
            "</tool_call>" => Some(11),
            _ => None,
        };
        let g = lark(call_grammar(
            &syntax(CallFamily::Hermes),
            &[weather()],
            &CallMode::Required,
            true,
            false,
            &tokens,
        ));
        assert!(
            g.starts_with("start: <[10]> \"\\n\" call \"\\n\" <[11]> (\"\\n\" <[10]>"),
            "{g}"
        );
        assert!(g.contains("){0,7}"), "{g}");
        assert!(
            g.contains(
                r#"after_name_0: ws? ":" ws? "\"get_weather\"" ws? "," ws? "\"arguments\"""#
            ),
            "{g}"
        );
    }

    #[test]
    fn auto_wakes_on_the_marker_or_a_call_opening_the_reply() {
        let OutputFormat::Triggered(LazyGrammars {
            grammars: lazy,
            think,
        }) = call_grammar(
            &syntax(CallFamily::Hermes),
            &[weather()],
            &CallMode::Auto,
            false,
            false,
            &|_| None,
        )
        else {
            panic!("auto is lazy");
        };
        assert_eq!(think, ThinkStart::None);
        let openers: Vec<(String, bool)> = lazy
            .iter()
            .map(|l| (l.opener.concat(), l.at_start))
            .collect();
        assert_eq!(
            openers,
            vec![
                ("<tool_call>".into(), false),
                ("{\"name\"".into(), true),
                ("```json{\"name\"".into(), true)
            ]
        );
        assert!(
            !lazy[0].grammar.contains("{0,"),
            "one call without parallel_tool_calls"
        );
    }

    #[test]
    fn named_choice_keeps_only_that_tool_once() {
        let other = CallTool {
            name: "get_time".into(),
            parameters: json!({"type": "object"}),
            strict: true,
        };
        let g = lark(call_grammar(
            &syntax(CallFamily::Mistral),
            &[weather(), other],
            &CallMode::Named("get_time".into()),
            true,
            false,
            &|_| None,
        ));
        assert!(g.contains("get_time") && !g.contains("get_weather"));
        assert!(!g.contains("{0,"), "{g}");
        assert!(g.contains("\"lenient\":false"));
    }
}
