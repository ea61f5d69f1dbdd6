//! Forwarding one request: pick targets, try them in order (retrying and falling back only
//! while nothing has reached the client), then pass the answer through — buffered for plain
//! JSON, chunk by chunk for SSE — and log it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use contract::sse::{SseDecoder, encode};
use docsdb::request_log::RequestLogRow;
use futures_util::StreamExt;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{Error, Unavailable};
use crate::metrics::{
    AttemptLabels, ErrorLabels, HandleLabels, RequestLabels, RouteLabels, TargetLabels, TokenLabels,
};
use crate::patience::{self, Watch};
use crate::rewrite::{self, Edits};
use crate::routing::breaker::Permit;
use crate::routing::strategy::{self, Candidate};
use crate::routing::{InFlight, TargetState};
use crate::state::AppState;
use crate::table::{Handle, Target};

/// The OpenAI endpoints the gateway forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Chat => "/chat/completions",
            Route::Completions => "/completions",
            Route::Embeddings => "/embeddings",
        }
    }
}

/// What one request did, for the log and the metrics.
struct Record {
    state: Arc<AppState>,
    route: Route,
    request_id: String,
    started: Instant,
    started_ms: i64,
    caller: Caller,
    handle: Option<String>,
    target: Option<Arc<Target>>,
    attempts: u32,
    streamed: bool,
    ttft: Option<Duration>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    /// Measured time spent generating the completion tokens.
    generation: Option<Duration>,
}

impl Record {
    fn new(state: &Arc<AppState>, route: Route, request_id: String, caller: Caller) -> Self {
        Record {
            state: state.clone(),
            route,
            request_id,
            started: Instant::now(),
            started_ms: docsdb::now_ms(),
            caller,
            handle: None,
            target: None,
            attempts: 0,
            streamed: false,
            ttft: None,
            prompt_tokens: None,
            completion_tokens: None,
            generation: None,
        }
    }

