//! Tool calling on the embedded engine, in one format whatever the chat template (most small
//! models' templates, SmolLM2's ChatML among them, know nothing of tools; a template's own tool
//! syntax is not used — Qwen's is this one): the offered tools go into the system prompt
//! in the Hermes format many open models are trained on (`<tools>…</tools>`, calls answered
//! as `<tool_call>{"name": …, "arguments": …}</tool_call>`), the history's calls and their
//! results are written back the same way (results as `<tool_response>` in a user turn, which
//! every template accepts), and the model's `<tool_call>` blocks become OpenAI `tool_calls`
//! with finish reason `tool_calls`. A block that does not parse is left as text.

use contract::chat::{ChatCompletionRequest, ChatMessage, Role, Tool};
use llm_engine::template::TemplateMessage;
use serde_json::{Value, json};

/// Where a call starts and ends in the model's text.
pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// The tools the request offers (none when it offers none or says `tool_choice: "none"`),
/// and what its `tool_choice` asks, as a sentence.
pub fn offered(req: &ChatCompletionRequest) -> Option<(Vec<&Tool>, Option<String>)> {
    let tools: Vec<&Tool> = req
        .tools
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|t| t.kind == "function" && t.function.is_some())
        .collect();
    let choice = req.tool_choice.as_ref();
    if tools.is_empty() || choice.is_some_and(|c| c == "none") {
        return None;
    }
    let must = match choice {
        Some(c) if c == "required" => Some("You must call at least one function.".to_owned()),
        Some(c) => c["function"]["name"]
            .as_str()
            .map(|n| format!("You must call the function {n}.")),
        None => None,
    };
    Some((tools, must))
}

/// JSON as Python's `json.dumps` writes it (`", "` and `": "`), which is how the models
/// trained on this format (Qwen2.5's template renders tools with `tojson`) saw it.
fn python_json(v: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    match serde::Serialize::serialize(v, &mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => v.to_string(),
    }
}

/// The system prompt's tool block, as Qwen2.5's template writes it.
fn tools_block(tools: &[&Tool], must: Option<&str>) -> String {
    let mut out = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        if let Some(f) = &t.function {
            let mut def = json!({"name": f.name});
            if let Some(d) = &f.description {
                def["description"] = json!(d);
            }
            def["parameters"] = f
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            out.push('\n');
            out.push_str(&python_json(&json!({"type": "function", "function": def})));
        }
    }
    out.push_str("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
    if let Some(m) = must {
        out.push('\n');
        out.push_str(m);
    }
    out
}

/// The messages as the template gets them: the tool block in the system message (one is
/// added when there is none), assistant calls as `<tool_call>` blocks, and each run of tool
/// results as one user turn of `<tool_response>` blocks.
pub fn template_messages(
    messages: &[ChatMessage],
    tools: Option<(&[&Tool], Option<&str>)>,
) -> Vec<TemplateMessage> {
    let mut out: Vec<TemplateMessage> = Vec::with_capacity(messages.len() + 1);
    let mut results_open = false;
    for m in messages {
        let text = m.text_content();
        if m.role == Role::Tool {
            let block = format!("<tool_response>\n{text}\n</tool_response>");
            match out.last_mut() {
                Some(last) if results_open => {
                    last.content.push('\n');
                    last.content.push_str(&block);
                }
                _ => out.push(TemplateMessage {
                    role: "user".into(),
                    content: block,
                }),
            }
            results_open = true;
            continue;
        }
        results_open = false;
        let mut content = text;
        for c in m.tool_calls.as_deref().unwrap_or_default() {
            let arguments = serde_json::from_str::<Value>(&c.function.arguments)
                .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(OPEN);
            content.push('\n');
            content.push_str(&python_json(
                &json!({"name": c.function.name, "arguments": arguments}),
            ));
            content.push('\n');
            content.push_str(CLOSE);
        }
        out.push(TemplateMessage {
            role: m.role.as_str().to_owned(),
            content,
        });
    }
    if let Some((tools, must)) = tools {
        let block = tools_block(tools, must);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{block}", first.content);
            }
            _ => out.insert(
                0,
                TemplateMessage {
                    role: "system".into(),
                    content: block,
                },
            ),
        }
    }
    out
}

