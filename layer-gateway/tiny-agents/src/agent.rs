//! The loop, as tiny-agents runs it: each turn is one streamed chat completion offered the
//! MCP tools and the exit tools (`task_complete`, `ask_question`); tool-call deltas are merged
//! by index; the calls run one after the other and each answer is a tool message with the
//! original's wording; a text answer ends the run (after a tool round the model gets one
//! more turn, abandoned when its first chunk calls no tool).
//!
//! Unlike the original, the exit tools come after the MCP tools, not before: a small model
//! reads the first tools of a list as what to do (Qwen2.5-Coder-0.5B, asked to read a page
//! with the fetch tool, answered with a `task_complete` call written as text when the exit
//! tools came first, and called `fetch` when they came last). And a run is bounded — every turn counts towards `max_turns`, tool calls
//! towards `max_tool_calls`, and the whole run has a deadline — and every `tool_call_id` is
//! answered, also when an exit tool, a limit or Ctrl-C ends the run beside other calls, so
//! the history stays acceptable to strict backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use docsdb::tool_calls::{ToolCallRow, ToolCallWriter};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::agent_file::AgentDef;
use crate::tools::{Tool, Toolbox};

/// The original's system prompt, used when the agent has no PROMPT.md or AGENTS.md.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are an agent - please keep going until the user\u{2019}s query is completely
resolved, before ending your turn and yielding back to the user. Only terminate
your turn when you are sure that the problem is solved, or if you need more
info from the user to solve the problem.
If you are not sure about anything pertaining to the user\u{2019}s request, use your
tools to read files and gather the relevant information: do NOT guess or make
up an answer.
You MUST plan extensively before each function call, and reflect extensively
on the outcomes of the previous function calls. DO NOT do this entire process
by making function calls only, as this can impair your ability to solve the
problem and think insightfully.";

/// The tools that end a run: `(name, description)`, offered after the MCP tools in every
/// turn.
pub const EXIT_TOOLS: [(&str, &str); 2] = [
    (
        "task_complete",
        "Call this tool when the task given by the user is complete",
    ),
    (
        "ask_question",
        "Ask the user for more info required to solve or clarify their problem.",
    ),
];

/// The bounds of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Model turns, tool turns included.
    pub max_turns: usize,
    /// Tool calls run (MCP tools; exit tools and refused calls do not count).
    pub max_tool_calls: usize,
    /// Wall-clock time of the whole run.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_turns: 10,
            max_tool_calls: 30,
            deadline: Duration::from_secs(300),
        }
    }
}

/// What happens during a run, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Answer text from the model.
    Text(String),
    /// The model's own reasoning (`reasoning_content`), when its backend sends it.
    Reasoning(String),
    /// A tool call about to run.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// Its answer.
    ToolResult {
        id: String,
        name: String,
        content: String,
        ok: bool,
        elapsed: Duration,
    },
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The model answered in text.
    Answered,
    /// The model called an exit tool (`task_complete`, `ask_question`).
    Exit(String),
    /// `max_turns` turns were taken.
    MaxTurns(usize),
    /// `max_tool_calls` calls were run.
    MaxToolCalls(usize),
    /// The deadline passed.
    Deadline(Duration),
    /// Stopped from outside (Ctrl-C, a client that went away).
    Aborted,
}

impl Stop {
    /// Whether the run ended on a limit (the answer may be unfinished).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Stop::MaxTurns(_) | Stop::MaxToolCalls(_) | Stop::Deadline(_)
        )
    }

    /// A sentence for the user.
    pub fn describe(&self) -> String {
        match self {
            Stop::Answered => "answered".into(),
            Stop::Exit(t) => format!("ended by {t}"),
            Stop::MaxTurns(n) => format!("stopped after {n} turns (--max-turns)"),
            Stop::MaxToolCalls(n) => format!("stopped after {n} tool calls (--max-tool-calls)"),
            Stop::Deadline(d) => format!(
                "stopped at the run's deadline of {} s (--deadline)",
                d.as_secs()
            ),
            Stop::Aborted => "interrupted".into(),
        }
    }
}

/// How a run went.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stop: Stop,
    pub turns: usize,
    pub tool_calls: usize,
    /// Token usage summed over the turns whose streams reported it.
    pub usage: Option<contract::usage::Usage>,
}

/// An agent ready to run: its definition, its tool servers, where its model is.
#[derive(Debug)]
pub struct Agent {
    pub def: AgentDef,
    pub toolbox: Toolbox,
    pub http: reqwest::Client,
    /// The OpenAI-compatible base URL (`…/v1`).
    pub endpoint: String,
    pub limits: Limits,
    /// Where each tool call becomes a row (the system-docs DB), when there is one.
    pub tool_log: Option<Arc<ToolCallWriter>>,
}

