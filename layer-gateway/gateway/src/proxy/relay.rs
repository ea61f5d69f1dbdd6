//! Passing an answer to the client: a buffered JSON body, or an SSE stream relayed chunk by
//! chunk, with the usage the client did not ask for hidden and the request logged when the
//! stream ends, fails, or the client goes away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use docsdb::request_log::UsageSource;
use futures_util::StreamExt;
use serde_json::Value;

use crate::error::Error;
use crate::rewrite::Scanned;
use crate::routing::{InFlight, TargetState};
use crate::table::Target;

use super::attempt::{Upstream, chain, remaining};
use super::frames;
use super::record::Record;

/// Set when the answering target was sent the request without its tool definitions (over the
/// target's `max_tools_bytes`): how many bytes of `tools` were left out.
pub const TOOLS_DROPPED_HEADER: &str = "x-homelab-tools-dropped";

// Named once: a name given as text is copied into each answer's map.
static HANDLE_HEADER: HeaderName = HeaderName::from_static("x-homelab-handle");
static TARGET_HEADER: HeaderName = HeaderName::from_static("x-homelab-target");
static ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-homelab-attempts");

/// The answer's headers: those that describe the body (and the engine's count of cut
/// embedding inputs), and which handle, target and attempt answered.
pub(super) fn response_headers(
    up: &HeaderMap,
    target: &Target,
    handle: &str,
    attempts: u32,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(10);
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CACHE_CONTROL,
    ] {
        if let Some(v) = up.get(&name) {
            h.insert(name, v.clone());
        }
    }
    if let Some(v) = up.get(contract::engine::TRUNCATED_INPUTS_HEADER) {
        h.insert(contract::engine::TRUNCATED_INPUTS_HEADER, v.clone());
    }
    if let Ok(v) = HeaderValue::from_str(handle) {
        h.insert(HANDLE_HEADER.clone(), v);
    }
    if let Some(v) = &target.endpoint_header {
        h.insert(TARGET_HEADER.clone(), v.clone());
    }
    const FEW: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "7"];
    let attempts = FEW.get(attempts as usize).map_or_else(
        || HeaderValue::from(attempts),
        |n| HeaderValue::from_static(n),
    );
    h.insert(ATTEMPTS_HEADER.clone(), attempts);
    h
}

