//! Chat templates render exactly as Python's jinja2 renders them under Hugging Face's
//! settings. The oracle is `fixtures/render_template.py`, run with the system's python3.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use hearth_engine::{ChatTemplate, EngineError, TemplateInput};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Family {
    name: &'static str,
    bos: &'static str,
    eos: &'static str,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "smollm2",
        bos: "<|im_start|>",
        eos: "<|im_end|>",
    },
    Family {
        name: "llama3",
        bos: "<|begin_of_text|>",
        eos: "<|eot_id|>",
    },
    Family {
        name: "mistral",
        bos: "<s>",
        eos: "</s>",
    },
    Family {
        name: "gemma",
        bos: "<bos>",
        eos: "<eos>",
    },
    Family {
        name: "qwen25",
        bos: "",
        eos: "<|im_end|>",
    },
];

fn conversations() -> Vec<(Vec<Value>, Option<Vec<Value>>, bool)> {
    let tools = vec![json!({
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city, in °C",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
                "required": ["city"]
            }
        }
    })];
    vec![
        (
            vec![json!({"role": "user", "content": "Hello!"})],
            None,
            true,
        ),
        (
            vec![json!({"role": "user", "content": "Hello!"})],
            None,
            false,
        ),
        (
            vec![
                json!({"role": "system", "content": "You are terse."}),
                json!({"role": "user", "content": "  Name a colour.  \n"}),
            ],
            None,
            true,
        ),
        (
            vec![
                json!({"role": "user", "content": "Say \"hi\" in 日本語 😀"}),
                json!({"role": "assistant", "content": "こんにちは"}),
                json!({"role": "user", "content": "And in French?"}),
            ],
            None,
            true,
        ),
        (
            vec![json!({"role": "assistant", "content": "I speak first."})],
            None,
            true,
        ),
        (
            vec![
                json!({"role": "user", "content": "Weather in Paris?"}),
                json!({"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
                ]}),
                json!({"role": "tool", "content": "{\"temp\": 21.5}"}),
                json!({"role": "tool", "content": "{\"temp\": 19.0}"}),
            ],
            Some(tools.clone()),
            true,
        ),
        (
            vec![
                json!({"role": "system", "content": "Use tools."}),
                json!({"role": "user", "content": "Hi"}),
            ],
            Some(tools),
            true,
        ),
    ]
}

#[test]
fn templates_render_like_python_jinja2() {
    let mut cases = Vec::new();
    for family in FAMILIES {
        let source =
            std::fs::read_to_string(fixtures().join(format!("templates/{}.jinja", family.name)))
                .unwrap();
        for (messages, tools, add_generation_prompt) in conversations() {
            cases.push((
                family.name,
                json!({
                    "template": source,
                    "bos_token": family.bos,
                    "eos_token": family.eos,
                    "messages": messages,
                    "tools": tools,
                    "add_generation_prompt": add_generation_prompt,
                }),
            ));
        }
    }
    let expected = python_render(&cases.iter().map(|c| c.1.clone()).collect::<Vec<_>>());
    let mut errors_seen = 0;
    for ((family, case), oracle) in cases.iter().zip(expected) {
        let template = ChatTemplate::new(
            case["template"].as_str().unwrap(),
            case["bos_token"].as_str().unwrap(),
            case["eos_token"].as_str().unwrap(),
        )
        .unwrap();
        let ours = template.render(&TemplateInput {
            messages: serde_json::from_value(case["messages"].clone()).unwrap(),
            tools: serde_json::from_value(case["tools"].clone()).unwrap(),
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
        });
        match (&oracle["text"], &oracle["error"], ours) {
            (Value::String(text), _, Ok(rendered)) => {
                assert_eq!(&rendered, text, "{family}: {}", case["messages"])
            }
            (_, Value::String(message), Err(EngineError::InvalidRequest(ours))) => {
                assert_eq!(&ours, message, "{family}");
                errors_seen += 1;
            }
            (_, _, ours) => panic!("{family}: python gave {oracle}, we gave {ours:?}"),
        }
    }
    assert!(errors_seen >= 2, "the fixtures exercise raise_exception");
}

fn python_render(cases: &[Value]) -> Vec<Value> {
    // HEARTH_PYTHON is the test venv's interpreter (scripts/test.sh sets it).
    let python = std::env::var("HEARTH_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .arg(fixtures().join("render_template.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with jinja2 is needed for the template oracle");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_vec(cases).unwrap().as_slice())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the python oracle failed");
    serde_json::from_slice(&output.stdout).unwrap()
}