/// One call the model asked for, merged from its deltas.
#[derive(Debug, Default)]
struct Call {
    index: u64,
    id: String,
    name: Option<String>,
    arguments: String,
}

/// What the calls of a turn run under: the run's id, its listener, its stop signal and
/// deadline.
#[derive(Clone, Copy)]
struct CallContext<'a> {
    request_id: &'a str,
    events: &'a mpsc::Sender<Event>,
    cancel: &'a CancellationToken,
    deadline: Instant,
}

/// How a turn ended.
enum Turn {
    /// The model's message was added to the history.
    Done { calls: Vec<Call> },
    /// The turn after a tool round called no tool in its first chunk: abandoned, as the
    /// original abandons it.
    Abandoned,
}

impl Agent {
    /// The system message's text.
    pub fn system_prompt(&self) -> &str {
        self.def
            .prompt
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_SYSTEM_PROMPT)
    }

    /// A history holding only the system message.
    pub fn new_history(&self) -> Vec<Value> {
        vec![json!({"role": "system", "content": self.system_prompt()})]
    }

    /// Runs the agent on `messages` (whose last message is the user's) until it answers, calls
    /// an exit tool, hits a limit or `cancel` fires. The messages the run adds stay in
    /// `messages`; `events` hears what happens; `request_id` goes with every model call (the
    /// gateway's request log links them by it).
    pub async fn run(
        &self,
        messages: &mut Vec<Value>,
        request_id: &str,
        events: &mpsc::Sender<Event>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let deadline = started + self.limits.deadline;
        let (tools, _) = self.toolbox.tools().await;
        let offered = offered_tools(&tools);
        let mut out = Outcome {
            stop: Stop::Answered,
            turns: 0,
            tool_calls: 0,
            usage: None,
        };
        let mut next_turn_should_call_tools = true;
        loop {
            if cancel.is_cancelled() {
                out.stop = Stop::Aborted;
                return Ok(out);
            }
            if out.turns >= self.limits.max_turns {
                out.stop = Stop::MaxTurns(out.turns);
                return Ok(out);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                out.stop = Stop::Deadline(self.limits.deadline);
                return Ok(out);
            }
            let probe = out.turns > 0 && next_turn_should_call_tools;
            let turn = tokio::select! {
                () = cancel.cancelled() => None,
                t = tokio::time::timeout(left, self.turn(messages, &offered, probe, request_id, events, &mut out.usage)) => Some(t),
            };
            out.turns += 1;
            let calls = match turn {
                None => {
                    out.stop = Stop::Aborted;
                    return Ok(out);
                }
                Some(Err(_)) => {
                    out.stop = Stop::Deadline(self.limits.deadline);
                    return Ok(out);
                }
                Some(Ok(Err(e))) => return Err(e),
                Some(Ok(Ok(Turn::Abandoned))) => Vec::new(),
                Some(Ok(Ok(Turn::Done { calls }))) => calls,
            };
            let ctx = CallContext {
                request_id,
                events,
                cancel,
                deadline,
            };
            if let Some(stop) = self
                .run_calls(calls, messages, &ctx, &mut out.tool_calls)
                .await
            {
                out.stop = stop;
                return Ok(out);
            }
            let last_is_tool = messages.last().is_some_and(|m| m["role"] == "tool");
            if !last_is_tool && next_turn_should_call_tools {
                out.stop = Stop::Answered;
                return Ok(out);
            }
            next_turn_should_call_tools = !last_is_tool;
        }
    }

    /// One streamed completion; its message goes into `messages`.
    async fn turn(
        &self,
        messages: &mut Vec<Value>,
        tools: &[Value],
        probe: bool,
        request_id: &str,
        events: &mpsc::Sender<Event>,
        usage: &mut Option<contract::usage::Usage>,
    ) -> Result<Turn, Error> {
        let body = json!({
            "model": self.def.model,
            "messages": messages,
            "tool_choice": "auto",
            "tools": tools,
            "stream": true,
        });
        let mut req = self
            .http
            .post(format!("{}/chat/completions", self.endpoint))
            .header("x-request-id", request_id)
            .json(&body);
        if let Some(k) = self.def.api_key.as_deref().filter(|k| !k.is_empty()) {
            req = req.bearer_auth(k);
        }
        let res = req.send().await.map_err(|e| {
            Error::Backend(format!(
                "the model's endpoint {} cannot be reached: {e}",
                self.endpoint
            ))
        })?;
        let status = res.status();
        if !status.is_success() {
            let text = res.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(Error::BackendRefused {
                status: status.as_u16(),
                message,
            });
        }
        let mut role: Option<String> = None;
        let mut content = String::new();
        let mut calls: Vec<Call> = Vec::new();
        let mut chunks = 0usize;
        let mut decoder = contract::sse::SseDecoder::new();
        let mut pending = Vec::new();
        let mut stream = res.bytes_stream();
        'read: while let Some(bytes) = futures_util::StreamExt::next(&mut stream).await {
            let bytes =
                bytes.map_err(|e| Error::Backend(format!("the model's stream broke: {e}")))?;
            decoder
                .push_into(&bytes, &mut pending)
                .map_err(|e| Error::Backend(format!("the model's stream: {e}")))?;
            for ev in pending.drain(..) {
                if ev.is_done() {
                    break 'read;
                }
                let Ok(chunk) = serde_json::from_str::<Value>(&ev.data) else {
                    continue;
                };
                if let Some(e) = chunk.get("error") {
                    return Err(Error::Backend(format!(
                        "the model's stream reported an error: {}",
                        e["message"].as_str().unwrap_or(&e.to_string())
                    )));
                }
                chunks += 1;
                add_usage(usage, &chunk["usage"]);
                let delta = &chunk["choices"][0]["delta"];
                if !delta.is_object() {
                    continue;
                }
                if let Some(r) = delta["role"].as_str() {
                    role = Some(r.to_owned());
                }
                let text = delta["content"].as_str().unwrap_or("");
                content.push_str(text);
                if let Some(parts) = delta["tool_calls"].as_array() {
                    merge_calls(&mut calls, parts);
                }
                // The turn after a tool round must start with a tool call, or is dropped.
                if probe && chunks <= 2 && calls.is_empty() {
                    return Ok(Turn::Abandoned);
                }
                if !text.is_empty() {
                    let _ = events.send(Event::Text(text.to_owned())).await;
                }
                if let Some(r) = delta["reasoning_content"]
                    .as_str()
                    .filter(|r| !r.is_empty())
                {
                    let _ = events.send(Event::Reasoning(r.to_owned())).await;
                }
            }
        }
        if !content.is_empty() || !calls.is_empty() {
            let mut m = Map::new();
            m.insert(
                "role".into(),
                json!(role.unwrap_or_else(|| "assistant".into())),
            );
            m.insert("content".into(), json!(content));
            if !calls.is_empty() {
                m.insert(
                    "tool_calls".into(),
                    Value::Array(
                        calls
                            .iter()
                            .map(|c| {
                                json!({
                                    "id": c.id,
                                    "type": "function",
                                    "function": {
                                        "name": c.name,
                                        "arguments": if c.arguments.is_empty() { "{}" } else { c.arguments.as_str() },
                                    },
                                })
                            })
                            .collect(),
                    ),
                );
            }
            messages.push(Value::Object(m));
        }
        Ok(Turn::Done { calls })
    }

    /// Runs the turn's calls in order, answering every one. `Some`: the run ends.
    async fn run_calls(
        &self,
        calls: Vec<Call>,
        messages: &mut Vec<Value>,
        ctx: &CallContext<'_>,
        done: &mut usize,
    ) -> Option<Stop> {
        let CallContext {
            request_id,
            events,
            cancel,
            deadline,
        } = *ctx;
        let mut ended: Option<Stop> = None;
        for call in calls {
            let answer = |content: &str| {
                let mut m = Map::new();
                m.insert("role".into(), json!("tool"));
                m.insert("tool_call_id".into(), json!(call.id));
                if let Some(n) = &call.name {
                    m.insert("name".into(), json!(n));
                }
                m.insert("content".into(), json!(content));
                Value::Object(m)
            };
            if let Some(stop) = &ended {
                messages.push(answer(&not_run(stop)));
                continue;
            }
            let Some(name) = call.name.clone() else {
                messages.push(answer("Invalid tool call with no function name."));
                continue;
            };
            let raw = if call.arguments.is_empty() {
                "{}"
            } else {
                call.arguments.as_str()
            };
            let arguments = match serde_json::from_str::<Value>(raw) {
                Err(e) => {
                    messages.push(answer(&format!("Invalid JSON generated by the model: {e}")));
                    continue;
                }
                Ok(v) => v,
            };
            if EXIT_TOOLS.iter().any(|(n, _)| *n == name) {
                messages.push(answer(""));
                ended = Some(Stop::Exit(name));
                continue;
            }
            let Value::Object(arguments) = arguments else {
                messages.push(answer(
                    "Error: MCP tool call failed with error message: the arguments must be a JSON object",
                ));
                continue;
            };
            if *done >= self.limits.max_tool_calls {
                ended = Some(Stop::MaxToolCalls(*done));
                messages.push(answer(&format!(
                    "Not run: this run reached its limit of {} tool calls.",
                    self.limits.max_tool_calls
                )));
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || cancel.is_cancelled() {
                let stop = if cancel.is_cancelled() {
                    Stop::Aborted
                } else {
                    Stop::Deadline(self.limits.deadline)
                };
                messages.push(answer(&not_run(&stop)));
                ended = Some(stop);
                continue;
            }
            let _ = events
                .send(Event::ToolCall {
                    id: call.id.clone(),
                    name: name.clone(),
                    arguments: raw.to_owned(),
                })
                .await;
            let started = Instant::now();
            let started_at_ms = docsdb::now_ms();
            *done += 1;
            let result = tokio::select! {
                () = cancel.cancelled() => Err(Stop::Aborted),
                r = tokio::time::timeout(left, self.toolbox.call(&name, arguments)) => {
                    r.map_err(|_| Stop::Deadline(self.limits.deadline))
                }
            };
            let elapsed = started.elapsed();
            let (content, ok, server) = match result {
                Ok(o) => (o.content, o.ok, o.server),
                Err(stop) => {
                    let text = format!(
                        "Error: MCP tool call failed with error message: {}",
                        stop.describe()
                    );
                    ended = Some(stop);
                    (text, false, self.toolbox.owner(&name).await)
                }
            };
            tracing::info!(
                agent = %self.def.name, tool = %name, server = server.as_deref().unwrap_or("-"),
                duration_ms = elapsed.as_millis() as u64, ok, request_id, "tool call"
            );
            if let Some(log) = &self.tool_log {
                let row = ToolCallRow {
                    request_id: request_id.to_owned(),
                    started_at_ms,
                    caller: format!("{}{}", crate::MODEL_PREFIX, self.def.name),
                    key_name: None,
                    server,
                    tool: name.clone(),
                    duration_ms: elapsed.as_secs_f64() * 1000.0,
                    ok,
                    error: None,
                };
                log.log(if ok { row } else { row.with_error(&content) });
            }
            let _ = events
                .send(Event::ToolResult {
                    id: call.id.clone(),
                    name: name.clone(),
                    content: content.clone(),
                    ok,
                    elapsed,
                })
                .await;
            messages.push(answer(&content));
        }
        ended
    }
}