/// An answer with `headers` as they are (typed as bytes when they name no type).
fn answer(status: StatusCode, body: Body, mut headers: HeaderMap) -> Response {
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

pub(super) async fn respond(
    mut rec: Record,
    up: Upstream,
    ts: Arc<TargetState>,
    guard: InFlight,
    filter_usage: bool,
) -> Response {
    let began = Instant::now();
    let Some(target) = rec.target.clone() else {
        return rec.fail(Error::BadRequest("no target".into()));
    };
    let handle = rec.handle.clone().unwrap_or_default();
    let mut headers = response_headers(&up.headers, &target, &handle, rec.attempts);
    if let Some(bytes) = rec.tools_dropped {
        headers.insert(TOOLS_DROPPED_HEADER, HeaderValue::from(bytes));
    }
    let encoded = up.headers.contains_key(header::CONTENT_ENCODING);
    let Some(rest) = up.rest else {
        let mut ttft = up.first_at.duration_since(rec.started);
        // The answer's members, found once for its usage and, without one, its size.
        let scanned = if encoded {
            None
        } else {
            crate::rewrite::scan(&up.first).ok()
        };
        let usage = scanned.as_ref().and_then(|sc| usage_of(&up.first, sc));
        if let Some(u) = &usage {
            rec.prompt_tokens = u.prompt;
            rec.completion_tokens = u.completion;
            // With the backend's timings, the first token came before its generation time.
            if let Some(g) = u.generation {
                rec.generation = Some(g);
                ttft = ttft.saturating_sub(g);
            }
        }
        let status = up.status.as_u16();
        if let Some(sc) = scanned
            .as_ref()
            .filter(|_| usage.is_none() && status == 200)
        {
            rec.count_usage(answer_tokens(&up.first, sc));
        }
        rec.ttft = Some(ttft);
        ts.observe_ttft(ttft.as_micros() as u64);
        drop(guard);
        rec.response_bytes = Some(up.first.len() as u64);
        let error = (status >= 400).then_some("upstream_client_error");
        if let Some((key, ttl)) = rec.cache_slot.take() {
            if status == 200 && !encoded {
                rec.state.cache.put(
                    key,
                    crate::cache::Answer {
                        body: up.first.clone(),
                        content_type: up.headers.get(header::CONTENT_TYPE).cloned(),
                        content_encoding: up.headers.get(header::CONTENT_ENCODING).cloned(),
                        target: target.clone(),
                        prompt_tokens: rec.prompt_tokens,
                        completion_tokens: rec.completion_tokens,
                        usage_source: rec.usage_source(),
                        stored: Instant::now(),
                    },
                    ttl,
                );
            }
            headers.insert(crate::cache::HEADER, HeaderValue::from_static("miss"));
        }
        rec.add_own(began.elapsed());
        rec.finish(status, error);
        let res = answer(up.status, Body::from(up.first), headers);
        return res;
    };
    // Events are read in an SSE stream that is not compressed; other answers (speech audio)
    // pass as they come.
    let parse = !encoded
        && up
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
    if !parse {
        // Events cannot be read: the first chunk is the best time to first token there is.
        let ttft = up.first_at.duration_since(rec.started);
        rec.ttft = Some(ttft);
        ts.observe_ttft(ttft.as_micros() as u64);
    }
    let idle = target.timeouts.idle;
    let deadline = rec.started + target.timeouts.total;
    let between_tokens = rec
        .state
        .metrics
        .between_tokens
        .get_or_create(&crate::metrics::TargetLabels {
            handle: handle.clone(),
            target: target.key.clone(),
        })
        .clone();
    rec.add_own(began.elapsed());
    let mut relay = Relay {
        between_tokens: Some(between_tokens),
        rec: Some(rec),
        upstream: rest.into_stream(),
        framer: frames::Framer::new(contract::sse::DEFAULT_MAX_LINE),
        filter_usage: filter_usage && parse,
        parse,
        out: VecDeque::new(),
        sent_bytes: 0,
        done: false,
        outcome: None,
        idle,
        deadline,
        ts,
        first_data: None,
        last_data: None,
        data_events: 0,
        reported_generation: None,
        _guard: guard,
    };
    relay.take_timed(up.first);
    let body = futures_util::stream::unfold(relay, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk), r))
    });
    answer(up.status, Body::from_stream(body), headers)
}

/// What an answer says about its size and speed.
pub(super) struct UsageSeen {
    pub(super) prompt: Option<u64>,
    pub(super) completion: Option<u64>,
    /// The backend's own generation time (`timings.predicted_ms`, llama-server's).
    pub(super) generation: Option<Duration>,
}

/// Generation time from a `timings` object, if it has a usable one.
pub(super) fn generation_of(timings: Option<&contract::engine::Timings>) -> Option<Duration> {
    timings
        .map(|t| t.predicted_ms)
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
}

/// Prompt and completion tokens (and timings) from a JSON body with `usage` — OpenAI's
/// `prompt_tokens`/`completion_tokens`, or the `input_tokens`/`output_tokens` of Anthropic
/// messages, audio and image answers. Only the `usage` and `timings` members are decoded:
/// the top-level scan skips the rest (the answer's text) without building it.
pub(super) fn usage_of(json: &[u8], scanned: &Scanned) -> Option<UsageSeen> {
    let usage: Counts = serde_json::from_slice(scanned.get(json, "usage")?).ok()?;
    let (prompt, completion) = usage.tokens();
    let timings = scanned
        .get(json, "timings")
        .and_then(|t| serde_json::from_slice::<contract::engine::Timings>(t).ok());
    Some(UsageSeen {
        prompt,
        completion,
        generation: generation_of(timings.as_ref()),
    })
}

