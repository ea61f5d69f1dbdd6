//! The backend every call goes to, and the conversation as approaches see it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderValue;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};

use crate::error::Error;

/// A message's text: a string, or the text parts of a list joined by spaces.
pub fn text(m: &Value) -> String {
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The conversation flattened as OptiLLM flattens it: the system message, and every user and
/// assistant turn in one text ("User: …\nAssistant: …"); list content keeps its text parts,
/// joined by spaces. Tool messages and calls are left out, as OptiLLM leaves them.
pub fn flatten(messages: &[Value]) -> (String, String) {
    let mut system = String::new();
    let mut turns = Vec::new();
    for m in messages {
        match m["role"].as_str() {
            Some("system" | "developer") => system = text(m),
            Some("user") => turns.push(format!("User: {}", text(m))),
            Some("assistant") => turns.push(format!("Assistant: {}", text(m))),
            _ => {}
        }
    }
    (system, turns.join("\n"))
}

/// The conversation as approaches that keep real messages send it: the user and assistant
/// turns with their content as it is (images included); tool messages and turns that only
/// call tools are left out, since no tools are offered to the approaches' calls.
pub fn turns(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| matches!(m["role"].as_str(), Some("user" | "assistant")))
        .filter(|m| !m["content"].is_null() && m["content"] != "")
        .map(|m| json!({"role": m["role"], "content": m["content"]}))
        .collect()
}

/// What the proxy keeps across requests about its backend: a cap on concurrent calls per
/// model (fan-out queues here instead of overloading one slot of a local server), and the
/// models that were found not to serve `n` (asked once, then served one call per sample).
#[derive(Debug)]
pub struct Pool {
    per_model: usize,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    without_n: Mutex<HashSet<String>>,
}

impl Pool {
    pub fn new(per_model: usize) -> Pool {
        Pool {
            per_model: per_model.max(1),
            limits: Mutex::new(HashMap::new()),
            without_n: Mutex::new(HashSet::new()),
        }
    }

    fn limit(&self, model: &str) -> Arc<Semaphore> {
        let mut l = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        l.entry(model.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_model)))
            .clone()
    }

    fn serves_n(&self, model: &str) -> bool {
        !self
            .without_n
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(model)
    }

    fn no_n(&self, model: &str) {
        let mut w = self.without_n.lock().unwrap_or_else(|e| e.into_inner());
        if w.insert(model.to_owned()) {
            tracing::info!(
                model,
                "the backend does not serve `n`: one call per sample from now on"
            );
        }
    }
}

/// Why a request's budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    Calls,
    Deadline,
}

impl Spent {
    /// As the `x-optillm-budget` header says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Spent::Calls => "calls",
            Spent::Deadline => "deadline",
        }
    }
}

/// What one request may spend.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_calls: u64,
    pub deadline: Instant,
}

/// One request's calls to the backend: the client's key, the request id to link them in the
/// gateway's log, its budget, and the counts the answer reports.
#[derive(Debug)]
pub struct Backend {
    pub http: reqwest::Client,
    pub base: String,
    pub auth: Option<HeaderValue>,
    pub request_id: String,
    pub timeout: Duration,
    pub pool: Arc<Pool>,
    pub budget: Budget,
    pub calls: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    spent: Mutex<Option<Spent>>,
}

/// One completion.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub finish_reason: String,
}

