//! One upstream attempt: send, wait for the first byte (with patience for a loading or
//! queued backend), and sort the answer into one that can go to the client or a failure.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use bytes::Bytes;

use crate::h1::Failure;
use crate::patience::{self, Watch};
use crate::state::AppState;
use crate::table::Target;
use docsdb::spec::Api;

use super::Route;

/// An upstream answer that can go to the client.
pub(super) struct Upstream {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    /// Non-streamed: the whole body. Streamed: the first chunk.
    pub(super) first: Bytes,
    /// Streamed: the rest.
    pub(super) rest: Option<Answer>,
    pub(super) first_at: Instant,
}

pub(super) enum Attempt {
    Answered(Box<Upstream>),
    Failed {
        reason: String,
        retry_same: bool,
        timeout: bool,
        /// The backend said it is busy (queue full, or the request still queued).
        busy: bool,
        /// The backend is loading its model.
        loading: bool,
        /// The backend said the prompt does not fit its context (its words): not the
        /// target's failure, the next target may be larger.
        context: Option<String>,
    },
}

pub(super) fn remaining(deadline: Instant, limit: Duration) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .min(limit)
}

/// What one attempt sends (its body goes separately: a stream is sent once).
pub(super) struct Sent<'a> {
    pub(super) route: Route,
    pub(super) request_id: &'a str,
    pub(super) client_headers: &'a HeaderMap,
    pub(super) content_type: &'a HeaderValue,
    pub(super) stream: bool,
    pub(super) started: Instant,
    pub(super) priority: Option<&'a HeaderValue>,
    /// The W3C trace context the backend is sent.
    pub(super) traceparent: Option<&'a HeaderValue>,
}

/// The W3C trace context headers.
pub const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The largest error body read to tell "loading" or "busy" from other failures.
pub(super) const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Anthropic's API version header, sent to Anthropic endpoints when the client sent none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

pub(super) async fn attempt(
    state: &AppState,
    target: &Target,
    s: &Sent<'_>,
    body: Outgoing,
) -> Attempt {
    let t = &target.timeouts;
    let deadline = s.started + t.total;
    let mut watch = Watch::new(state, target, s.request_id, s.started);
    let mut res = match send(state, target, s, body, &mut watch).await {
        Err(gave_up) => return Attempt::gave_up(gave_up),
        Ok(Err(e)) => {
            // A refused connection (a restarting backend) is worth another try on the same
            // target; anything else moves on to the next one.
            return Attempt::Failed {
                reason: format!("request failed: {}", e.message),
                retry_same: e.connect,
                timeout: e.timeout,
                busy: false,
                loading: false,
                context: None,
            };
        }
        Ok(Ok(r)) => r,
    };
    let status = res.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return unavailable(res, t.idle).await;
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Attempt::failed(format!("upstream answered {status}"), false);
    }
    let headers = res.take_headers();
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status.is_success() && ((s.stream && is_sse) || s.route.streams_any_answer()) {
        // Wait for the first chunk before committing: until then a failure can still fall back.
        let first = match watch.wait(res.chunk()).await {
            Err(gave_up) => return Attempt::gave_up(gave_up),
            Ok(Err(e)) => {
                return Attempt::failed(format!("waiting for the first stream chunk: {e}"), false);
            }
            Ok(Ok(None)) => return Attempt::failed("stream ended before its first chunk", false),
            Ok(Ok(Some(c))) => c,
        };
        return Attempt::Answered(Box::new(Upstream {
            status,
            headers,
            first,
            rest: Some(res),
            first_at: Instant::now(),
        }));
    }
    // Non-streamed: read it all, within the limits.
    let max = state.config.max_response;
    let first = match watch.wait(res.chunk()).await {
        Err(gave_up) => return Attempt::gave_up(gave_up),
        Ok(Err(e)) => return Attempt::failed(format!("reading the answer: {e}"), false),
        Ok(Ok(c)) => c,
    };
    let first_at = Instant::now();
    // An answer that came in one piece is kept as it came; only a longer one is copied.
    let mut whole = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    let mut next = first;
    while let Some(c) = next {
        let so_far = joined.as_ref().map_or(whole.len(), Vec::len);
        if so_far + c.len() > max as usize {
            return Attempt::failed(format!("the answer is larger than {max} bytes"), false);
        }
        if so_far == 0 {
            whole = c;
        } else {
            joined
                .get_or_insert_with(|| whole.to_vec())
                .extend_from_slice(&c);
        }
        next = match read_chunk(&mut res, remaining(deadline, t.idle), "reading the answer").await {
            Err(failed) => return failed,
            Ok(c) => c,
        };
    }
    let buf = joined.map_or(whole, Bytes::from);
    if super::context::is_context_error(status.as_u16(), &buf) {
        let said = super::context::message_of(&buf);
        return Attempt::Failed {
            reason: format!("the prompt does not fit the target's context ({status}: {said})"),
            retry_same: false,
            timeout: false,
            busy: false,
            loading: false,
            context: Some(said),
        };
    }
    Attempt::Answered(Box::new(Upstream {
        status,
        headers,
        first: buf,
        rest: None,
        first_at,
    }))
}