/// The counts of a `usage` object, in either naming, read without building the object (its
/// other members are skipped). A count that is not a whole number is no count.
#[derive(serde::Deserialize)]
struct Counts {
    prompt_tokens: Option<Value>,
    input_tokens: Option<Value>,
    completion_tokens: Option<Value>,
    output_tokens: Option<Value>,
}

impl Counts {
    fn tokens(&self) -> (Option<u64>, Option<u64>) {
        // A member that is `null` is read as absent.
        let either = |a: &Option<Value>, b: &Option<Value>| {
            a.as_ref().or(b.as_ref()).and_then(Value::as_u64)
        };
        (
            either(&self.prompt_tokens, &self.input_tokens),
            either(&self.completion_tokens, &self.output_tokens),
        )
    }
}

/// The prompt and completion tokens of a `usage` object, in either naming.
fn tokens_of(u: &Value) -> (Option<u64>, Option<u64>) {
    let either = |a: &str, b: &str| u.get(a).or_else(|| u.get(b)).and_then(Value::as_u64);
    (
        either("prompt_tokens", "input_tokens"),
        either("completion_tokens", "output_tokens"),
    )
}

/// Answers from the response cache, and logs it as such.
pub(super) fn cached(mut rec: Record, hit: crate::cache::Answer) -> Response {
    let handle = rec.handle.clone().unwrap_or_default();
    let mut headers = response_headers(&HeaderMap::new(), &hit.target, &handle, 0);
    for (name, v) in [
        (header::CONTENT_TYPE, &hit.content_type),
        (header::CONTENT_ENCODING, &hit.content_encoding),
    ] {
        if let Some(v) = v {
            headers.insert(name, v.clone());
        }
    }
    headers.insert(crate::cache::HEADER, HeaderValue::from_static("hit"));
    headers.insert(
        header::AGE,
        HeaderValue::from(hit.stored.elapsed().as_secs()),
    );
    rec.cache_hit = true;
    rec.target = Some(hit.target);
    rec.prompt_tokens = hit.prompt_tokens;
    rec.completion_tokens = hit.completion_tokens;
    rec.counted = hit.usage_source == Some(UsageSource::Gateway);
    rec.response_bytes = Some(hit.body.len() as u64);
    rec.ttft = Some(rec.started.elapsed());
    rec.add_own(rec.started.elapsed());
    rec.finish(200, None);
    answer(StatusCode::OK, Body::from(hit.body), headers)
}

/// The completion tokens of a plain answer that reports none: its `choices` (or Anthropic's
/// `content`) at about four bytes per token; none for answers without text (embeddings).
fn answer_tokens(body: &[u8], scanned: &Scanned) -> Option<u64> {
    let text = scanned
        .get(body, "choices")
        .or_else(|| scanned.get(body, "content"))?;
    Some(super::context::tokens(
        super::context::prompt_bytes(text),
        super::context::COUNTING_BYTES_PER_TOKEN,
    ))
}

/// Passes an upstream SSE stream to the client and logs it when it ends — normally, on an
/// upstream failure, or when the client goes away (the relay is dropped). The time to first
/// token is the first data event's (comments a busy backend sends before do not count), and
/// the generation time is the backend's `timings`, else the span from the first data event
/// to the last.
pub(super) struct Relay {
    pub(super) rec: Option<Record>,
    /// The rest of the upstream body; an error is its description (for the log).
    pub(super) upstream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, String>> + Send>>,
    /// The stream cut into whole events.
    pub(super) framer: frames::Framer,
    /// Where the gaps between data events go.
    pub(super) between_tokens: Option<prometheus_client::metrics::histogram::Histogram>,
    /// We asked for usage the client did not: drop the usage-only event.
    pub(super) filter_usage: bool,
    /// Decode events at all (not for compressed streams).
    pub(super) parse: bool,
    pub(super) out: VecDeque<Bytes>,
    /// Bytes passed to the client.
    pub(super) sent_bytes: u64,
    pub(super) done: bool,
    /// `Some(error kind)` once it ended badly; `Some(None)` once it ended well.
    pub(super) outcome: Option<Option<&'static str>>,
    pub(super) idle: Duration,
    pub(super) deadline: Instant,
    pub(super) ts: Arc<TargetState>,
    pub(super) first_data: Option<Instant>,
    pub(super) last_data: Option<Instant>,
    pub(super) data_events: u64,
    /// From the backend's `timings`.
    pub(super) reported_generation: Option<Duration>,
    pub(super) _guard: InFlight,
}