/// One call found in the model's text, in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments as a JSON document.
    pub arguments: String,
}

impl Call {
    /// The call as a `tool_calls` entry of a message.
    pub fn openai(&self, id: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// The calls in `text` (each `<tool_call>` block holding an object, or a list of objects,
/// with a `name` and `arguments`), or `None` when a block does not parse.
fn parse_blocks(text: &str) -> Option<Vec<Call>> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let (inner, next) = match after.find(CLOSE) {
            Some(j) => (&after[..j], &after[j + CLOSE.len()..]),
            None => (after, ""),
        };
        let v: Value = serde_json::from_str(inner.trim()).ok()?;
        let items = match v {
            Value::Array(a) => a,
            one => vec![one],
        };
        for item in items {
            let name = item["name"].as_str().filter(|n| !n.is_empty())?.to_owned();
            let arguments = match &item["arguments"] {
                Value::Null => "{}".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            calls.push(Call { name, arguments });
        }
        rest = next;
    }
    (!calls.is_empty()).then_some(calls)
}

/// The names of the offered tools.
pub fn names(tools: &[&Tool]) -> Vec<String> {
    tools
        .iter()
        .filter_map(|t| t.function.as_ref().map(|f| f.name.clone()))
        .collect()
}

/// An answer that is nothing but calls written without the tags — a JSON object (or a list,
/// or one object per line, or either in a ```json fence) with the `name` of an offered tool
/// and its `arguments` — as small models often answer (Qwen2.5-Coder-0.5B writes its calls
/// in a fence); `None` for anything else.
fn bare_calls(text: &str, names: &[String]) -> Option<Vec<Call>> {
    let mut t = text.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        t = rest.strip_suffix("```")?.trim();
    }
    if !(t.starts_with('{') || t.starts_with('[')) {
        return None;
    }
    let mut items = Vec::new();
    for v in serde_json::Deserializer::from_str(t).into_iter::<Value>() {
        match v.ok()? {
            Value::Array(a) => items.extend(a),
            one => items.push(one),
        }
    }
    let calls = items
        .iter()
        .map(|item| {
            let name = item["name"]
                .as_str()
                .filter(|n| names.iter().any(|x| x == n))?;
            let args = match &item["arguments"] {
                Value::Null => item.get("parameters").filter(|p| p.is_object())?,
                a => a,
            };
            let arguments = match args {
                Value::String(s) => s.clone(),
                Value::Object(_) => args.to_string(),
                _ => return None,
            };
            Some(Call {
                name: name.to_owned(),
                arguments,
            })
        })
        .collect::<Option<Vec<Call>>>()?;
    (!calls.is_empty()).then_some(calls)
}

/// An answer split into its text (before the first call) and its calls; with no call
/// that parses, all of it is text. `names`: the offered tools.
pub fn split(text: &str, names: &[String]) -> (String, Vec<Call>) {
    match text.find(OPEN) {
        Some(i) => match parse_blocks(&text[i..]) {
            Some(calls) => (text[..i].trim_end().to_owned(), calls),
            None => (text.to_owned(), Vec::new()),
        },
        None => match bare_calls(text, names) {
            Some(calls) => (String::new(), calls),
            None => (text.to_owned(), Vec::new()),
        },
    }
}

/// Streamed text with calls held back: what may be sent now goes out at once, a possible
/// start of `<tool_call>` waits for the next piece, and from the first call on everything
/// is kept for [`Stream::finish`]; an answer that opens like a bare JSON call (`{`, `[`,
/// a ```json fence) is kept whole, to be told apart at the end.
#[derive(Debug, Default)]
pub struct Stream {
    held: String,
    in_call: bool,
    /// Text went out already: the answer is not a bare call.
    released: bool,
    names: Vec<String>,
}

impl Stream {
    /// A stream of an answer to a request that offered the tools `names`.
    pub fn new(names: Vec<String>) -> Self {
        Stream {
            names,
            ..Stream::default()
        }
    }

