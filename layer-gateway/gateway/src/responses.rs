//! The OpenAI Responses API in front of chat completions: [`to_chat`] turns a `/v1/responses`
//! request (with the items of an earlier response, for `previous_response_id`) into the chat
//! request the gateway routes, [`from_chat`] builds the response object from the answer, and
//! [`Events`] turns a chat stream into the Responses streaming events. Pure functions over
//! JSON; the route is `routes::responses`.

use serde_json::{Map, Value, json};

/// Why a Responses request cannot be translated: the message for a 400.
pub type Refusal = String;

/// What a request asks, beyond the chat request: echoed in the response object.
#[derive(Debug, Clone)]
pub struct Asked {
    pub model: String,
    pub instructions: Value,
    pub max_output_tokens: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub tool_choice: Value,
    pub tools: Value,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Value,
    pub store: bool,
    pub metadata: Value,
    /// `text` as asked (its `format`: text, json_object or json_schema).
    pub text: Value,
    /// The conversation's input items so far (an earlier response's, then this request's),
    /// kept with the response when it is stored.
    pub items: Vec<Value>,
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The chat content of a message item: a string, or parts when it holds images.
fn chat_content(content: &Value, at: &str) -> Result<Value, Refusal> {
    let Value::Array(parts) = content else {
        return Ok(json!(content_text(content)));
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        match p["type"].as_str().unwrap_or("") {
            "input_text" | "output_text" | "text" => {
                out.push(json!({"type": "text", "text": p["text"].as_str().unwrap_or("")}));
            }
            "input_image" => {
                let url = p["image_url"].as_str().ok_or_else(|| {
                    format!("{at}.content.{j}.image_url: required (a URL or data URL)")
                })?;
                out.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            other => {
                return Err(format!(
                    "{at}.content.{j}.type: `{other}` is not supported (input_text, input_image)"
                ));
            }
        }
    }
    if out.iter().all(|p| p["type"] == "text") {
        return Ok(json!(
            out.iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("")
        ));
    }
    Ok(Value::Array(out))
}

/// Chat messages for input items.
fn messages(items: &[Value], out: &mut Vec<Value>) -> Result<(), Refusal> {
    for (i, item) in items.iter().enumerate() {
        let at = format!("input.{i}");
        let kind = item["type"].as_str().unwrap_or("message");
        match kind {
            "message" => {
                let role = match item["role"].as_str().unwrap_or("") {
                    "developer" => "system",
                    r @ ("user" | "system" | "assistant") => r,
                    other => {
                        return Err(format!(
                            "{at}.role: `{other}` is not user, assistant, system or developer"
                        ));
                    }
                };
                out.push(json!({"role": role, "content": chat_content(&item["content"], &at)?}));
            }
            "function_call" => {
                let call = json!({
                    "id": item["call_id"].as_str().unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": item["name"].as_str().unwrap_or(""),
                        "arguments": item["arguments"].as_str().unwrap_or("{}"),
                    },
                });
                // Calls one after another belong to one assistant turn.
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => {
                        out.push(json!({"role": "assistant", "content": "", "tool_calls": [call]}))
                    }
                }
            }
            "function_call_output" => out.push(json!({
                "role": "tool",
                "tool_call_id": item["call_id"].as_str().unwrap_or(""),
                "content": content_text(&item["output"]),
            })),
            "reasoning" => {}
            other => {
                return Err(format!("{at}.type: `{other}` is not supported"));
            }
        }
    }
    Ok(())
}

