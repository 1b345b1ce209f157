//! Streaming reply parser: text in as the model writes it; content, reasoning (`<think>`)
//! and tool calls out, with call markers never leaking into content. A call is announced
//! (index, id, name) once its name is read and its arguments then stream as they are
//! written. Under a call grammar the envelope is exactly what this parser expects; without
//! one (`auto` on a vocabulary with no one-token opener) a call that does not parse, or
//! names an unknown tool, stays in the content as written.

use rand::Rng;

use super::{CallFamily, ToolSyntax};

/// What one piece of the reply added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplyDelta {
    pub content: String,
    pub reasoning: String,
    pub calls: Vec<CallDelta>,
}

impl ReplyDelta {
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.reasoning.is_empty() && self.calls.is_empty()
    }
}

/// A piece of one call: the first has its id and name, the rest more argument text.
#[derive(Debug, Clone, PartialEq)]
pub struct CallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing shown yet: a think block or a bare JSON call may open the reply.
    Start,
    Reasoning,
    Content,
    /// Mistral: after `[TOOL_CALLS]`, before the list's `[`.
    ListOpen,
    /// Reading `{"name": "…", "arguments": ` (`raw` keeps the text for a fallback).
    Header,
    Arguments(JsonScan),
    /// After the arguments: `}` and the family's call end.
    Tail,
    /// Between calls: whitespace is dropped, another call may follow.
    Between,
}

/// Splits a reply into content, reasoning and calls.
#[derive(Debug)]
pub struct ReplyParser {
    family: CallFamily,
    calls_enabled: bool,
    reasoning: bool,
    tools: Vec<String>,
    state: State,
    /// Text received but not yet classified.
    buf: String,
    /// Text of the call being read, from its opener, shown as content if it does not parse.
    raw: String,
    calls: u32,
    /// Inside a Mistral list (`,` or `]` follows a call).
    in_list: bool,
    /// A think block ended: the answer starts after its whitespace.
    after_think: bool,
    /// The call being read opened with a ```json fence, or with the family's marker.
    fenced: bool,
    marked: bool,
}

/// How small models often open a call.
const FENCE: &str = "```json";
/// Longest `{"name": "…", "arguments": ` read before giving up on a call (names are at most
/// 64 bytes; whitespace is bounded by the grammar).
const MAX_HEADER_BYTES: usize = 256;

/// How `feed` ended.
enum Step {
    /// Go on with what is left of the buffer.
    Again,
    /// Wait for more text.
    Wait,
}

impl ReplyParser {
    /// `calls_enabled`: parse calls (tool_choice is not `none`). `opens_in_reasoning`: the
    /// prompt ends inside an open `<think>` (DeepSeek-R1 templates add it).
    pub fn new(
        syntax: &ToolSyntax,
        tools: Vec<String>,
        calls_enabled: bool,
        opens_in_reasoning: bool,
    ) -> ReplyParser {
        ReplyParser {
            family: syntax.family,
            calls_enabled,
            reasoning: syntax.reasoning,
            tools,
            state: if syntax.reasoning && opens_in_reasoning {
                State::Reasoning
            } else {
                State::Start
            },
            buf: String::new(),
            raw: String::new(),
            calls: 0,
            in_list: false,
            after_think: false,
            fenced: false,
            marked: false,
        }
    }

    /// Calls announced so far.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// Every announced call was read to its end (none was cut by a stop string or the
    /// token limit).
    pub fn calls_complete(&self) -> bool {
        !matches!(self.state, State::Arguments(_) | State::Tail)
    }

    pub fn push(&mut self, text: &str) -> ReplyDelta {
        self.buf.push_str(text);
        let mut out = ReplyDelta::default();
        while let Step::Again = self.step(&mut out, false) {}
        merge(out)
    }

    /// The reply ended: whatever is held back is classified as it stands.
    pub fn finish(&mut self) -> ReplyDelta {
        let mut out = ReplyDelta::default();
        while let Step::Again = self.step(&mut out, true) {}
        let rest = std::mem::take(&mut self.buf);
        match self.state {
            State::Reasoning => out.reasoning.push_str(&rest),
            State::Start | State::Content => out.content.push_str(&rest),
            State::ListOpen | State::Header => {
                out.content.push_str(&std::mem::take(&mut self.raw));
                out.content.push_str(&rest);
            }
            // A call cut short (max_tokens) keeps what was streamed of it.
            State::Arguments(_) | State::Tail | State::Between => {}
        }
        if self.calls > 0 && out.content.trim().is_empty() {
            out.content.clear();
        }
        merge(out)
    }