    fn finish(&mut self, status: u16, error: Option<&str>) {
        let handle = self.handle.clone().unwrap_or_default();
        let m = &self.state.metrics;
        let elapsed = self.started.elapsed();
        m.requests
            .get_or_create(&RequestLabels {
                route: self.route.name().into(),
                handle: handle.clone(),
                status: status.to_string(),
            })
            .inc();
        m.duration
            .get_or_create(&RouteLabels {
                route: self.route.name().into(),
                handle: handle.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            m.errors
                .get_or_create(&ErrorLabels {
                    route: self.route.name().into(),
                    handle: handle.clone(),
                    kind: kind.into(),
                })
                .inc();
        }
        if let Some(t) = &self.target {
            if let Some(ttft) = self.ttft {
                m.ttft
                    .get_or_create(&TargetLabels {
                        handle: handle.clone(),
                        target: t.key.clone(),
                    })
                    .observe(ttft.as_secs_f64());
            }
            for (kind, n) in [
                ("prompt", self.prompt_tokens),
                ("completion", self.completion_tokens),
            ] {
                if let Some(n) = n {
                    m.tokens
                        .get_or_create(&TokenLabels {
                            handle: handle.clone(),
                            target: t.key.clone(),
                            kind: kind.into(),
                        })
                        .inc_by(n);
                }
            }
        }
        let tokens = self.prompt_tokens.unwrap_or(0) + self.completion_tokens.unwrap_or(0);
        // Only subjects with a token limit keep a window.
        if let Caller::Key(k) = &self.caller {
            if k.tpm.is_some() {
                self.state
                    .limiter
                    .add_tokens(&k.name, tokens, docsdb::now_ms() / 1000);
            }
            if k.token_budget.is_some() {
                self.state.add_spent(k.id, tokens);
            }
        }
        if let Some(t) = self.target.as_ref().filter(|t| t.tpm.is_some()) {
            self.state
                .limiter
                .add_tokens(&t.key, tokens, docsdb::now_ms() / 1000);
        }
        self.state.log(RequestLogRow {
            request_id: self.request_id.clone(),
            started_at_ms: self.started_ms,
            key_name: self.caller.log_name(),
            route: self.route.name().into(),
            handle: self.handle.clone(),
            target: self.target.as_ref().map(|t| t.endpoint.clone()),
            upstream_model: self.target.as_ref().map(|t| t.upstream_model.clone()),
            status,
            error_type: error.map(str::to_owned),
            attempts: self.attempts,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            ttft_ms: self.ttft.map(|d| d.as_secs_f64() * 1000.0),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            streamed: self.streamed,
            // A rate needs a span and at least two tokens in it.
            generation_ms: self
                .generation
                .filter(|g| !g.is_zero() && self.completion_tokens.is_some_and(|n| n > 1))
                .map(|g| g.as_secs_f64() * 1000.0),
        });
    }

    fn fail(mut self, err: Error) -> Response {
        let status = err.to_api().status;
        self.finish(status, Some(err.kind()));
        err.into_response()
    }
}

/// Forwards one request. `body` is the client's JSON, unparsed.
pub async fn forward(
    state: Arc<AppState>,
    route: Route,
    caller: Caller,
    request_id: String,
    client_headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut rec = Record::new(&state, route, request_id, caller);
    let Ok(_permit) = state.concurrency.clone().try_acquire_owned() else {
        return rec.fail(Error::Overloaded);
    };
    let scanned = match rewrite::scan(&body) {
        Ok(s) => s,
        Err(e) => return rec.fail(Error::BadRequest(format!("invalid JSON body: {e}"))),
    };
    let model: Option<String> = scanned
        .get(&body, "model")
        .and_then(|v| serde_json::from_slice(v).ok());
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return rec.fail(Error::BadRequest(
            "you must provide a `model` (a handle name)".into(),
        ));
    };
    rec.handle = Some(model.clone());
    let stream =
        route != Route::Embeddings && scanned.get(&body, "stream").is_some_and(|v| v == b"true");
    rec.streamed = stream;
    let client_wants_usage = scanned
        .get(&body, "stream_options")
        .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        .is_some_and(|v| v["include_usage"] == Value::Bool(true));

    let table = state.table.load_full();
    let handle = match table.handles.get(&model) {
        Some(h) if rec.caller.allows(&model) => h.clone(),
        _ => return rec.fail(Error::UnknownHandle(model)),
    };
    if let Err(e) = admit_key(&state, &rec.caller) {
        return rec.fail(e);
    }
    let priority = match crate::priority::from_header(client_headers) {
        Ok(client) => crate::priority::choose(
            client,
            (route == Route::Chat)
                .then(|| scanned.get(&body, "messages"))
                .flatten(),
        ),
        Err(e) => return rec.fail(Error::BadRequest(e)),
    };
    let priority = priority.map(|p| p.header_value());
    let _in_flight = HandleGauge::new(&state, &handle.name);

