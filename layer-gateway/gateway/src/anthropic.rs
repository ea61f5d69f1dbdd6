//! Anthropic Messages in front of chat completions: [`to_chat`] turns a `/v1/messages`
//! request into the chat request the gateway routes, [`from_chat`] turns the answer back,
//! [`Events`] turns a chat stream into Anthropic's event sequence, and [`error_body`] gives
//! an error Anthropic's shape. Pure functions over JSON; the route is `routes::messages`.

use serde_json::{Map, Value, json};

/// Why a Messages request cannot be translated: the message for a 400.
pub type Refusal = String;

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An image block as an OpenAI content part.
fn image_part(block: &Value, at: &str) -> Result<Value, Refusal> {
    let src = &block["source"];
    let url = match src["type"].as_str() {
        Some("base64") => format!(
            "data:{};base64,{}",
            src["media_type"].as_str().unwrap_or("image/png"),
            src["data"].as_str().unwrap_or("")
        ),
        Some("url") => src["url"]
            .as_str()
            .ok_or_else(|| format!("{at}.source.url: required"))?
            .to_owned(),
        other => {
            return Err(format!(
                "{at}.source.type: `{}` is not supported (base64 or url)",
                other.unwrap_or("missing")
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The chat messages of one Messages message.
fn message(m: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Refusal> {
    let role = m["role"].as_str().unwrap_or("");
    if role != "user" && role != "assistant" {
        return Err(format!(
            "messages.{i}.role: `{role}` is not `user` or `assistant`"
        ));
    }
    let blocks = match &m["content"] {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => {
            return Err(format!(
                "messages.{i}.content: a string or a list of blocks"
            ));
        }
    };
    let mut parts: Vec<Value> = Vec::new();
    let mut calls: Vec<Value> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match b["type"].as_str().unwrap_or("") {
            "text" => parts.push(json!({"type": "text", "text": b["text"].as_str().unwrap_or("")})),
            "image" => parts.push(image_part(b, &at)?),
            "tool_use" if role == "assistant" => calls.push(json!({
                "id": b["id"].as_str().unwrap_or(""),
                "type": "function",
                "function": {
                    "name": b["name"].as_str().unwrap_or(""),
                    "arguments": b.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                },
            })),
            "tool_result" if role == "user" => {
                let mut text = text_of(&b["content"]);
                if b["is_error"] == true {
                    text = format!("Error: {text}");
                }
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": b["tool_use_id"].as_str().unwrap_or(""),
                    "content": text,
                }));
            }
            // The model's own reasoning, from an earlier answer: not sent back.
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(format!(
                    "{at}.type: `{other}` is not supported in a {role} message"
                ));
            }
        }
    }
    if role == "assistant" {
        let text = parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("");
        let mut msg = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        let only_text = parts.iter().all(|p| p["type"] == "text");
        let content = if only_text {
            json!(
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        } else {
            Value::Array(parts)
        };
        out.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

/// The chat request for a Messages request.
pub fn to_chat(req: &Value) -> Result<Value, Refusal> {
    let Some(obj) = req.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("model: required (a handle name)")?;
    let max_tokens = obj
        .get("max_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1)
        .ok_or("max_tokens: required, a number of at least 1")?;
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: required, a list")?;
    let mut chat_messages = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = obj.get("system") {
        let text = text_of(system);
        if !text.is_empty() {
            chat_messages.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        message(m, i, &mut chat_messages)?;
    }
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    chat.insert("messages".into(), Value::Array(chat_messages));
    chat.insert("max_tokens".into(), json!(max_tokens));
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(v) = obj.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(user) = obj
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        chat.insert("user".into(), json!(user));
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let mut out = Vec::with_capacity(tools.len());
        let mut built_in = Vec::new();
        for t in tools {
            match t.get("type").and_then(Value::as_str) {
                None | Some("custom") => out.push(json!({"type": "function", "function": {
                    "name": t["name"].as_str().unwrap_or(""),
                    "description": t["description"].as_str().unwrap_or(""),
                    "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                }})),
                Some(kind) => built_in.push(format!(
                    "{} ({kind})",
                    t["name"].as_str().unwrap_or("?")
                )),
            }
        }
        if !built_in.is_empty() {
            return Err(format!(
                "tools: the gateway cannot run Anthropic's built-in tools: {}; declare them as client tools (name, description, input_schema)",
                built_in.join(", ")
            ));
        }
        if !out.is_empty() {
            chat.insert("tools".into(), Value::Array(out));
        }
    }
    if let Some(choice) = obj.get("tool_choice").filter(|c| !c.is_null()) {
        let mapped = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice["name"].as_str().unwrap_or("")}})
            }
            other => {
                return Err(format!(
                    "tool_choice.type: `{}` is not auto, any, tool or none",
                    other.unwrap_or("missing")
                ));
            }
        };
        chat.insert("tool_choice".into(), mapped);
        if choice["disable_parallel_tool_use"] == true {
            chat.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if obj.get("stream") == Some(&Value::Bool(true)) {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(chat))
}

/// Anthropic's stop reason for a chat finish reason.
fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// A message id for an answer.
pub fn message_id(request_id: &str) -> String {
    let clean: String = request_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("msg_{clean}")
}

fn usage(u: &Value) -> Value {
    json!({
        "input_tokens": u["prompt_tokens"].as_u64().unwrap_or(0),
        "output_tokens": u["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// The Messages answer for a chat answer.
pub fn from_chat(chat: &Value, model: &str, id: &str) -> Value {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg["tool_calls"].as_array().into_iter().flatten() {
        let args = c["function"]["arguments"].as_str().unwrap_or("{}");
        let input = serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": c["id"].as_str().unwrap_or(""),
            "name": c["function"]["name"].as_str().unwrap_or(""),
            "input": input,
        }));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null,
        "usage": usage(&chat["usage"]),
    })
}

/// Anthropic's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An error in Anthropic's shape, from the gateway's OpenAI-shaped one (or any text).
pub fn error_body(status: u16, openai: &[u8]) -> Value {
    let message = serde_json::from_slice::<Value>(openai)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(openai).trim().to_owned());
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// What the open content block is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    Text,
    /// A tool call: its index in the chat stream.
    Tool(u64),
}

/// A chat stream turned into Anthropic's events, chunk by chunk.
#[derive(Debug)]
pub struct Events {
    id: String,
    model: String,
    started: bool,
    open: Option<Block>,
    /// Blocks opened so far (the next block's index).
    blocks: usize,
    stop: Option<&'static str>,
    usage: Value,
    done: bool,
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Events {
    pub fn new(id: &str, model: &str) -> Self {
        Events {
            id: id.to_owned(),
            model: model.to_owned(),
            started: false,
            open: None,
            blocks: 0,
            stop: None,
            usage: json!({"input_tokens": 0, "output_tokens": 0}),
            done: false,
        }
    }

    /// `message_start` and a `ping`, once.
    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        out.push_str(&event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
        out.push_str(&event("ping", &json!({"type": "ping"})));
    }

    fn close_block(&mut self, out: &mut String) {
        if self.open.take().is_some() {
            out.push_str(&event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.blocks - 1}),
            ));
        }
    }

    fn open_block(&mut self, kind: Block, block: Value, out: &mut String) {
        self.close_block(out);
        out.push_str(&event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.blocks, "content_block": block}),
        ));
        self.blocks += 1;
        self.open = Some(kind);
    }

    /// The events for one chat chunk (the JSON of a `data:` line).
    pub fn chunk(&mut self, chunk: &Value) -> String {
        let mut out = String::new();
        self.start(&mut out);
        if let Some(e) = chunk.get("error") {
            out.push_str(&event(
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": e["message"].as_str().unwrap_or("the model's stream failed")}}),
            ));
            self.done = true;
            return out;
        }
        if chunk["usage"].is_object() {
            self.usage = usage(&chunk["usage"]);
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.open != Some(Block::Text) {
                self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            out.push_str(&event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": {"type": "text_delta", "text": t}}),
            ));
        }
        for (k, c) in delta["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = c["index"].as_u64().unwrap_or(k as u64);
            if self.open != Some(Block::Tool(index)) {
                self.open_block(
                    Block::Tool(index),
                    json!({"type": "tool_use", "id": c["id"].as_str().unwrap_or(""), "name": c["function"]["name"].as_str().unwrap_or(""), "input": {}}),
                    &mut out,
                );
            }
            if let Some(args) = c["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push_str(&event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.stop = Some(stop_reason(f));
        }
        out
    }

    /// The closing events, once the chat stream ended (`[DONE]` or its end).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        if self.done {
            return out;
        }
        self.done = true;
        self.start(&mut out);
        self.close_block(&mut out);
        out.push_str(&event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": self.usage}),
        ));
        out.push_str(&event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_system_images_tools_and_results_becomes_a_chat() {
        let chat = to_chat(&json!({
            "model": "local", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "temperature": 0.2, "stream": true,
            "tools": [{"name": "fetch", "description": "Reads", "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Reading."}, {"type": "tool_use", "id": "t1", "name": "fetch", "input": {"url": "http://a"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "page"}], "is_error": true}, {"type": "text", "text": "And?"}]},
            ],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            chat["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            chat["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/jpeg;base64,QUJD"
        );
        assert_eq!(
            chat["messages"][2]["tool_calls"][0]["function"],
            json!({"name": "fetch", "arguments": "{\"url\":\"http://a\"}"})
        );
        assert_eq!(
            chat["messages"][3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "Error: page"})
        );
        assert_eq!(
            chat["messages"][4],
            json!({"role": "user", "content": "And?"})
        );
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(
            chat["tools"][0]["function"]["parameters"]["properties"]["url"]["type"],
            "string"
        );
        assert_eq!(chat["stream_options"]["include_usage"], true);
    }

    #[test]
    fn what_cannot_be_translated_is_refused_by_name() {
        let base = |extra: Value| {
            let mut r = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().into_iter().flatten() {
                r[k] = v.clone();
            }
            to_chat(&r)
        };
        assert!(base(json!({})).is_ok());
        let e = base(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}))
            .unwrap_err();
        assert!(e.contains("web_search (web_search_20250305)"), "{e}");
        assert!(
            base(json!({"max_tokens": 0}))
                .unwrap_err()
                .starts_with("max_tokens")
        );
        assert!(
            base(json!({"messages": [{"role": "system", "content": "x"}]}))
                .unwrap_err()
                .starts_with("messages.0.role")
        );
        assert!(
            base(json!({"tool_choice": {"type": "sometimes"}}))
                .unwrap_err()
                .starts_with("tool_choice.type")
        );
    }

    #[test]
    fn a_stream_becomes_anthropics_event_sequence() {
        let mut ev = Events::new("msg_1", "local");
        let mut all = String::new();
        for c in [
            json!({"choices": [{"delta": {"role": "assistant", "content": "Hi"}}]}),
            json!({"choices": [{"delta": {"content": " there"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "fetch", "arguments": ""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"url\":"}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"x\"}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
        ] {
            all.push_str(&ev.chunk(&c));
        }
        all.push_str(&ev.finish());
        let names: Vec<&str> = all
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(all.contains(r#""delta":{"type":"input_json_delta","partial_json":"{\"url\":"}"#));
        assert!(all.contains(r#""delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":7,"output_tokens":3}"#));
        assert!(all.contains(
            r#""index":1,"content_block":{"type":"tool_use","id":"c1","name":"fetch","input":{}}"#
        ));
    }

    #[test]
    fn answers_and_errors_take_anthropics_shape() {
        let chat = json!({"choices": [{"message": {"content": "", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 4, "completion_tokens": 2}});
        let m = from_chat(&chat, "local", "msg_x");
        assert_eq!(
            m["content"],
            json!([{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(m["usage"], json!({"input_tokens": 4, "output_tokens": 2}));
        let e = error_body(
            404,
            br#"{"error":{"message":"no such handle","type":"invalid_request_error"}}"#,
        );
        assert_eq!(
            e,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "no such handle"}})
        );
        assert_eq!(message_id("a-b_c"), "msg_abc");
    }
}
