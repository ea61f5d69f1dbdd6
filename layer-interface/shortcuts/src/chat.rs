//! Asking the gateway: one streamed chat completion, read until it ends or the deadline
//! comes — Shortcuts cannot read a stream, so the answer is gathered here.

use std::time::Duration;

use axum::http::HeaderValue;
use contract::sse::SseDecoder;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use crate::error::Error;

/// What the model said by the end or by the deadline.
#[derive(Debug, Clone)]
pub struct Said {
    /// The content as generated (Markdown and all).
    pub text: String,
    /// The stream ended (`[DONE]`); false when the deadline cut it.
    pub complete: bool,
}

/// The gateway, as this service calls it.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub http: reqwest::Client,
    /// Base URL without `/v1`.
    pub base: String,
}

impl Gateway {
    pub fn new(base: &str, connect_timeout: Duration) -> Result<Gateway, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| Error::Upstream(format!("no HTTP client: {e}")))?;
        Ok(Gateway {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// Streams `body` (a chat completion request; `stream` is set here) and gathers the
    /// content until the stream ends or `deadline`. `auth` is the device's header, as sent.
    pub async fn chat(
        &self,
        mut body: Value,
        auth: Option<&HeaderValue>,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Said, Error> {
        body["stream"] = Value::Bool(true);
        let mut req = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .header("x-request-id", request_id)
            .json(&body);
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        let res = match timeout_at(deadline, req.send()).await {
            Err(_) => return Err(Error::NoAnswerInTime),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the gateway cannot be reached");
                return Err(Error::Upstream("its gateway cannot be reached.".into()));
            }
            Ok(Ok(r)) => r,
        };
        let status = res.status().as_u16();
        if status != 200 {
            let text = timeout_at(deadline, res.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(refusal(status, &text, body["model"].as_str().unwrap_or("")));
        }
        let mut decoder = SseDecoder::new();
        let mut stream = res.bytes_stream();
        let mut said = Said {
            text: String::new(),
            complete: false,
        };
        loop {
            let chunk = match timeout_at(deadline, stream.next()).await {
                // The deadline: what came so far. Dropping the stream tells the gateway.
                Err(_) => return Ok(said),
                Ok(None) => return Ok(said),
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "the gateway's stream broke");
                    return finish_broken(said, "the answer broke off.");
                }
                Ok(Some(Ok(c))) => c,
            };
            let events = decoder
                .push(&chunk)
                .map_err(|e| Error::Upstream(format!("its answer could not be read ({e}).")))?;
            for ev in events {
                if ev.is_done() {
                    said.complete = true;
                    return Ok(said);
                }
                let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                    continue;
                };
                if let Some(msg) = v["error"]["message"].as_str() {
                    tracing::warn!(error = msg, "the gateway's stream ended with an error");
                    return finish_broken(said, msg);
                }
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    said.text.push_str(t);
                }
            }
        }
    }
}

/// A stream that broke: what came is an answer cut short; nothing is an error.
fn finish_broken(said: Said, why: &str) -> Result<Said, Error> {
    if said.text.trim().is_empty() {
        Err(Error::Upstream(why.to_owned()))
    } else {
        Ok(said)
    }
}

/// The gateway's refusal, as a sentence.
pub fn refusal(status: u16, body: &str, model: &str) -> Error {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("");
    let message = v["error"]["message"].as_str().unwrap_or("").trim();
    match status {
        401 | 403 => Error::BadKey,
        404 if code == "model_not_found" || message.contains("handle") => {
            Error::UnknownModel(model.to_owned())
        }
        429 => Error::RateLimited,
        503 | 504 => Error::Busy,
        400 | 413 | 422 => Error::BadRequest(sentence(message, "The request was refused.")),
        _ => Error::Upstream(sentence(message, "its gateway failed.")),
    }
}

/// A message as one sentence (first line, ending in a full stop).
fn sentence(message: &str, otherwise: &str) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return otherwise.to_owned();
    }
    let mut s = first.to_owned();
    if !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => s,
    }
}