/// The chat request for a Responses request; `earlier`: the stored items of the response
/// named by `previous_response_id`.
pub fn to_chat(req: &Value, earlier: &[Value]) -> Result<(Value, Asked), Refusal> {
    let Some(obj) = req.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("model: required (a handle name)")?;
    let input: Vec<Value> = match obj.get("input") {
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        Some(Value::Array(items)) => items.clone(),
        _ => return Err("input: required, a string or a list of items".into()),
    };
    let mut tools = Vec::new();
    let mut built_in = Vec::new();
    for t in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match t["type"].as_str() {
            Some("function") => tools.push(json!({"type": "function", "function": {
                "name": t["name"].as_str().unwrap_or(""),
                "description": t["description"].as_str().unwrap_or(""),
                "parameters": t.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
            }})),
            other => built_in.push(other.unwrap_or("?").to_owned()),
        }
    }
    if !built_in.is_empty() {
        return Err(format!(
            "tools: the gateway cannot run built-in tools: {}; declare function tools",
            built_in.join(", ")
        ));
    }
    let mut items: Vec<Value> = earlier.to_vec();
    items.extend(input);
    let mut chat_messages = Vec::with_capacity(items.len() + 1);
    if let Some(i) = obj
        .get("instructions")
        .and_then(Value::as_str)
        .filter(|i| !i.is_empty())
    {
        chat_messages.push(json!({"role": "system", "content": i}));
    }
    messages(&items, &mut chat_messages)?;
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    chat.insert("messages".into(), Value::Array(chat_messages));
    if let Some(n) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        chat.insert("max_tokens".into(), n.clone());
    }
    for k in ["temperature", "top_p", "user"] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            chat.insert(k.into(), v.clone());
        }
    }
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
    }
    let tool_choice = obj.get("tool_choice").cloned().unwrap_or(json!("auto"));
    match &tool_choice {
        Value::String(s) if ["auto", "none", "required"].contains(&s.as_str()) => {
            chat.insert("tool_choice".into(), tool_choice.clone());
        }
        Value::Object(o) if o.get("type") == Some(&json!("function")) => {
            chat.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}}),
            );
        }
        other => {
            return Err(format!(
                "tool_choice: `{other}` is not auto, none, required or a function"
            ));
        }
    }
    let parallel = obj
        .get("parallel_tool_calls")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !parallel {
        chat.insert("parallel_tool_calls".into(), json!(false));
    }
    let text = match obj.get("text").filter(|v| !v.is_null()) {
        Some(t) => t.clone(),
        None => json!({"format": {"type": "text"}}),
    };
    if let Some(format) = response_format(&text["format"])? {
        chat.insert("response_format".into(), format);
    }
    if obj.get("stream") == Some(&Value::Bool(true)) {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let get = |k: &str| obj.get(k).cloned().unwrap_or(Value::Null);
    let asked = Asked {
        model: model.to_owned(),
        instructions: get("instructions"),
        max_output_tokens: get("max_output_tokens"),
        temperature: get("temperature"),
        top_p: get("top_p"),
        tool_choice,
        tools: obj.get("tools").cloned().unwrap_or_else(|| json!([])),
        parallel_tool_calls: parallel,
        previous_response_id: get("previous_response_id"),
        store: obj.get("store").and_then(Value::as_bool).unwrap_or(false),
        metadata: obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        text,
        items,
    };
    Ok((Value::Object(chat), asked))
}

/// Chat's `response_format` for a Responses `text.format` (none for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, Refusal> {
    match format["type"].as_str() {
        None if format.is_null() => Ok(None),
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let Some(schema) = format.get("schema").filter(|s| s.is_object()) else {
                return Err("text.format: a json_schema format needs a `schema` object".into());
            };
            let mut js = Map::new();
            js.insert(
                "name".into(),
                format.get("name").cloned().unwrap_or(json!("response")),
            );
            js.insert("schema".into(), schema.clone());
            for k in ["description", "strict"] {
                if let Some(v) = format.get(k).filter(|v| !v.is_null()) {
                    js.insert(k.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        _ => Err(format!(
            "text.format: `{format}` is not text, json_object or json_schema"
        )),
    }
}

/// A response object: `status` with its `output` items and usage.
pub fn response(
    id: &str,
    created_at: i64,
    asked: &Asked,
    status: &str,
    output: &[Value],
    usage: &Value,
) -> Value {
    let mut r = json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "model": asked.model,
        "output": output,
        "instructions": asked.instructions,
        "max_output_tokens": asked.max_output_tokens,
        "temperature": asked.temperature,
        "top_p": asked.top_p,
        "tool_choice": asked.tool_choice,
        "tools": asked.tools,
        "parallel_tool_calls": asked.parallel_tool_calls,
        "previous_response_id": asked.previous_response_id,
        "store": asked.store,
        "metadata": asked.metadata,
        "text": asked.text,
        "error": null,
        "incomplete_details": null,
        "usage": null,
    });
    if usage.is_object() {
        let (i, o) = (
            usage["prompt_tokens"].as_u64().unwrap_or(0),
            usage["completion_tokens"].as_u64().unwrap_or(0),
        );
        r["usage"] = json!({
            "input_tokens": i, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": o, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": i + o,
        });
    }
    if status == "incomplete" {
        r["incomplete_details"] = json!({"reason": "max_output_tokens"});
    }
    r
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

/// The status of a response whose chat answer finished so.
fn status(finish: &str) -> &'static str {
    if finish == "length" {
        "incomplete"
    } else {
        "completed"
    }
}