/// Sends the request and waits for the answer's head: by the lean client to a plain-HTTP
/// upstream, else by the general one.
async fn send(
    state: &AppState,
    target: &Target,
    s: &Sent<'_>,
    body: Outgoing,
    watch: &mut Watch<'_>,
) -> Result<Result<Answer, Failure>, patience::GaveUp> {
    let path = s.route.path(target);
    let headers = request_headers(target, s);
    let connect = target.timeouts.connect;
    match (&target.origin, body) {
        (Some(origin), Outgoing::Bytes(bytes)) => {
            let send = state.h1.send(origin, path, &headers, bytes, connect);
            Ok(watch.wait(send).await?.map(Answer::Lean))
        }
        (_, body) => {
            let Some(url) = target.url(path) else {
                return Ok(Err(Failure::protocol(format!(
                    "no upstream URL for {path}"
                ))));
            };
            let mut req = state.client(connect).post(url).body(match body {
                Outgoing::Bytes(b) => reqwest::Body::from(b),
                Outgoing::Stream(b) => b,
            });
            for (name, value) in headers {
                req = req.header(name, value);
            }
            Ok(watch
                .wait(req.send())
                .await?
                .map(Answer::General)
                .map_err(|e| Failure {
                    connect: e.is_connect(),
                    timeout: e.is_timeout(),
                    message: chain(&e),
                }))
        }
    }
}