    fn step(&mut self, out: &mut ReplyDelta, end: bool) -> Step {
        match self.state {
            State::Start => self.start(end),
            State::Reasoning => {
                if let Some(at) = self.buf.find("</think>") {
                    out.reasoning.push_str(&self.buf[..at]);
                    self.buf.drain(..at + "</think>".len());
                    self.reasoning = false;
                    self.after_think = true;
                    self.state = State::Start;
                    return Step::Again;
                }
                let keep = partial_suffix(&self.buf, "</think>");
                let cut = self.buf.len() - keep;
                out.reasoning.push_str(&self.buf[..cut]);
                self.buf.drain(..cut);
                Step::Wait
            }
            State::Content => self.content(out, end),
            State::ListOpen => {
                let trimmed = self.buf.trim_start();
                if trimmed.is_empty() {
                    return Step::Wait;
                }
                if let Some(rest) = trimmed.strip_prefix('[') {
                    let used = self.buf.len() - rest.len();
                    self.raw.push_str(&self.buf[..used]);
                    self.buf.drain(..used);
                    self.in_list = true;
                    self.state = State::Header;
                    Step::Again
                } else {
                    self.fall_back(out)
                }
            }
            State::Header => self.header(out),
            State::Arguments(mut scan) => {
                let (used, done) = scan.feed(&self.buf);
                if used > 0 {
                    push_arguments(out, self.calls - 1, &self.buf[..used]);
                    self.buf.drain(..used);
                }
                if done {
                    self.state = State::Tail;
                    Step::Again
                } else {
                    self.state = State::Arguments(scan);
                    Step::Wait
                }
            }
            State::Tail => self.tail(),
            State::Between => {
                let trimmed = self.buf.trim_start();
                let skipped = self.buf.len() - trimmed.len();
                self.buf.drain(..skipped);
                if self.buf.is_empty() {
                    return Step::Wait;
                }
                self.state = State::Content;
                Step::Again
            }
        }
    }

    fn start(&mut self, end: bool) -> Step {
        let trimmed = self.buf.trim_start();
        if trimmed.is_empty() && !end {
            return Step::Wait;
        }
        if self.reasoning {
            if let Some(rest) = trimmed.strip_prefix("<think>") {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                self.state = State::Reasoning;
                return Step::Again;
            }
            if !end && "<think>".starts_with(trimmed) {
                return Step::Wait;
            }
            self.reasoning = false;
        }
        let bare_call = trimmed.starts_with('{');
        if self.calls_enabled && self.family.bare_json() {
            // Small models often fence a call: ```json {…} ```.
            if let Some(rest) = trimmed.strip_prefix(FENCE) {
                let used = self.buf.len() - rest.len();
                self.raw = self.buf.drain(..used).collect();
                self.fenced = true;
                self.marked = false;
                self.state = State::Header;
                return Step::Again;
            }
            if !end && FENCE.starts_with(trimmed) {
                return Step::Wait;
            }
        }
        if self.after_think {
            // Whitespace between a think block and the answer belongs to neither.
            let skipped = self.buf.len() - trimmed.len();
            self.buf.drain(..skipped);
        }
        if self.calls_enabled && self.family.bare_json() && bare_call {
            self.raw.clear();
            self.marked = false;
            self.state = State::Header;
            return Step::Again;
        }
        self.state = State::Content;
        Step::Again
    }

    fn content(&mut self, out: &mut ReplyDelta, end: bool) -> Step {
        let opener = self.family.opener().filter(|_| self.calls_enabled);
        if let Some(opener) = opener {
            if let Some(at) = self.buf.find(opener) {
                // Whitespace between the text and a call is neither.
                out.content.push_str(self.buf[..at].trim_end());
                self.buf.drain(..at + opener.len());
                self.raw = opener.to_owned();
                self.marked = true;
                self.state = if self.family == CallFamily::Mistral {
                    State::ListOpen
                } else {
                    State::Header
                };
                return Step::Again;
            }
        }
        let keep = if end {
            0
        } else {
            opener.map_or(0, |o| partial_suffix(&self.buf, o))
        };
        let mut cut = self.buf.len() - keep;
        // Trailing whitespace waits: it may only separate the text from a call.
        if !end && opener.is_some() {
            cut = self.buf[..cut].trim_end().len();
        }
        out.content.push_str(&self.buf[..cut]);
        self.buf.drain(..cut);
        Step::Wait
    }