    // Try targets in strategy order.
    // Each target's live state, looked up once per request.
    let states: Vec<Arc<TargetState>> = handle
        .targets
        .iter()
        .map(|t| state.target_state(&t.key))
        .collect();
    let order = order_targets(&handle, &states);
    let mut outcome = Outcome::default();
    for idx in order {
        let target = handle.targets[idx].clone();
        let ts = states[idx].clone();
        let permit = ts.permit(Instant::now());
        if permit == Permit::Rejected {
            tracing::debug!(target = %target.key, "circuit open; skipped");
            continue;
        }
        if state
            .limiter
            .admit(&target.key, target.rpm, target.tpm, docsdb::now_ms() / 1000)
            .is_err()
        {
            tracing::debug!(target = %target.key, "target rate limit reached; skipped");
            continue;
        }
        let edits = Edits {
            model: Some(&target.upstream_model),
            defaults: target.params.as_ref(),
            include_usage: stream && !client_wants_usage,
        };
        let upstream_body = Bytes::from(rewrite::rewrite(&body, &scanned, &edits));
        let mut attempt_on_target = 0;
        loop {
            rec.attempts += 1;
            let guard = ts.start();
            let sent = Sent {
                route,
                request_id: &rec.request_id,
                client_headers,
                body: upstream_body.clone(),
                stream,
                started: rec.started,
                priority: priority.as_ref(),
            };
            match attempt(&state, &target, &sent).await {
                Attempt::Answered(up) => {
                    ts.report(true, Instant::now());
                    count_attempt(&state, &handle, &target, "ok");
                    rec.target = Some(target.clone());
                    return respond(rec, *up, ts, guard, !client_wants_usage && stream).await;
                }
                Attempt::Failed { loading: true, .. }
                    if patience::loading_retry(
                        rec.started,
                        Instant::now(),
                        state.config.loading_wait,
                        rec.started + target.timeouts.total,
                    )
                    .is_some() =>
                {
                    // Starting, not failing: no breaker report, no attempt counted.
                    rec.attempts -= 1;
                    outcome.loading = true;
                    drop(guard);
                    tracing::debug!(request_id = %rec.request_id, target = %target.key, "the model is loading; waiting");
                    tokio::time::sleep(patience::LOADING_POLL).await;
                }
                Attempt::Failed {
                    reason,
                    retry_same,
                    timeout,
                    busy,
                    loading,
                } => {
                    ts.report(false, Instant::now());
                    count_attempt(
                        &state,
                        &handle,
                        &target,
                        if timeout { "timeout" } else { "error" },
                    );
                    outcome.any_tried = true;
                    outcome.timed_out &= timeout;
                    outcome.loading &= loading;
                    if busy {
                        outcome.busy = Some(target.clone());
                    }
                    tracing::warn!(request_id = %rec.request_id, handle = %handle.name, target = %target.key, %reason, "attempt failed");
                    rec.target = Some(target.clone());
                    if !(retry_same && attempt_on_target < state.config.retries)
                        || permit == Permit::Probe
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50 << attempt_on_target.min(4))).await;
                    attempt_on_target += 1;
                }
            }
        }
    }
    let why = outcome.why(&state).await;
    let attempts = rec.attempts;
    rec.fail(Error::AllTargetsFailed {
        handle: handle.name.clone(),
        attempts,
        why,
    })
}

/// What the failed attempts of one request had in common.
struct Outcome {
    any_tried: bool,
    /// Every attempt timed out.
    timed_out: bool,
    /// Every attempt found the model loading.
    loading: bool,
    /// The last target that said it was busy.
    busy: Option<Arc<Target>>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            any_tried: false,
            timed_out: true,
            loading: false,
            busy: None,
        }
    }
}

impl Outcome {
    async fn why(self, state: &AppState) -> Unavailable {
        if let Some(t) = &self.busy {
            let queue = patience::ask_queue(state, t).await.map(|q| q.describe());
            return Unavailable::Busy {
                queue,
                timed_out: self.timed_out,
            };
        }
        if self.loading {
            Unavailable::Loading
        } else if self.timed_out && self.any_tried {
            Unavailable::TimedOut
        } else {
            Unavailable::Failing
        }
    }
}

/// Answers a request refused before forwarding (bad key, bad body), and logs it.
pub fn reject(
    state: &Arc<AppState>,
    route: Route,
    request_id: String,
    caller: Option<Caller>,
    err: Error,
) -> Response {
    Record::new(
        state,
        route,
        request_id,
        caller.unwrap_or(Caller::Anonymous),
    )
    .fail(err)
}