/// A 503: loading (llama-server's "Loading model"), busy (our engines' `server_busy`), or
/// down.
pub(super) async fn unavailable(mut res: Answer, idle: Duration) -> Attempt {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(idle.min(Duration::from_secs(5)), res.chunk()).await {
            Ok(Ok(Some(c))) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let loading = contract::engine::is_loading_body(&body);
    let busy = serde_json::from_slice::<contract::ApiError>(&body)
        .is_ok_and(|e| e.error.code.as_deref() == Some("server_busy"));
    let what = if loading {
        "the model is loading"
    } else if busy {
        "the backend is busy"
    } else {
        "unavailable"
    };
    Attempt::Failed {
        reason: format!("upstream answered 503 ({what})"),
        retry_same: false,
        timeout: false,
        busy,
        loading,
        context: None,
    }
}

impl Attempt {
    /// A failure that is not worth retrying on the same target.
    pub(super) fn failed(reason: impl Into<String>, timeout: bool) -> Self {
        Attempt::Failed {
            reason: reason.into(),
            retry_same: false,
            timeout,
            busy: false,
            loading: false,
            context: None,
        }
    }

    /// The first-byte wait ended without an answer.
    pub(super) fn gave_up(g: patience::GaveUp) -> Self {
        Attempt::Failed {
            reason: g.reason,
            retry_same: false,
            timeout: true,
            busy: g.was_queued,
            loading: false,
            context: None,
        }
    }
}

/// The next body chunk within `wait`; a timeout or a read error is a failed attempt.
pub(super) async fn read_chunk(
    res: &mut Answer,
    wait: Duration,
    what: &str,
) -> Result<Option<Bytes>, Attempt> {
    match tokio::time::timeout(wait, res.chunk()).await {
        Err(_) => Err(Attempt::failed(format!("{what}: timed out"), true)),
        Ok(Err(e)) => Err(Attempt::failed(format!("{what}: {e}"), false)),
        Ok(Ok(c)) => Ok(c),
    }
}

/// What an attempt sends: a JSON body (by the lean client to a plain-HTTP upstream), or an
/// upload streamed once.
pub(super) enum Outgoing {
    Bytes(Bytes),
    Stream(reqwest::Body),
}

/// An upstream answer, from either client.
pub(super) enum Answer {
    /// The lean HTTP/1.1 client's (plain-HTTP upstreams).
    Lean(crate::h1::Response),
    /// The general client's (TLS, uploads, a proxy).
    General(reqwest::Response),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Lean(r) => r.status,
            Answer::General(r) => r.status(),
        }
    }

    fn take_headers(&mut self) -> HeaderMap {
        match self {
            Answer::Lean(r) => std::mem::take(&mut r.headers),
            Answer::General(r) => std::mem::take(r.headers_mut()),
        }
    }

    /// The next piece of the body; `None` at its end; an error is its description.
    pub(super) async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Answer::Lean(r) => r.chunk().await.map_err(|e| e.message),
            Answer::General(r) => r.chunk().await.map_err(|e| chain(&e)),
        }
    }

    /// The rest of the body as a stream.
    pub(super) fn into_stream(
        self,
    ) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, String>> + Send>> {
        Box::pin(futures_util::stream::unfold(self, |mut a| async move {
            match a.chunk().await {
                Ok(Some(c)) => Some((Ok(c), a)),
                Ok(None) => None,
                Err(e) => Some((Err(e), a)),
            }
        }))
    }
}

/// The headers an attempt sends besides its body's length (and the lean client's `host`).
fn request_headers(target: &Target, s: &Sent<'_>) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = Vec::with_capacity(8);
    h.push((header::CONTENT_TYPE, s.content_type.clone()));
    if let Ok(id) = HeaderValue::from_str(s.request_id) {
        h.push((HeaderName::from_static("x-request-id"), id));
    }
    if let Some(accept) = s.client_headers.get(header::ACCEPT) {
        h.push((header::ACCEPT, accept.clone()));
    }
    // The OptiLLM proxy's mark on its own calls goes on, so that a handle routed back to it
    // is refused there instead of looping.
    if let Some(hop) = s.client_headers.get(contract::optillm::HOP_HEADER) {
        h.push((
            HeaderName::from_static(contract::optillm::HOP_HEADER),
            hop.clone(),
        ));
    }
    if target.api == Api::Anthropic {
        if let Some(key) = &target.auth {
            h.push((HeaderName::from_static("x-api-key"), key.clone()));
        }
        let version = s
            .client_headers
            .get("anthropic-version")
            .cloned()
            .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION));
        h.push((HeaderName::from_static("anthropic-version"), version));
        if let Some(beta) = s.client_headers.get("anthropic-beta") {
            h.push((HeaderName::from_static("anthropic-beta"), beta.clone()));
        }
    } else if let Some(auth) = &target.auth {
        h.push((header::AUTHORIZATION, auth.clone()));
    }
    if let Some(tp) = s.traceparent {
        h.push((HeaderName::from_static(TRACEPARENT), tp.clone()));
        if let Some(ts) = s.client_headers.get(TRACESTATE) {
            h.push((HeaderName::from_static(TRACESTATE), ts.clone()));
        }
    }
    if let Some(p) = s.priority {
        h.push((
            HeaderName::from_static(contract::engine::PRIORITY_HEADER),
            p.clone(),
        ));
    }
    h
}

/// An error with its causes: reqwest's own message hides why a request failed.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