    fn header(&mut self, out: &mut ReplyDelta) -> Step {
        match parse_header(&self.buf, self.family.arguments_key()) {
            // A header is a few dozen bytes; text that keeps it open is not a call.
            Parse::NeedMore if self.buf.len() > MAX_HEADER_BYTES => self.fall_back(out),
            Parse::NeedMore => Step::Wait,
            Parse::Fail => self.fall_back(out),
            Parse::Done(name, used) => {
                if !self.tools.contains(&name) {
                    return self.fall_back(out);
                }
                self.buf.drain(..used);
                self.raw.clear();
                let index = self.calls;
                self.calls += 1;
                out.calls.push(CallDelta {
                    index,
                    id: Some(call_id(self.family)),
                    name: Some(name),
                    arguments: String::new(),
                });
                self.state = State::Arguments(JsonScan::default());
                Step::Again
            }
        }
    }

    fn tail(&mut self) -> Step {
        let closing: &[&str] = match (self.family, self.fenced) {
            (_, true) => &["}", "```"],
            (CallFamily::Hermes, _) if self.marked => &["}", "</tool_call>"],
            _ => &["}"],
        };
        let mut at = 0;
        for part in closing {
            match expect(&self.buf, skip_ws(&self.buf, at), part) {
                Ok(next) => at = next,
                Err(Parse::NeedMore) => return Step::Wait,
                Err(_) => {
                    // The call's text was streamed already; what follows is shown as is.
                    self.state = State::Content;
                    return Step::Again;
                }
            }
        }
        if self.in_list {
            let after = skip_ws(&self.buf, at);
            match self.buf[after..].chars().next() {
                None => return Step::Wait,
                Some(',') => {
                    self.buf.drain(..after + 1);
                    self.state = State::Header;
                    return Step::Again;
                }
                Some(']') => {
                    self.buf.drain(..after + 1);
                    self.in_list = false;
                }
                Some(_) => {
                    self.buf.drain(..after);
                    self.in_list = false;
                }
            }
        } else {
            self.buf.drain(..at);
        }
        self.fenced = false;
        self.state = State::Between;
        Step::Again
    }

    /// What was taken for a call is not one: it is shown as content, as written.
    fn fall_back(&mut self, out: &mut ReplyDelta) -> Step {
        out.content.push_str(&std::mem::take(&mut self.raw));
        // Up to the first non-blank character (the `{` or `[`), so it is not read as a call
        // opening again; the rest goes through the content path.
        let split = self
            .buf
            .char_indices()
            .find(|(_, c)| !c.is_whitespace())
            .map_or(self.buf.len(), |(i, c)| i + c.len_utf8());
        out.content.extend(self.buf.drain(..split));
        self.in_list = false;
        self.fenced = false;
        self.state = State::Content;
        Step::Again
    }
}

/// Consecutive argument pieces of one call become one.
fn merge(mut delta: ReplyDelta) -> ReplyDelta {
    let mut calls: Vec<CallDelta> = Vec::with_capacity(delta.calls.len());
    for call in delta.calls.drain(..) {
        match calls.last_mut() {
            Some(last) if last.index == call.index && call.id.is_none() => {
                last.arguments.push_str(&call.arguments)
            }
            _ => calls.push(call),
        }
    }
    delta.calls = calls;
    delta
}

fn push_arguments(out: &mut ReplyDelta, index: u32, text: &str) {
    out.calls.push(CallDelta {
        index,
        id: None,
        name: None,
        arguments: text.to_owned(),
    });
}

