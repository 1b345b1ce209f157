//! Tool calls: which syntax a model writes them in (read from its chat template), the
//! llguidance grammar that makes every call parse and match its tool's schema, and the
//! streaming parser that turns a reply into content, reasoning and calls.

mod grammar;
mod parser;

pub use grammar::{call_grammar, CallMode, CallTool, MAX_CALLS};
pub use parser::{CallDelta, ReplyDelta, ReplyParser};

/// How a model family writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFamily {
    /// Hermes, Qwen2.5, Qwen3: `<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`, one
    /// block per call.
    Hermes,
    /// Llama 3.1 / 3.2 / 3.3: one `{"name": …, "parameters": …}`, optionally after
    /// `<|python_tag|>`.
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": …, "arguments": …}, …]`.
    Mistral,
    /// Any other template: hearth describes the tools itself and the reply is one JSON
    /// object `{"name": …, "arguments": …}`.
    Generic,
}

impl CallFamily {
    /// The text that opens the calls, if the family has one.
    pub fn opener(self) -> Option<&'static str> {
        match self {
            CallFamily::Hermes => Some("<tool_call>"),
            CallFamily::Llama3 => Some("<|python_tag|>"),
            CallFamily::Mistral => Some("[TOOL_CALLS]"),
            CallFamily::Generic => None,
        }
    }

    /// The key the arguments object is written under.
    pub fn arguments_key(self) -> &'static str {
        match self {
            CallFamily::Llama3 => "parameters",
            _ => "arguments",
        }
    }

    /// Whether a call may open the reply as bare (or fenced) JSON, without a marker.
    fn bare_json(self) -> bool {
        self != CallFamily::Mistral
    }
}

/// What a model's chat template says about tool calls and reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSyntax {
    pub family: CallFamily,
    /// The template renders tool definitions itself; otherwise hearth adds them (`Generic`).
    pub template_renders_tools: bool,
    /// The model writes `<think>…</think>` before its answer (Qwen3, DeepSeek-R1 distills).
    pub reasoning: bool,
}

impl ToolSyntax {
    /// Read the call syntax from a template's source. Each family's template spells its call
    /// markers literally (they are what the model was trained to write after them).
    pub fn detect(template_source: &str, template_renders_tools: bool) -> ToolSyntax {
        let has = |s: &str| template_source.contains(s);
        let family = if has("<tool_call>") {
            CallFamily::Hermes
        } else if has("[TOOL_CALLS]") {
            CallFamily::Mistral
        } else if has("<|python_tag|>") || (has("<|start_header_id|>") && template_renders_tools) {
            CallFamily::Llama3
        } else {
            CallFamily::Generic
        };
        ToolSyntax {
            family,
            template_renders_tools,
            reasoning: has("<think>") || has("</think>"),
        }
    }
}

/// The system text hearth adds for a template that cannot show tools itself.
pub fn generic_tool_prompt(tools: &[serde_json::Value]) -> String {
    let mut text = String::from(
        "You can call functions. To call one, reply with only a JSON object of the form \
         {\"name\": <function name>, \"arguments\": <arguments object>}. The functions:\n",
    );
    for tool in tools {
        let function = tool.get("function").unwrap_or(tool);
        text.push_str(&function.to_string());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_read_from_templates() {
        let hermes = ToolSyntax::detect("{{ '<tool_call>' }}{% if tools %}{% endif %}", true);
        assert_eq!(hermes.family, CallFamily::Hermes);
        assert!(!hermes.reasoning);
        let qwen3 = ToolSyntax::detect("<tool_call> ... <think>\n\n</think>", true);
        assert!(qwen3.reasoning);
        assert_eq!(
            ToolSyntax::detect("[TOOL_CALLS] {{ tools }}", true).family,
            CallFamily::Mistral
        );
        assert_eq!(
            ToolSyntax::detect("<|start_header_id|>ipython{{ tools }}", true).family,
            CallFamily::Llama3
        );
        assert_eq!(
            ToolSyntax::detect("<|im_start|>{{ m }}", false).family,
            CallFamily::Generic
        );
    }
}