/// Like [`reject`], for errors already in wire form (a body over the limit, ...).
pub fn reject_api(
    state: &Arc<AppState>,
    route: Route,
    request_id: String,
    caller: Option<Caller>,
    api: contract::ApiError,
) -> Response {
    let mut rec = Record::new(
        state,
        route,
        request_id,
        caller.unwrap_or(Caller::Anonymous),
    );
    rec.finish(
        api.status,
        Some(if api.status == 413 {
            "too_large"
        } else {
            "bad_request"
        }),
    );
    let mut res = api.into_response();
    res.extensions_mut().insert(Logged);
    res
}

/// Marks a response whose request is already in the log.
#[derive(Debug, Clone, Copy)]
struct Logged;

/// Logs requests the shared layers refused before routing (a body over the size limit is
/// refused from its `Content-Length`, unread), so that every client request has its row.
pub async fn log_edge_rejections(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().trim_start_matches("/v1").to_owned();
    let res = next.run(req).await;
    if res.status() == StatusCode::PAYLOAD_TOO_LARGE && res.extensions().get::<Logged>().is_none() {
        let route = match path.as_str() {
            "/chat/completions" => Some(Route::Chat),
            "/completions" => Some(Route::Completions),
            "/embeddings" => Some(Route::Embeddings),
            _ => None,
        };
        if let Some(route) = route {
            let rid = res
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Record::new(&state, route, rid, Caller::Anonymous).finish(413, Some("too_large"));
        }
    }
    res
}

/// Applies a key's budget and rate limits, counting the request.
pub(crate) fn admit_key(state: &AppState, caller: &Caller) -> Result<(), Error> {
    let Caller::Key(k) = caller else {
        return Ok(());
    };
    if let Some(budget) = k.token_budget
        && state.spent(k.id) >= budget.max(0) as u64
    {
        return Err(Error::BudgetSpent { budget });
    }
    state
        .limiter
        .admit(&k.name, k.rpm, k.tpm, docsdb::now_ms() / 1000)
        .map_err(|r| match r {
            crate::limits::Refusal::Rpm {
                limit,
                retry_after_s,
            } => Error::RateLimited {
                what: "request",
                limit,
                retry_after_s,
            },
            crate::limits::Refusal::Tpm {
                limit,
                retry_after_s,
            } => Error::RateLimited {
                what: "token",
                limit,
                retry_after_s,
            },
        })
}

fn order_targets(handle: &Handle, states: &[Arc<TargetState>]) -> Vec<usize> {
    let cands: Vec<Candidate> = handle
        .targets
        .iter()
        .zip(states)
        .map(|(t, s)| Candidate {
            priority: t.priority,
            weight: t.weight,
            in_flight: s.in_flight(),
            ttft_us: s.ttft_us(),
        })
        .collect();
    strategy::order(handle.strategy, &cands, fastrand::f64)
}

fn count_attempt(state: &AppState, handle: &Handle, target: &Target, outcome: &str) {
    state
        .metrics
        .attempts
        .get_or_create(&AttemptLabels {
            handle: handle.name.clone(),
            target: target.key.clone(),
            outcome: outcome.into(),
        })
        .inc();
}

/// Counts the request in the per-handle in-flight gauge while alive.
struct HandleGauge {
    state: Arc<AppState>,
    handle: String,
}

impl HandleGauge {
    fn new(state: &Arc<AppState>, handle: &str) -> Self {
        state
            .metrics
            .in_flight
            .get_or_create(&HandleLabels {
                handle: handle.into(),
            })
            .inc();
        HandleGauge {
            state: state.clone(),
            handle: handle.into(),
        }
    }
}

impl Drop for HandleGauge {
    fn drop(&mut self) {
        self.state
            .metrics
            .in_flight
            .get_or_create(&HandleLabels {
                handle: self.handle.clone(),
            })
            .dec();
    }
}

/// An upstream answer that can go to the client.
struct Upstream {
    status: StatusCode,
    headers: HeaderMap,
    /// Non-streamed: the whole body. Streamed: the first chunk.
    first: Bytes,
    /// Streamed: the rest.
    rest: Option<reqwest::Response>,
    first_at: Instant,
}