/// OpenAI-style ids; Mistral's templates accept only 9 letters and digits.
fn call_id(family: CallFamily) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut random = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    };
    match family {
        CallFamily::Mistral => random(9),
        _ => format!("call_{}", random(24)),
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

enum Parse<T> {
    NeedMore,
    Fail,
    Done(T, usize),
}

fn skip_ws(text: &str, at: usize) -> usize {
    at + text[at..].len() - text[at..].trim_start().len()
}

/// `lit` at `at`: the position after it, or whether more text could still make it match.
fn expect(text: &str, at: usize, lit: &str) -> Result<usize, Parse<()>> {
    let rest = &text[at..];
    if rest.starts_with(lit) {
        Ok(at + lit.len())
    } else if lit.starts_with(rest) {
        Err(Parse::NeedMore)
    } else {
        Err(Parse::Fail)
    }
}

/// `{"name": "<name>", "<key>": ` with any whitespace: the name and the bytes read.
fn parse_header(text: &str, key: &str) -> Parse<String> {
    fn go(text: &str, key: &str) -> Result<(String, usize), Parse<()>> {
        let mut at = expect(text, skip_ws(text, 0), "{")?;
        at = expect(text, skip_ws(text, at), "\"name\"")?;
        at = expect(text, skip_ws(text, at), ":")?;
        at = skip_ws(text, at);
        let (name, next) = json_string(text, at)?;
        at = expect(text, skip_ws(text, next), ",")?;
        at = skip_ws(text, at);
        // Either key: small models trained on one family sometimes write the other's.
        let quoted = format!("\"{key}\"");
        at = match expect(text, at, &quoted) {
            Ok(next) => next,
            Err(Parse::Fail) => {
                let other = if key == "arguments" {
                    "\"parameters\""
                } else {
                    "\"arguments\""
                };
                expect(text, at, other)?
            }
            Err(e) => return Err(e),
        };
        at = expect(text, skip_ws(text, at), ":")?;
        at = skip_ws(text, at);
        if at == text.len() {
            return Err(Parse::NeedMore);
        }
        Ok((name, at))
    }
    match go(text, key) {
        Ok((name, used)) => Parse::Done(name, used),
        Err(Parse::NeedMore) => Parse::NeedMore,
        Err(_) => Parse::Fail,
    }
}

/// A JSON string at `at`: its value and the position after its closing quote.
fn json_string(text: &str, at: usize) -> Result<(String, usize), Parse<()>> {
    let rest = &text[at..];
    if rest.is_empty() {
        return Err(Parse::NeedMore);
    }
    if !rest.starts_with('"') {
        return Err(Parse::Fail);
    }
    let mut escaped = false;
    for (i, c) in rest.char_indices().skip(1) {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => {
                let value: String = serde_json::from_str(&rest[..=i]).map_err(|_| Parse::Fail)?;
                return Ok((value, at + i + 1));
            }
            _ => {}
        }
    }
    Err(Parse::NeedMore)
}

/// Finds where a JSON value (the arguments) ends, across pieces of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct JsonScan {
    depth: u32,
    started: bool,
    in_string: bool,
    escaped: bool,
}

