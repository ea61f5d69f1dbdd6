//! The backend every call goes to, and the conversation as approaches see it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderValue;
use serde_json::{Value, json};

use crate::error::Error;

/// The conversation flattened as OptiLLM flattens it: the system message, and every user and
/// assistant turn in one text ("User: …\nAssistant: …"); list content keeps its text parts,
/// joined by spaces. Tool messages and calls are left out, as OptiLLM leaves them.
pub fn flatten(messages: &[Value]) -> (String, String) {
    let text = |m: &Value| -> String {
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
    };
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

/// One request's calls to the backend: the client's key, the request id to link them in the
/// gateway's log, and the counts the answer reports.
#[derive(Debug)]
pub struct Backend {
    pub http: reqwest::Client,
    pub base: String,
    pub auth: Option<HeaderValue>,
    pub request_id: String,
    pub timeout: Duration,
    pub calls: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

/// One completion.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub finish_reason: String,
}

impl Backend {
    /// A chat completion of `messages` with `params` (model, temperature, max_tokens, …);
    /// every choice's text.
    pub async fn complete(&self, messages: Vec<Value>, params: Value) -> Result<Vec<Reply>, Error> {
        let mut body = params;
        body["messages"] = Value::Array(messages);
        body["stream"] = json!(false);
        let res = self
            .post(&body)
            .send()
            .await
            .map_err(|e| Error::Backend(format!("the backend cannot be reached: {e}")))?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let status = res.status().as_u16();
        let v: Value = res
            .json()
            .await
            .map_err(|e| Error::Backend(format!("the backend's answer is not JSON: {e}")))?;
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
    /// choices (llama.cpp serves one), the rest one call at a time.
    pub async fn samples(
        &self,
        messages: Vec<Value>,
        params: Value,
        k: usize,
    ) -> Result<Vec<Reply>, Error> {
        let mut p = params.clone();
        p["n"] = json!(k);
        let mut got = match self.complete(messages.clone(), p).await {
            Ok(r) => r,
            Err(Error::BackendRefused { status, .. }) if status == 400 || status == 422 => {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        got.truncate(k);
        while got.len() < k {
            let mut more = self.complete(messages.clone(), params.clone()).await?;
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
}