enum Attempt {
    Answered(Box<Upstream>),
    Failed {
        reason: String,
        retry_same: bool,
        timeout: bool,
        /// The backend said it is busy (queue full, or the request still queued).
        busy: bool,
        /// The backend is loading its model.
        loading: bool,
    },
}

fn remaining(deadline: Instant, limit: Duration) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .min(limit)
}

/// What one attempt sends.
struct Sent<'a> {
    route: Route,
    request_id: &'a str,
    client_headers: &'a HeaderMap,
    body: Bytes,
    stream: bool,
    started: Instant,
    priority: Option<&'a HeaderValue>,
}

/// The largest error body read to tell "loading" or "busy" from other failures.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

async fn attempt(state: &AppState, target: &Target, s: &Sent<'_>) -> Attempt {
    let t = &target.timeouts;
    let deadline = s.started + t.total;
    let mut watch = Watch::new(state, target, s.request_id, s.started);
    let url = format!("{}{}", target.base_url, s.route.path());
    let mut req = state
        .client(t.connect)
        .post(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-request-id", s.request_id)
        .body(s.body.clone());
    if let Some(accept) = s.client_headers.get(header::ACCEPT) {
        req = req.header(header::ACCEPT, accept);
    }
    if let Some(auth) = &target.auth {
        req = req.header(header::AUTHORIZATION, auth.clone());
    }
    if let Some(p) = s.priority {
        req = req.header(contract::engine::PRIORITY_HEADER, p.clone());
    }
    let res = match watch.wait(req.send()).await {
        Err(gave_up) => return Attempt::gave_up(gave_up),
        Ok(Err(e)) => {
            // A refused connection (a restarting backend) is worth another try on the same
            // target; anything else moves on to the next one.
            return Attempt::Failed {
                reason: format!("request failed: {}", chain(&e)),
                retry_same: e.is_connect(),
                timeout: e.is_timeout(),
                busy: false,
                loading: false,
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
    let headers = res.headers().clone();
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut res = res;
    if s.stream && is_sse && status.is_success() {
        // Wait for the first chunk before committing: until then a failure can still fall back.
        let first = match watch.wait(res.chunk()).await {
            Err(gave_up) => return Attempt::gave_up(gave_up),
            Ok(Err(e)) => {
                return Attempt::failed(
                    format!("waiting for the first stream chunk: {}", chain(&e)),
                    false,
                );
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
    let mut buf = Vec::new();
    let first = match watch.wait(res.chunk()).await {
        Err(gave_up) => return Attempt::gave_up(gave_up),
        Ok(Err(e)) => return Attempt::failed(format!("reading the answer: {}", chain(&e)), false),
        Ok(Ok(c)) => c,
    };
    let first_at = Instant::now();
    let mut next = first;
    while let Some(c) = next {
        if buf.len() + c.len() > max as usize {
            return Attempt::failed(format!("the answer is larger than {max} bytes"), false);
        }
        buf.extend_from_slice(&c);
        next = match read_chunk(&mut res, remaining(deadline, t.idle), "reading the answer").await {
            Err(failed) => return failed,
            Ok(c) => c,
        };
    }
    Attempt::Answered(Box::new(Upstream {
        status,
        headers,
        first: Bytes::from(buf),
        rest: None,
        first_at,
    }))
}

/// A 503: loading (llama-server's "Loading model"), busy (our engines' `server_busy`), or
/// down.
async fn unavailable(mut res: reqwest::Response, idle: Duration) -> Attempt {
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
    }
}

impl Attempt {
    /// A failure that is not worth retrying on the same target.
    fn failed(reason: impl Into<String>, timeout: bool) -> Self {
        Attempt::Failed {
            reason: reason.into(),
            retry_same: false,
            timeout,
            busy: false,
            loading: false,
        }
    }

    /// The first-byte wait ended without an answer.
    fn gave_up(g: patience::GaveUp) -> Self {
        Attempt::Failed {
            reason: g.reason,
            retry_same: false,
            timeout: true,
            busy: g.was_queued,
            loading: false,
        }
    }
}

/// The next body chunk within `wait`; a timeout or a read error is a failed attempt.
async fn read_chunk(
    res: &mut reqwest::Response,
    wait: Duration,
    what: &str,
) -> Result<Option<Bytes>, Attempt> {
    match tokio::time::timeout(wait, res.chunk()).await {
        Err(_) => Err(Attempt::failed(format!("{what}: timed out"), true)),
        Ok(Err(e)) => Err(Attempt::failed(format!("{what}: {}", chain(&e)), false)),
        Ok(Ok(c)) => Ok(c),
    }
}

/// An error with its causes: reqwest's own message hides why a request failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Copies the headers that describe the body.
fn response_headers(up: &HeaderMap, target: &Target, handle: &str, attempts: u32) -> HeaderMap {
    let mut h = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CACHE_CONTROL,
    ] {
        if let Some(v) = up.get(&name) {
            h.insert(name, v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(handle) {
        h.insert("x-homelab-handle", v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.endpoint) {
        h.insert("x-homelab-target", v);
    }
    h.insert("x-homelab-attempts", HeaderValue::from(attempts));
    h
}

async fn respond(
    mut rec: Record,
    up: Upstream,
    ts: Arc<TargetState>,
    guard: InFlight,
    filter_usage: bool,
) -> Response {
    let Some(target) = rec.target.clone() else {
        return rec.fail(Error::BadRequest("no target".into()));
    };
    let handle = rec.handle.clone().unwrap_or_default();
    let headers = response_headers(&up.headers, &target, &handle, rec.attempts);
    let encoded = up.headers.contains_key(header::CONTENT_ENCODING);
    let Some(rest) = up.rest else {
        let mut ttft = up.first_at.duration_since(rec.started);
        if !encoded && let Some(u) = usage_of(&up.first) {
            rec.prompt_tokens = u.prompt;
            rec.completion_tokens = u.completion;
            // With the backend's timings, the first token came before its generation time.
            if let Some(g) = u.generation {
                rec.generation = Some(g);
                ttft = ttft.saturating_sub(g);
            }
        }
        rec.ttft = Some(ttft);
        ts.observe_ttft(ttft.as_micros() as u64);
        drop(guard);
        let status = up.status.as_u16();
        let error = (status >= 400).then_some("upstream_client_error");
        rec.finish(status, error);
        let mut res = (up.status, up.first).into_response();
        res.headers_mut().extend(headers);
        return res;
    };
    if encoded {
        // Events cannot be read: the first chunk is the best time to first token there is.
        let ttft = up.first_at.duration_since(rec.started);
        rec.ttft = Some(ttft);
        ts.observe_ttft(ttft.as_micros() as u64);
    }
    let idle = target.timeouts.idle;
    let deadline = rec.started + target.timeouts.total;
    let mut relay = Relay {
        rec: Some(rec),
        upstream: Box::pin(rest.bytes_stream()),
        decoder: SseDecoder::new(),
        filter_usage: filter_usage && !encoded,
        parse: !encoded,
        out: VecDeque::new(),
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
    relay.take_chunk(up.first);
    let body = futures_util::stream::unfold(relay, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk), r))
    });
    let mut res = (up.status, Body::from_stream(body)).into_response();
    res.headers_mut().extend(headers);
    res
}

/// What an answer says about its size and speed.
struct UsageSeen {
    prompt: Option<u64>,
    completion: Option<u64>,
    /// The backend's own generation time (`timings.predicted_ms`, llama-server's).
    generation: Option<Duration>,
}

/// Generation time from a `timings` object, if it has a usable one.
fn generation_of(timings: Option<&contract::engine::Timings>) -> Option<Duration> {
    timings
        .map(|t| t.predicted_ms)
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
}

/// Prompt and completion tokens (and timings) from a JSON body with `usage`.
fn usage_of(json: &[u8]) -> Option<UsageSeen> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<contract::Usage>,
        #[serde(default)]
        timings: Option<contract::engine::Timings>,
    }
    let b = serde_json::from_slice::<WithUsage>(json).ok()?;
    let u = b.usage?;
    Some(UsageSeen {
        prompt: Some(u.prompt_tokens),
        completion: u.completion_tokens,
        generation: generation_of(b.timings.as_ref()),
    })
}

/// Passes an upstream SSE stream to the client and logs it when it ends — normally, on an
/// upstream failure, or when the client goes away (the relay is dropped). The time to first
/// token is the first data event's (comments a busy backend sends before do not count), and
/// the generation time is the backend's `timings`, else the span from the first data event
/// to the last.
struct Relay {
    rec: Option<Record>,
    upstream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    decoder: SseDecoder,
    /// We asked for usage the client did not: drop the usage-only event.
    filter_usage: bool,
    /// Decode events at all (not for compressed streams).
    parse: bool,
    out: VecDeque<Bytes>,
    done: bool,
    /// `Some(error kind)` once it ended badly; `Some(None)` once it ended well.
    outcome: Option<Option<&'static str>>,
    idle: Duration,
    deadline: Instant,
    ts: Arc<TargetState>,
    first_data: Option<Instant>,
    last_data: Option<Instant>,
    data_events: u64,
    /// From the backend's `timings`.
    reported_generation: Option<Duration>,
    _guard: InFlight,
}

impl Relay {
    fn take_chunk(&mut self, chunk: Bytes) {
        if !self.parse {
            self.out.push_back(chunk);
            return;
        }
        let events = match self.decoder.push(&chunk) {
            Ok(ev) => ev,
            Err(e) => {
                self.end_with_error("upstream_stream_error", &chain(&e));
                return;
            }
        };
        if !self.filter_usage {
            self.out.push_back(chunk);
        }
        for ev in events {
            if !ev.is_done() {
                self.saw_data();
            }
            let usage_only = self.note(&ev.data);
            if self.filter_usage && !usage_only {
                self.out.push_back(Bytes::from(encode(&ev)));
            }
        }
    }

    /// A data event arrived now: the first one is the time to first token.
    fn saw_data(&mut self) {
        let now = Instant::now();
        if self.first_data.is_none()
            && let Some(rec) = &mut self.rec
        {
            let ttft = now.duration_since(rec.started);
            rec.ttft = Some(ttft);
            self.ts.observe_ttft(ttft.as_micros() as u64);
        }
        self.first_data.get_or_insert(now);
        self.last_data = Some(now);
        self.data_events += 1;
    }

    /// Records usage, timings and upstream errors; returns whether the event carries only
    /// usage.
    fn note(&mut self, data: &str) -> bool {
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
        if let Some(u) = v.get("usage").filter(|u| !u.is_null())
            && let Some(rec) = &mut self.rec
        {
            rec.prompt_tokens = u["prompt_tokens"].as_u64();
            rec.completion_tokens = u["completion_tokens"].as_u64();
            return v["choices"].as_array().is_some_and(Vec::is_empty);
        }
        false
    }

    /// Ends the stream with an OpenAI error event. `detail` goes to the log only: it may name
    /// the backend.
    fn end_with_error(&mut self, kind: &'static str, detail: &str) {
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

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(c) = self.out.pop_front() {
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
                Ok(Some(Err(e))) => self.end_with_error("upstream_stream_error", &chain(&e)),
                Ok(Some(Ok(c))) => self.take_chunk(c),
                Ok(None) => {
                    if self.filter_usage
                        && let Some(ev) = self.decoder.finish()
                        && !self.note(&ev.data)
                    {
                        self.out.push_back(Bytes::from(encode(&ev)));
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
