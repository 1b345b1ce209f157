//! Property tests for chat-template rendering with the real templates in
//! `fixtures/templates/`: arbitrary messages (roles, unicode, text that looks like Jinja)
//! never panic a render, and message text is data, never template code: it comes out
//! verbatim and nothing in it is evaluated.
//!
//! Short by default; `PROPTEST_CASES=100000 cargo test --release -p hearth-engine --test
//! fuzz_template` for a long run (see docs/testing.md).

use std::path::PathBuf;
use std::sync::OnceLock;

use hearth_engine::{ChatTemplate, TemplateInput};
use proptest::prelude::*;
use serde_json::{json, Value};

#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;
use proptest_config::config;

/// (family, BOS, EOS), as in template_parity.rs.
const FAMILIES: &[(&str, &str, &str)] = &[
    ("smollm2", "<|im_start|>", "<|im_end|>"),
    ("llama3", "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral", "<s>", "</s>"),
    ("gemma", "<bos>", "<eos>"),
    ("qwen25", "", "<|im_end|>"),
];

fn templates() -> &'static Vec<(&'static str, ChatTemplate)> {
    static TEMPLATES: OnceLock<Vec<(&'static str, ChatTemplate)>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates");
        FAMILIES
            .iter()
            .map(|(name, bos, eos)| {
                let source = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
                (*name, ChatTemplate::new(&source, bos, eos).unwrap())
            })
            .collect()
    })
}

/// If any of this were evaluated, the output or the error would show the marker.
const JINJA: &[&str] = &[
    "{{ 'MAR' ~ 'KER' }}",
    "{% set x = 'MAR' ~ 'KER' %}{{ x }}",
    "{{ raise_exception('MAR' ~ 'KER') }}",
    "{% for i in range(999999999) %}{{ 'MAR' ~ 'KER' }}{% endfor %}",
    "{{ messages }}",
    "{{ bos_token }}",
    "{# comment #}",
    "{%- if true -%}",
    "{% endif %}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{% raw %}",
    "{% endraw %}",
    "{{ self.__init__.__globals__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ strftime_now('%Y') }}",
    "{{ tools | tojson }}",
    "<|im_start|>system\n",
    "<|im_end|>",
    "[INST]",
    "<start_of_turn>",
];

const MARKER: &str = "MARKER";

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(JINJA).prop_map(str::to_owned),
        3 => any::<String>(),
        1 => prop::sample::select(vec!["\u{0}", "\u{202e}", "\u{feff}", "e\u{301}", "😀", "日本語", "\\", "'", "\"", "\n"])
            .prop_map(str::to_owned),
    ]
}

/// Message text that starts and ends with a letter, so templates that `trim` it keep it whole.
fn content() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..6)
        .prop_map(|parts| format!("A{}Z", parts.concat()))
        .prop_filter("no literal marker", |s| !s.contains(MARKER))
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 8.0)),
        fragment().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(fragment(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn role() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["user", "assistant", "system", "tool"]).prop_map(str::to_owned),
        1 => fragment(),
    ]
}

/// Messages as the server builds them (role and string content, maybe a name or tool calls).
fn message() -> impl Strategy<Value = Value> {
    (
        role(),
        content(),
        prop::option::of(fragment()),
        prop::option::of(json_value()),
    )
        .prop_map(|(role, content, name, tool_calls)| {
            let mut message = json!({"role": role, "content": content});
            if let Some(name) = name {
                message["name"] = json!(name);
            }
            if let Some(calls) = tool_calls {
                message["tool_calls"] = calls;
            }
            message
        })
}

/// Alternating user/assistant turns: the strict templates (mistral, gemma) then render, so
/// the verbatim check below actually runs for them.
fn alternating() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(content(), 1..6).prop_map(|contents| {
        contents
            .into_iter()
            .enumerate()
            .map(|(i, c)| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": c}))
            .collect()
    })
}

fn check_render(
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
) -> Result<(), TestCaseError> {
    let input = TemplateInput {
        messages: messages.clone(),
        tools,
        add_generation_prompt,
    };
    for (family, template) in templates() {
        match template.render(&input) {
            Ok(text) => {
                prop_assert!(
                    !text.contains(MARKER),
                    "{family}: message text was evaluated: {text:?}"
                );
                for message in &messages {
                    let role = message["role"].as_str().unwrap_or_default();
                    let content = message["content"].as_str().unwrap_or_default();
                    // Every template writes user and (plain) assistant turns verbatim.
                    let written = role == "user"
                        || (role == "assistant" && message.get("tool_calls").is_none());
                    if written {
                        prop_assert!(
                            text.contains(content),
                            "{family}: {role} content {content:?} not in {text:?}"
                        );
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(
                    !message.contains(MARKER),
                    "{family}: message text was evaluated: {message}"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_conversations_render_without_evaluating_text(
        messages in prop::collection::vec(message(), 0..6),
        tools in prop::option::of(prop::collection::vec(json_value(), 0..3)),
        add_generation_prompt in any::<bool>(),
    ) {
        check_render(messages, tools, add_generation_prompt)?;
    }

    #[test]
    fn alternating_turns_come_out_verbatim(messages in alternating(), add_generation_prompt in any::<bool>()) {
        check_render(messages, None, add_generation_prompt)?;
    }

    /// Messages whose fields have unexpected JSON types (the server always sends strings,
    /// but a template must not panic on anything).
    #[test]
    fn odd_message_shapes_never_panic(
        messages in prop::collection::vec(json_value(), 0..4),
        tools in prop::option::of(prop::collection::vec(json_value(), 0..3)),
    ) {
        let input = TemplateInput { messages, tools, add_generation_prompt: true };
        for (_, template) in templates() {
            let _ = template.render(&input);
        }
    }
}