impl Relay {
    /// [`Relay::take_chunk`], its time counted as the gateway's own.
    fn take_timed(&mut self, chunk: Bytes) {
        let began = Instant::now();
        self.take_chunk(chunk);
        if let Some(rec) = &mut self.rec {
            rec.add_own(began.elapsed());
        }
    }

    pub(super) fn take_chunk(&mut self, chunk: Bytes) {
        if !self.parse {
            self.out.push_back(chunk);
            return;
        }
        match self.framer.push(chunk) {
            Ok(whole) => self.take_events(&whole),
            Err(e) => self.end_with_error("upstream_stream_error", &chain(&e)),
        }
    }

    /// Passes on the whole events of `whole` (the framer's last events) as they came, but the
    /// usage-only event the client did not ask for; reads the few that carry usage, timings
    /// or an error.
    fn take_events(&mut self, whole: &Bytes) {
        let mut kept_from = 0;
        for i in 0..self.framer.events.len() {
            let range = self.framer.events[i].clone();
            let event = &whole[range.clone()];
            let kind = frames::kind(event);
            if kind.data {
                self.saw_data();
            }
            if !kind.worth_reading {
                continue;
            }
            let usage_only = frames::data_of(event).is_some_and(|d| self.note(&d));
            if self.filter_usage && usage_only {
                if range.start > kept_from {
                    self.out.push_back(whole.slice(kept_from..range.start));
                }
                kept_from = range.end;
            }
        }
        if kept_from < whole.len() {
            self.out.push_back(whole.slice(kept_from..));
        }
    }

    /// A data event arrived now: the first one is the time to first token.
    pub(super) fn saw_data(&mut self) {
        let now = Instant::now();
        if self.first_data.is_none()
            && let Some(rec) = &mut self.rec
        {
            let ttft = now.duration_since(rec.started);
            rec.ttft = Some(ttft);
            self.ts.observe_ttft(ttft.as_micros() as u64);
        }
        self.first_data.get_or_insert(now);
        if let (Some(last), Some(h)) = (self.last_data, &self.between_tokens) {
            h.observe(now.duration_since(last).as_secs_f64());
        }
        self.last_data = Some(now);
        self.data_events += 1;
    }

    /// Records usage, timings and upstream errors; returns whether the event carries only
    /// usage.
    pub(super) fn note(&mut self, data: &str) -> bool {
        if !(data.contains("\"usage\"")
            || data.contains("\"error\"")
            || data.contains("\"timings\""))
        {
            return false;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return false;
        };
        if let Some(t) = v.get("timings").filter(|t| t.is_object()) {
            let t = serde_json::from_value::<contract::engine::Timings>(t.clone()).ok();
            self.reported_generation = generation_of(t.as_ref()).or(self.reported_generation);
        }
        if v.get("error").is_some_and(|e| !e.is_null())
            && let Some(rec) = &mut self.rec
        {
            rec.completion_tokens = rec.completion_tokens.or(Some(0));
            self.outcome = Some(Some("upstream_stream_error"));
        }
        // Anthropic's `message_start` carries it in its message.
        let usage = v
            .get("usage")
            .or_else(|| v.get("message").and_then(|m| m.get("usage")));
        if let Some(u) = usage.filter(|u| !u.is_null())
            && let Some(rec) = &mut self.rec
        {
            let (prompt, completion) = tokens_of(u);
            rec.prompt_tokens = prompt.or(rec.prompt_tokens);
            rec.completion_tokens = completion.or(rec.completion_tokens);
            return v["choices"].as_array().is_some_and(Vec::is_empty);
        }
        false
    }