    /// The part of `piece` that can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        if self.in_call {
            return String::new();
        }
        if !self.released {
            let t = self.held.trim_start();
            let fence = "```json";
            if t.is_empty()
                || fence.starts_with(t)
                || t.starts_with(fence)
                || t.starts_with('{')
                || t.starts_with('[')
            {
                return String::new();
            }
            self.released = true;
        }
        if let Some(i) = self.held.find(OPEN) {
            self.in_call = true;
            let out = self.held[..i].to_owned();
            self.held.drain(..i);
            return out;
        }
        // Keep a tail that could be the start of `<tool_call>`.
        let keep = (1..OPEN.len())
            .rev()
            .find(|&k| {
                self.held.len() >= k
                    && self.held.is_char_boundary(self.held.len() - k)
                    && OPEN.starts_with(&self.held[self.held.len() - k..])
            })
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        out
    }

    /// At the end: the text still held back, and the calls.
    pub fn finish(self) -> (String, Vec<Call>) {
        if !self.in_call {
            if !self.released
                && let Some(calls) = bare_calls(&self.held, &self.names)
            {
                return (String::new(), calls);
            }
            return (self.held, Vec::new());
        }
        match parse_blocks(&self.held) {
            Some(calls) => (String::new(), calls),
            None => (self.held, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "fetch", "description": "Reads a page", "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}}}])
    }

    #[test]
    fn tools_go_into_the_system_prompt_and_history_back_into_text() {
        let r = req(json!({
            "model": "m",
            "tools": tools(),
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Read http://a/b"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "fetch", "arguments": "{\"url\": \"http://a/b\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Bees make honey."},
                {"role": "tool", "tool_call_id": "c2", "content": "second"},
            ],
        }));
        let (t, must) = offered(&r).unwrap_or_default();
        let m = template_messages(&r.messages, Some((&t, must.as_deref())));
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].role, "system");
        // Laid out as Qwen2.5's template lays it out, JSON as Python writes it.
        assert!(
            m[0].content
                .starts_with("Be brief.\n\n# Tools\n\nYou may call one or more functions")
        );
        assert!(m[0].content.contains(
            r#"{"type": "function", "function": {"name": "fetch", "description": "Reads a page", "parameters": "#
        ));
        assert_eq!(
            m[2].content,
            "<tool_call>\n{\"name\": \"fetch\", \"arguments\": {\"url\": \"http://a/b\"}}\n</tool_call>"
        );
        assert_eq!(m[3].role, "user");
        assert_eq!(
            m[3].content,
            "<tool_response>\nBees make honey.\n</tool_response>\n<tool_response>\nsecond\n</tool_response>"
        );
    }

    #[test]
    fn none_offers_nothing_and_required_says_so() {
        let none =
            req(json!({"model": "m", "tools": tools(), "tool_choice": "none", "messages": []}));
        assert!(offered(&none).is_none());
        let plain = req(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert!(offered(&plain).is_none());
        assert_eq!(template_messages(&plain.messages, None)[0].content, "hi");
        let named = req(
            json!({"model": "m", "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "fetch"}}, "messages": []}),
        );
        let (t, must) = offered(&named).unwrap_or_default();
        assert_eq!(must.as_deref(), Some("You must call the function fetch."));
        let m = template_messages(&named.messages, Some((&t, must.as_deref())));
        assert_eq!(m.len(), 1, "a system message is added");
        assert!(m[0].content.ends_with("You must call the function fetch."));
    }

    fn offered_names() -> Vec<String> {
        ["fetch", "a", "b", "c"].map(String::from).to_vec()
    }

    #[test]
    fn calls_are_read_from_blocks_objects_or_lists() {
        let names = offered_names();
        let split = |t: &str| split(t, &names);
        let (text, calls) = split(
            "Let me look.\n<tool_call>\n{\"name\": \"fetch\", \"arguments\": {\"url\": \"http://a\"}}\n</tool_call>",
        );
        assert_eq!(text, "Let me look.");
        assert_eq!(
            calls,
            [Call {
                name: "fetch".into(),
                arguments: r#"{"url":"http://a"}"#.into()
            }]
        );
        let (_, two) = split(
            r#"<tool_call>[{"name": "a", "arguments": {}}, {"name": "b"}]</tool_call><tool_call>{"name": "c", "arguments": "{\"x\": 1}"}"#,
        );
        let names: Vec<&str> = two.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(two[1].arguments, "{}");
        assert_eq!(two[2].arguments, r#"{"x": 1}"#);
        // Not a call: the text as it came.
        for bad in [
            "<tool_call>{\"name\": \"fetch\", \"argu",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "no calls here",
            // Bare JSON that is not a call of an offered tool stays text.
            "{\"name\": \"unknown\", \"arguments\": {}}",
            "```json\n{\"answer\": 42}\n```",
            "{\"name\": \"fetch\", \"arguments\": {}} and then some words",
        ] {
            assert_eq!(split(bad), (bad.to_owned(), Vec::new()), "{bad}");
        }
    }

    #[test]
    fn an_answer_that_is_only_a_call_is_a_call_without_the_tags() {
        let names = offered_names();
        for answer in [
            "{\"name\": \"fetch\", \"arguments\": {\"url\": \"http://a\"}}",
            "```json\n{\n  \"name\": \"fetch\",\n  \"arguments\": {\"url\": \"http://a\"}\n}\n```",
            "  [{\"name\": \"fetch\", \"parameters\": {\"url\": \"http://a\"}}]\n",
        ] {
            let (text, calls) = split(answer, &names);
            assert_eq!(text, "", "{answer}");
            assert_eq!(calls.len(), 1, "{answer}");
            assert_eq!(calls[0].name, "fetch");
            assert_eq!(calls[0].arguments, r#"{"url":"http://a"}"#);
        }
        // One object per line: every call.
        let (_, two) = split(
            "{\"name\": \"a\", \"arguments\": {}}\n{\"name\": \"b\", \"arguments\": {}}",
            &names,
        );
        assert_eq!(two.len(), 2);
        // Streamed: held back whole, then a call; a fence of another language goes out.
        let mut s = Stream::new(names.clone());
        assert_eq!(s.push("```js"), "");
        assert_eq!(
            s.push("on\n{\"name\": \"fetch\", \"arguments\": {}}\n```"),
            ""
        );
        let (rest, calls) = s.finish();
        assert_eq!((rest.as_str(), calls.len()), ("", 1));
        let mut s = Stream::new(names.clone());
        assert_eq!(s.push("```py"), "```py");
        let mut s = Stream::new(names);
        assert_eq!(s.push("{\"not\": \"a call\"}"), "");
        assert_eq!(s.finish(), ("{\"not\": \"a call\"}".to_owned(), Vec::new()));
    }

    #[test]
    fn a_stream_holds_back_only_what_may_be_a_call() {
        let mut s = Stream::new(offered_names());
        let mut sent = String::new();
        for piece in [
            "Hello <",
            "b>old</b> ",
            "and <tool",
            "_ca",
            "ll>{\"name\": ",
            "\"f\"}</tool_call>",
        ] {
            sent.push_str(&s.push(piece));
        }
        assert_eq!(sent, "Hello <b>old</b> and ");
        let (rest, calls) = s.finish();
        assert_eq!(rest, "");
        assert_eq!(calls[0].name, "f");
        // A `<` at the end that starts nothing is sent at the end.
        let mut s = Stream::default();
        assert_eq!(s.push("a <tool"), "a ");
        assert_eq!(s.finish(), ("<tool".to_owned(), Vec::new()));
        // A broken call is given back as text.
        let mut s = Stream::default();
        assert_eq!(s.push("x<tool_call>{oops"), "x");
        assert_eq!(s.finish(), ("<tool_call>{oops".to_owned(), Vec::new()));
        // Multi-byte text is cut on character boundaries.
        let mut s = Stream::default();
        assert_eq!(s.push("é<"), "é");
        assert_eq!(s.push("é"), "<é");
    }
}