impl JsonScan {
    /// Bytes of `text` that belong to the value, and whether it is complete.
    fn feed(&mut self, text: &str) -> (usize, bool) {
        for (i, byte) in text.bytes().enumerate() {
            if self.in_string {
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => {
                        self.in_string = false;
                        if self.depth == 0 {
                            return (i + 1, true);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => {
                    self.started = true;
                    self.in_string = true;
                }
                b'{' | b'[' => {
                    self.started = true;
                    self.depth += 1;
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        // A bare value ended where its container closes.
                        return (i, true);
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        return (i + 1, true);
                    }
                }
                b',' if self.depth == 0 && self.started => return (i, true),
                b' ' | b'\n' | b'\t' | b'\r' if self.depth == 0 && !self.started => {}
                _ => self.started = true,
            }
        }
        (text.len(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (String, String, Vec<(String, String)>);

    fn syntax(family: CallFamily, reasoning: bool) -> ToolSyntax {
        ToolSyntax {
            family,
            template_renders_tools: true,
            reasoning,
        }
    }

    fn parser(family: CallFamily, reasoning: bool) -> ReplyParser {
        ReplyParser::new(
            &syntax(family, reasoning),
            vec!["get_weather".into(), "get_time".into()],
            true,
            false,
        )
    }

    /// Feed the text in pieces of `size` bytes (on char boundaries) and gather the result.
    fn run(parser: &mut ReplyParser, text: &str, size: usize) -> Parsed {
        let mut content = String::new();
        let mut reasoning = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        let mut take = |d: ReplyDelta| {
            content.push_str(&d.content);
            reasoning.push_str(&d.reasoning);
            for c in d.calls {
                if let Some(name) = c.name {
                    assert!(c.id.is_some());
                    assert_eq!(c.index as usize, calls.len());
                    calls.push((name, String::new()));
                }
                calls[c.index as usize].1.push_str(&c.arguments);
            }
        };
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + size).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            take(parser.push(&text[at..end]));
            at = end;
        }
        take(parser.finish());
        (content, reasoning, calls)
    }

    fn every_split(family: CallFamily, reasoning: bool, text: &str) -> Parsed {
        let whole = run(&mut parser(family, reasoning), text, text.len().max(1));
        for size in 1..8 {
            assert_eq!(
                run(&mut parser(family, reasoning), text, size),
                whole,
                "pieces of {size}"
            );
        }
        whole
    }

    #[test]
    fn hermes_calls_with_text_before_them() {
        let text = r#"Let me check.
<tool_call>
{"name": "get_weather", "arguments": {"city": "Paris \"}\" 日本"}}
</tool_call>
<tool_call>
{"name": "get_time", "arguments": {}}
</tool_call>"#;
        let (content, reasoning, calls) = every_split(CallFamily::Hermes, false, text);
        assert_eq!(content, "Let me check.");
        assert_eq!(reasoning, "");
        assert_eq!(
            calls,
            vec![
                (
                    "get_weather".into(),
                    r#"{"city": "Paris \"}\" 日本"}"#.into()
                ),
                ("get_time".into(), "{}".into())
            ]
        );
    }

    #[test]
    fn plain_text_passes_through_and_partial_markers_are_not_lost() {
        let text = "a < b and <tool_ is not a call <";
        let (content, _, calls) = every_split(CallFamily::Hermes, false, text);
        assert_eq!(content, text);
        assert!(calls.is_empty());
    }

    #[test]
    fn reasoning_is_split_out() {
        let text = "<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        let (content, reasoning, calls) = every_split(CallFamily::Hermes, true, text);
        assert_eq!(reasoning, "\nThe user wants weather.\n");
        assert_eq!(content, "");
        assert_eq!(calls.len(), 1);
        let (content, reasoning, _) =
            every_split(CallFamily::Hermes, true, "<think>hm</think>\n\nHello!");
        assert_eq!((content.as_str(), reasoning.as_str()), ("Hello!", "hm"));
        // DeepSeek-R1 templates open the think block in the prompt.
        let syntax = ToolSyntax {
            family: CallFamily::Generic,
            template_renders_tools: false,
            reasoning: true,
        };
        let mut open = ReplyParser::new(&syntax, vec![], false, true);
        let (content, reasoning, _) = run(&mut open, "why\n</think>\n\nBecause.", 3);
        assert_eq!(
            (content.as_str(), reasoning.as_str()),
            ("Because.", "why\n")
        );
    }

    #[test]
    fn mistral_lists_and_llama_bare_json() {
        let text = r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}, {"name": "get_time", "arguments": {"tz": [1, {"x": "]"}]}}]"#;
        let (content, _, calls) = every_split(CallFamily::Mistral, false, text);
        assert_eq!(content, "");
        assert_eq!(
            calls[1],
            ("get_time".into(), r#"{"tz": [1, {"x": "]"}]}"#.into())
        );
        let (content, _, calls) = every_split(
            CallFamily::Llama3,
            false,
            r#"{"name": "get_weather", "parameters": {"city": "Lima"}}"#,
        );
        assert_eq!((content.as_str(), calls.len()), ("", 1));
        let (content, _, calls) = every_split(
            CallFamily::Llama3,
            false,
            r#"<|python_tag|>{"name": "get_time", "parameters": {}}"#,
        );
        assert_eq!((content.as_str(), calls[0].1.as_str()), ("", "{}"));
    }

    #[test]
    fn what_is_not_a_call_stays_content() {
        let json = r#"{"name": "Bob", "age": 3}"#;
        let (content, _, calls) = every_split(CallFamily::Generic, false, json);
        assert_eq!((content.as_str(), calls.len()), (json, 0));
        let unknown = "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>";
        let (content, _, calls) = every_split(CallFamily::Hermes, false, unknown);
        assert_eq!((content.as_str(), calls.len()), (unknown, 0));
        let cut = "<tool_call>\n{\"na";
        let (content, _, _) = every_split(CallFamily::Hermes, false, cut);
        assert_eq!(content, cut);
    }

    #[test]
    fn fenced_and_bare_calls_open_a_reply() {
        let fenced =
            "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n```";
        let (content, _, calls) = every_split(CallFamily::Hermes, false, fenced);
        assert_eq!((content.as_str(), calls.len()), ("", 1));
        let code = "```python\nprint({\"name\": 1})\n```";
        let (content, _, calls) = every_split(CallFamily::Hermes, false, code);
        assert_eq!((content.as_str(), calls.len()), (code, 0));
        let bare = "{\n  \"name\": \"get_time\",\n  \"arguments\": {}\n}";
        let (content, _, calls) = every_split(CallFamily::Hermes, false, bare);
        assert_eq!((content.as_str(), calls[0].1.as_str()), ("", "{}"));
    }

    #[test]
    fn disabled_calls_leave_markers_in_content() {
        let mut p = ReplyParser::new(
            &syntax(CallFamily::Hermes, false),
            vec!["get_weather".into()],
            false,
            false,
        );
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(run(&mut p, text, 4).0, text);
    }
}