/// The answer to a call the run did not get to.
fn not_run(stop: &Stop) -> String {
    format!(
        "Not run: the run ended before this call ({}).",
        stop.describe()
    )
}

/// The MCP tools, then the exit tools, in OpenAI's `tools` shape.
pub fn offered_tools(tools: &[Tool]) -> Vec<Value> {
    tools
        .iter()
        .map(Tool::openai)
        .chain(EXIT_TOOLS.iter().map(|(name, description)| {
            json!({"type": "function", "function": {
                "name": name,
                "description": description,
                "parameters": {"type": "object", "properties": {}},
            }})
        }))
        .collect()
}

/// Merges tool-call deltas by `index`: the first piece of a call gives its id, name and
/// the start of its arguments; later pieces add to the arguments.
fn merge_calls(calls: &mut Vec<Call>, parts: &[Value]) {
    for (k, part) in parts.iter().enumerate() {
        let index = part["index"].as_u64().unwrap_or(k as u64);
        let args = part["function"]["arguments"].as_str().unwrap_or("");
        match calls.iter_mut().find(|c| c.index == index) {
            Some(c) => c.arguments.push_str(args),
            None => calls.push(Call {
                index,
                id: part["id"].as_str().unwrap_or("").to_owned(),
                name: part["function"]["name"].as_str().map(str::to_owned),
                arguments: args.to_owned(),
            }),
        }
    }
}

fn add_usage(sum: &mut Option<contract::usage::Usage>, u: &Value) {
    let Ok(u) = serde_json::from_value::<contract::usage::Usage>(u.clone()) else {
        return;
    };
    let s = sum.get_or_insert_with(Default::default);
    s.prompt_tokens += u.prompt_tokens;
    s.completion_tokens = Some(s.completion_tokens.unwrap_or(0) + u.completion_tokens.unwrap_or(0));
    s.total_tokens += u.total_tokens;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_merge_by_index() {
        let mut calls = Vec::new();
        merge_calls(
            &mut calls,
            &[json!({"index": 0, "id": "a", "function": {"name": "fetch", "arguments": "{\"u"}})],
        );
        merge_calls(
            &mut calls,
            &[json!({"index": 1, "id": "b", "function": {"name": "search", "arguments": ""}})],
        );
        merge_calls(
            &mut calls,
            &[
                json!({"index": 0, "function": {"arguments": "rl\":1}"}}),
                json!({"index": 1, "function": {"arguments": "{}"}}),
            ],
        );
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].arguments.as_str()),
            ("a", "{\"url\":1}")
        );
        assert_eq!(calls[1].name.as_deref(), Some("search"));
        assert_eq!(calls[1].arguments, "{}");
    }
}