/// The output items and status of a chat answer; `item_id(n)` names the n-th item.
pub fn from_chat(chat: &Value, item_id: impl Fn(usize) -> String) -> (Vec<Value>, &'static str) {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut output = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(&item_id(output.len()), t, "completed"));
    }
    for c in msg["tool_calls"].as_array().into_iter().flatten() {
        output.push(call_item(
            &item_id(output.len()),
            c["id"].as_str().unwrap_or(""),
            c["function"]["name"].as_str().unwrap_or(""),
            c["function"]["arguments"].as_str().unwrap_or("{}"),
            "completed",
        ));
    }
    (
        output,
        status(choice["finish_reason"].as_str().unwrap_or("stop")),
    )
}

/// The item being streamed.
#[derive(Debug)]
enum Open {
    Text {
        id: String,
        text: String,
    },
    Call {
        index: u64,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// A chat stream turned into the Responses events, chunk by chunk; the finished output is
/// kept for the `response.completed` event (and for storing).
#[derive(Debug)]
pub struct Events {
    id: String,
    created_at: i64,
    asked: Asked,
    seq: u64,
    open: Option<Open>,
    pub output: Vec<Value>,
    finish: String,
    usage: Value,
    started: bool,
    ended: bool,
}

impl Events {
    /// What the request asked.
    pub fn asked(&self) -> &Asked {
        &self.asked
    }

    pub fn new(id: &str, created_at: i64, asked: Asked) -> Self {
        Events {
            id: id.to_owned(),
            created_at,
            asked,
            seq: 0,
            open: None,
            output: Vec::new(),
            finish: "stop".into(),
            usage: Value::Null,
            started: false,
            ended: false,
        }
    }

    fn item_id(&self) -> String {
        format!(
            "{}_{}",
            self.id.replacen("resp_", "item_", 1),
            self.output.len()
        )
    }

    fn emit(&mut self, out: &mut String, mut v: Value) {
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let kind = v["type"].as_str().unwrap_or("").to_owned();
        out.push_str(&format!("event: {kind}\ndata: {v}\n\n"));
    }

    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let r = response(
            &self.id,
            self.created_at,
            &self.asked,
            "in_progress",
            &[],
            &Value::Null,
        );
        self.emit(
            out,
            json!({"type": "response.created", "response": r.clone()}),
        );
        self.emit(out, json!({"type": "response.in_progress", "response": r}));
    }

    fn close(&mut self, out: &mut String) {
        let n = self.output.len();
        match self.open.take() {
            None => {}
            Some(Open::Text { id, text }) => {
                self.emit(out, json!({"type": "response.output_text.done", "item_id": id, "output_index": n, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(out, json!({"type": "response.content_part.done", "item_id": id, "output_index": n, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
                let item = message_item(&id, &text, "completed");
                self.emit(
                    out,
                    json!({"type": "response.output_item.done", "output_index": n, "item": item}),
                );
                self.output.push(item);
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            }) => {
                self.emit(out, json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": n, "arguments": arguments}));
                let item = call_item(&id, &call_id, &name, &arguments, "completed");
                self.emit(
                    out,
                    json!({"type": "response.output_item.done", "output_index": n, "item": item}),
                );
                self.output.push(item);
            }
        }
    }

    /// The events for one chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> String {
        let mut out = String::new();
        self.start(&mut out);
        if let Some(e) = chunk.get("error") {
            let message = e["message"]
                .as_str()
                .unwrap_or("the model's stream failed")
                .to_owned();
            self.emit(
                &mut out,
                json!({"type": "error", "code": "server_error", "message": message, "param": null}),
            );
            self.ended = true;
            return out;
        }
        if chunk["usage"].is_object() {
            self.usage = chunk["usage"].clone();
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if !matches!(self.open, Some(Open::Text { .. })) {
                self.close(&mut out);
                let id = self.item_id();
                let n = self.output.len();
                self.emit(&mut out, json!({"type": "response.output_item.added", "output_index": n,
                    "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}));
                self.emit(&mut out, json!({"type": "response.content_part.added", "item_id": id, "output_index": n, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}));
                self.open = Some(Open::Text {
                    id,
                    text: String::new(),
                });
            }
            let n = self.output.len();
            if let Some(Open::Text { id, text }) = &mut self.open {
                text.push_str(t);
                let id = id.clone();
                self.emit(&mut out, json!({"type": "response.output_text.delta", "item_id": id, "output_index": n, "content_index": 0, "delta": t, "logprobs": []}));
            }
        }
        for (k, c) in delta["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = c["index"].as_u64().unwrap_or(k as u64);
            if !matches!(&self.open, Some(Open::Call { index: i, .. }) if *i == index) {
                self.close(&mut out);
                let id = self.item_id();
                let n = self.output.len();
                let call_id = c["id"].as_str().unwrap_or("").to_owned();
                let name = c["function"]["name"].as_str().unwrap_or("").to_owned();
                self.emit(
                    &mut out,
                    json!({"type": "response.output_item.added", "output_index": n,
                    "item": call_item(&id, &call_id, &name, "", "in_progress")}),
                );
                self.open = Some(Open::Call {
                    index,
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                });
            }
            let n = self.output.len();
            if let Some(a) = c["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
                && let Some(Open::Call { id, arguments, .. }) = &mut self.open
            {
                arguments.push_str(a);
                let id = id.clone();
                self.emit(&mut out, json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": n, "delta": a}));
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = f.to_owned();
        }
        out
    }

    /// The closing events; `None` when the stream ended with an error event.
    pub fn finish(&mut self) -> Option<(String, Value)> {
        if self.ended {
            return None;
        }
        self.ended = true;
        let mut out = String::new();
        self.start(&mut out);
        self.close(&mut out);
        let st = status(&self.finish);
        let r = response(
            &self.id,
            self.created_at,
            &self.asked,
            st,
            &self.output,
            &self.usage,
        );
        let kind = if st == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(&mut out, json!({"type": kind, "response": r}));
        Some((out, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_calls_and_outputs_become_chat_messages() {
        let earlier =
            vec![json!({"type": "message", "role": "user", "content": "Weather in Paris?"})];
        let (chat, asked) = to_chat(
            &json!({"model": "local", "instructions": "Be brief.", "max_output_tokens": 50, "store": true,
                "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
                "input": [
                    {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                    {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                    {"role": "developer", "content": [{"type": "input_text", "text": "Answer in French."}]},
                ]}),
            &earlier,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let m = chat["messages"].as_array().cloned().unwrap_or_default();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[1],
            json!({"role": "user", "content": "Weather in Paris?"})
        );
        assert_eq!(m[2]["tool_calls"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        assert_eq!(
            m[4],
            json!({"role": "system", "content": "Answer in French."})
        );
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["tools"][0]["function"]["name"], "get_weather");
        assert!(asked.store);
        assert_eq!(asked.items.len(), 5);
    }

    #[test]
    fn text_format_becomes_the_chat_response_format() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let (chat, asked) = to_chat(
            &json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": true}}}),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": true}})
        );
        let r = response("resp_1", 0, &asked, "completed", &[], &Value::Null);
        assert_eq!(r["text"]["format"]["name"], "place");
        let (chat, _) = to_chat(
            &json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}}),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chat["response_format"], json!({"type": "json_object"}));
        let (chat, asked) =
            to_chat(&json!({"model": "m", "input": "hi"}), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(chat.get("response_format").is_none());
        assert_eq!(asked.text, json!({"format": {"type": "text"}}));
        let e = to_chat(
            &json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema"}}}),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("schema"), "{e}");
        let e = to_chat(
            &json!({"model": "m", "input": "hi", "text": {"format": {"type": "yaml"}}}),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("text.format"), "{e}");
    }

    #[test]
    fn built_in_tools_and_unknown_items_are_refused_by_name() {
        let e = to_chat(&json!({"model": "m", "input": "hi", "tools": [{"type": "web_search_preview"}, {"type": "file_search"}]}), &[])
            .unwrap_err();
        assert!(e.contains("web_search_preview, file_search"), "{e}");
        assert!(
            to_chat(&json!({"model": "m"}), &[])
                .unwrap_err()
                .starts_with("input")
        );
        assert!(
            to_chat(
                &json!({"model": "m", "input": [{"type": "computer_call"}]}),
                &[]
            )
            .unwrap_err()
            .starts_with("input.0.type")
        );
    }

    #[test]
    fn a_stream_becomes_the_responses_events() {
        let (_, asked) =
            to_chat(&json!({"model": "m", "input": "hi"}), &[]).unwrap_or_else(|e| panic!("{e}"));
        let mut ev = Events::new("resp_1", 1, asked);
        let mut all = String::new();
        for c in [
            json!({"choices": [{"delta": {"content": "Hel"}}]}),
            json!({"choices": [{"delta": {"content": "lo"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
        ] {
            all.push_str(&ev.chunk(&c));
        }
        let (tail, done) = ev.finish().unwrap_or_default();
        all.push_str(&tail);
        let kinds: Vec<&str> = all
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["usage"]["total_tokens"], 7);
        assert!(all.contains("\"sequence_number\":14"));
    }
}