impl Backend {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        http: reqwest::Client,
        base: String,
        auth: Option<HeaderValue>,
        request_id: String,
        timeout: Duration,
        pool: Arc<Pool>,
        budget: Budget,
    ) -> Backend {
        Backend {
            http,
            base,
            auth,
            request_id,
            timeout,
            pool,
            budget,
            calls: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            spent: Mutex::new(None),
        }
    }

    /// Whether, and why, the budget ran out.
    pub fn spent(&self) -> Option<Spent> {
        *self.spent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run_out(&self, why: Spent) -> Error {
        let mut s = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        s.get_or_insert(why);
        Error::Budget(why)
    }

    /// A chat completion of `messages` with `params` (model, temperature, max_tokens, …);
    /// every choice's text. A call the budget has no room for is not made; one still running
    /// at the deadline is given up.
    pub async fn complete(&self, messages: Vec<Value>, params: Value) -> Result<Vec<Reply>, Error> {
        let mut body = params;
        body["messages"] = Value::Array(messages);
        body["stream"] = json!(false);
        let model = body["model"].as_str().unwrap_or("").to_owned();
        let deadline = self.budget.deadline;
        let limit = self.pool.limit(&model);
        let _permit = match timeout_at(deadline, limit.acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(Error::Backend("the call queue was closed".into())),
            Err(_) => return Err(self.run_out(Spent::Deadline)),
        };
        // Counted when made, so that calls running side by side share the budget.
        if self.calls.fetch_add(1, Ordering::Relaxed) >= self.budget.max_calls {
            self.calls.fetch_sub(1, Ordering::Relaxed);
            return Err(self.run_out(Spent::Calls));
        }
        let call =
            async {
                let res =
                    self.post(&body).send().await.map_err(|e| {
                        Error::Backend(format!("the backend cannot be reached: {e}"))
                    })?;
                let status = res.status().as_u16();
                let v: Value = res.json().await.map_err(|e| {
                    Error::Backend(format!("the backend's answer is not JSON: {e}"))
                })?;
                Ok::<_, Error>((status, v))
            };
        let (status, v) = match timeout_at(deadline, call).await {
            Ok(r) => r?,
            Err(_) => return Err(self.run_out(Spent::Deadline)),
        };
        if status != 200 {
            return Err(Error::BackendRefused { status, body: v });
        }
        let usage = &v["usage"];
        self.prompt_tokens.fetch_add(
            usage["prompt_tokens"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        self.completion_tokens.fetch_add(
            usage["completion_tokens"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        Ok(v["choices"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| Reply {
                        text: c["message"]["content"].as_str().unwrap_or("").to_owned(),
                        finish_reason: c["finish_reason"].as_str().unwrap_or("").to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One completion's text (an empty answer is an error).
    pub async fn one(&self, messages: Vec<Value>, params: Value) -> Result<String, Error> {
        let replies = self.complete(messages, params).await?;
        replies
            .into_iter()
            .next()
            .map(|r| r.text)
            .ok_or_else(|| Error::Backend("the backend answered no choice".into()))
    }

    /// `k` samples: one call with `n = k`; when the backend refuses `n` or answers fewer
    /// choices (llama.cpp serves one) — found out once per model — the rest one call at a
    /// time. When the budget runs out part way, the samples that came back.
    pub async fn samples(
        &self,
        messages: Vec<Value>,
        params: Value,
        k: usize,
    ) -> Result<Vec<Reply>, Error> {
        let model = params["model"].as_str().unwrap_or("").to_owned();
        let mut got = Vec::new();
        if k > 1 && self.pool.serves_n(&model) {
            let mut p = params.clone();
            p["n"] = json!(k);
            match self.complete(messages.clone(), p).await {
                Ok(r) => {
                    if r.len() < k {
                        self.pool.no_n(&model);
                    }
                    got = r;
                }
                Err(Error::BackendRefused { status, .. }) if status == 400 || status == 422 => {
                    self.pool.no_n(&model);
                }
                Err(e) => return Err(e),
            }
        }
        got.truncate(k);
        while got.len() < k {
            let mut more = match self.complete(messages.clone(), params.clone()).await {
                Ok(m) => m,
                Err(Error::Budget(_)) if !got.is_empty() => break,
                Err(e) => return Err(e),
            };
            if more.is_empty() {
                break;
            }
            got.push(more.remove(0));
        }
        Ok(got)
    }

    /// A POST of `body` to the chat route, with the client's key and the request id.
    pub fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .post(format!("{}/chat/completions", self.base))
            .timeout(self.timeout)
            .header("x-request-id", &self.request_id)
            .header(HOP_HEADER, "1")
            .json(body);
        if let Some(a) = &self.auth {
            r = r.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        r
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Set on every call this proxy makes; a request that arrives with it came from this proxy
/// (through the gateway, back here) and is refused instead of looping.
pub use contract::optillm::HOP_HEADER;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_flatten_as_optillm_does() {
        let (s, q) = flatten(&[
            json!({"role": "system", "content": "Be kind."}),
            json!({"role": "user", "content": "Hi"}),
            json!({"role": "assistant", "content": "Hello"}),
            json!({"role": "tool", "content": "ignored"}),
            json!({"role": "user", "content": [{"type": "text", "text": "2+2?"}, {"type": "image_url"}, {"type": "text", "text": "Sure?"}]}),
        ]);
        assert_eq!(s, "Be kind.");
        assert_eq!(q, "User: Hi\nAssistant: Hello\nUser: 2+2? Sure?");
    }

    #[test]
    fn turns_keep_content_and_leave_tools_out() {
        let t = turns(&[
            json!({"role": "system", "content": "Be kind."}),
            json!({"role": "user", "content": [{"type": "text", "text": "this?"}, {"type": "image_url", "image_url": {"url": "data:"}}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}),
            json!({"role": "tool", "tool_call_id": "1", "content": "sunny"}),
            json!({"role": "assistant", "content": "Sunny.", "tool_calls": []}),
        ]);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["content"][1]["type"], "image_url");
        assert_eq!(t[1], json!({"role": "assistant", "content": "Sunny."}));
    }
}