    /// Ends the stream with an OpenAI error event. `detail` goes to the log only: it may name
    /// the backend.
    pub(super) fn end_with_error(&mut self, kind: &'static str, detail: &str) {
        let (request_id, target) = match &self.rec {
            Some(r) => (
                r.request_id.clone(),
                r.target.as_ref().map(|t| t.key.clone()).unwrap_or_default(),
            ),
            None => Default::default(),
        };
        tracing::warn!(%request_id, %target, %kind, %detail, "stream ended early");
        let message = match kind {
            "upstream_timeout" => "the backend stopped sending before the answer was complete",
            _ => "the backend stream failed before the answer was complete",
        };
        let err = contract::ApiError::bad_gateway(format!("{message}; see the gateway log"));
        let mut body = serde_json::to_value(&err).unwrap_or(Value::Null);
        body["error"]["code"] = Value::from(kind);
        self.out
            .push_back(Bytes::from(contract::sse::encode_json_data(
                body.to_string().as_bytes(),
            )));
        self.outcome = Some(Some(kind));
        self.done = true;
    }

    pub(super) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(c) = self.out.pop_front() {
                self.sent_bytes += c.len() as u64;
                return Some(c);
            }
            if self.done {
                return None;
            }
            let wait = remaining(self.deadline, self.idle);
            match tokio::time::timeout(wait, self.upstream.next()).await {
                Err(_) => {
                    let what = if Instant::now() >= self.deadline {
                        "the total timeout was reached"
                    } else {
                        "the backend went quiet"
                    };
                    self.end_with_error("upstream_timeout", what);
                }
                Ok(Some(Err(e))) => self.end_with_error("upstream_stream_error", &e),
                Ok(Some(Ok(c))) => self.take_timed(c),
                Ok(None) => {
                    // A last event the upstream did not end with a blank line.
                    let last = self.framer.finish();
                    if !last.is_empty() {
                        self.framer.events.clear();
                        self.framer.events.push(0..last.len());
                        self.take_events(&last);
                    }
                    self.outcome.get_or_insert(None);
                    self.done = true;
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let Some(mut rec) = self.rec.take() else {
            return;
        };
        rec.response_bytes = Some(self.sent_bytes);
        if self.parse {
            // No usage came (a backend that sends none, a client that left): each data event
            // (`[DONE]` is not one) is about a token.
            rec.count_usage(Some(self.data_events));
        }
        rec.generation = self.reported_generation.or_else(|| {
            let (first, last) = (self.first_data?, self.last_data?);
            (self.data_events >= 2).then(|| last.duration_since(first))
        });
        match self.outcome {
            Some(None) => rec.finish(200, None),
            Some(Some(kind)) => rec.finish(200, Some(kind)),
            // Dropped before the end: the client went away.
            None => rec.finish(499, Some("client_closed")),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The relay on its own: a scripted upstream stream, no HTTP.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::auth::Caller;
    use crate::proxy::Route;
    use crate::routing::breaker::BreakerConfig;

    async fn state(dir: &tempfile::TempDir) -> Arc<crate::AppState> {
        let db = format!("sqlite://{}/t.db", dir.path().display());
        crate::AppState::new(crate::Config::new(&db, "127.0.0.1:0"))
            .await
            .unwrap()
    }

    fn relay(
        state: &Arc<crate::AppState>,
        id: &str,
        chunks: Vec<Result<&'static str, &'static str>>,
        filter_usage: bool,
    ) -> Relay {
        let ts = Arc::new(TargetState::new(BreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(1),
        }));
        let upstream = futures_util::stream::iter(chunks.into_iter().map(|c| {
            c.map(|s| Bytes::from_static(s.as_bytes()))
                .map_err(str::to_owned)
        }));
        Relay {
            rec: Some(Record::new(
                state,
                Route::Chat,
                id.into(),
                Caller::Anonymous,
            )),
            upstream: Box::pin(upstream),
            framer: frames::Framer::new(contract::sse::DEFAULT_MAX_LINE),
            between_tokens: None,
            filter_usage,
            parse: true,
            out: VecDeque::new(),
            sent_bytes: 0,
            done: false,
            outcome: None,
            idle: Duration::from_secs(60),
            deadline: Instant::now() + Duration::from_secs(60),
            _guard: ts.start(),
            ts,
            first_data: None,
            last_data: None,
            data_events: 0,
            reported_generation: None,
        }
    }

    async fn drain(r: &mut Relay) -> String {
        let mut out = String::new();
        while let Some(c) = r.next_chunk().await {
            out.push_str(std::str::from_utf8(&c).unwrap());
        }
        out
    }

    /// The logged rows: (request id, status, error type, completion tokens).
    async fn rows(state: &crate::AppState) -> Vec<(String, u16, Option<String>, Option<u64>)> {
        state.log.close().await;
        docsdb::request_log::recent(&state.db, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.request_id, r.status, r.error_type, r.completion_tokens))
            .collect()
    }

    const TEXT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn usage_of(json: &[u8]) -> Option<UsageSeen> {
        super::usage_of(json, &crate::rewrite::scan(json).ok()?)
    }

    #[test]
    fn usage_is_read_from_the_answer_in_either_naming() {
        let chat = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {} b"}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}, "timings": {"predicted_ms": 250.0}}"#;
        let u = usage_of(chat).unwrap();
        assert_eq!((u.prompt, u.completion), (Some(7), Some(3)));
        assert_eq!(u.generation, Some(Duration::from_millis(250)));
        let messages = br#"{"type":"message","usage":{"input_tokens":12,"output_tokens":4}}"#;
        let u = usage_of(messages).unwrap();
        assert_eq!(
            (u.prompt, u.completion, u.generation),
            (Some(12), Some(4), None)
        );
        assert!(usage_of(br#"{"text":"no usage"}"#).is_none());
        assert!(usage_of(b"plain text").is_none());
    }

    #[tokio::test]
    async fn usage_the_client_did_not_ask_for_is_hidden_but_counted() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(&dir).await;
        let mut r = relay(
            &st,
            "hidden",
            vec![Ok(TEXT), Ok(TEXT), Ok(USAGE), Ok(DONE)],
            true,
        );
        let out = drain(&mut r).await;
        assert_eq!(out.matches("\"Hi\"").count(), 2);
        assert!(!out.contains("usage"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        drop(r);
        // Asked for (no filter), it passes byte for byte.
        let mut r = relay(&st, "shown", vec![Ok(TEXT), Ok(USAGE), Ok(DONE)], false);
        assert_eq!(drain(&mut r).await, format!("{TEXT}{USAGE}{DONE}"));
        drop(r);
        let got = rows(&st).await;
        assert_eq!(got[0], ("hidden".into(), 200, None, Some(2)));
        assert_eq!(got[1], ("shown".into(), 200, None, Some(2)));
    }

    #[tokio::test]
    async fn a_failing_upstream_ends_with_an_error_event_that_names_no_backend() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(&dir).await;
        let mut r = relay(
            &st,
            "broken",
            vec![Ok(TEXT), Err("connection reset by 10.0.0.7:8080")],
            true,
        );
        let out = drain(&mut r).await;
        assert!(out.starts_with(TEXT), "{out}");
        let last = out.trim_end().rsplit("\n\n").next().unwrap();
        let v: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
        assert_eq!(v["error"]["code"], "upstream_stream_error");
        assert!(!out.contains("10.0.0.7"), "{out}");
        drop(r);
        let got = rows(&st).await;
        assert_eq!(got[0].2.as_deref(), Some("upstream_stream_error"));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_is_logged_as_closed() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(&dir).await;
        let mut r = relay(&st, "gone", vec![Ok(TEXT), Ok(TEXT), Ok(DONE)], true);
        assert!(r.next_chunk().await.is_some());
        drop(r);
        let got = rows(&st).await;
        assert_eq!(got[0].0, "gone");
        assert_eq!(got[0].1, 499);
        assert_eq!(got[0].2.as_deref(), Some("client_closed"));
    }
}
