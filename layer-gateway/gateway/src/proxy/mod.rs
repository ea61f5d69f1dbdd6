//! Forwarding one request: pick targets, try them in order (retrying and falling back only
//! while nothing has reached the client), then pass the answer through — buffered for plain
//! JSON, chunk by chunk for SSE — and log it.
//!
//! [`forward`] is the path; [`record`] accounts for the outcome (the one place that writes
//! request-log rows), [`attempt`] is one upstream attempt, [`decide`] says what follows a
//! failed attempt (a pure function), [`relay`] passes the answer on.

mod attempt;
mod decide;
mod record;
mod relay;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::Error;
use crate::metrics::{AttemptLabels, HandleLabels};
use crate::patience::{self};
use crate::rewrite::{self, Edits};
use crate::routing::TargetState;
use crate::routing::breaker::Permit;
use crate::routing::strategy::{self, Candidate};
use crate::state::AppState;
use crate::table::{Handle, Target};
use docsdb::spec::OverTools;

use attempt::{Attempt, Sent, attempt};
use decide::Next;
use record::{Outcome, Record};
pub(crate) use record::{SearchDone, log_search};
use relay::respond;

/// The endpoints the gateway forwards. `Messages` and `Responses` (Anthropic's and OpenAI's
/// newer APIs, translated) reach the targets as chat completions; their name keeps them
/// apart in the request log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
    Messages,
    Responses,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
            Route::Messages => "messages",
            Route::Responses => "responses",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Chat | Route::Messages | Route::Responses => "/chat/completions",
            Route::Completions => "/completions",
            Route::Embeddings => "/embeddings",
        }
    }

    /// Whether the targets get a chat completion.
    pub fn is_chat(self) -> bool {
        self.path() == "/chat/completions"
    }
}

/// What a target over its `max_tools_bytes` with `over_tools: drop` is sent without.
const TOOL_MEMBERS: [&str; 3] = ["tools", "tool_choice", "parallel_tool_calls"];

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
    rec.user = crate::auth::end_user(client_headers);
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
            route
                .is_chat()
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
    let tools_bytes = scanned.get(&body, "tools").map_or(0, <[u8]>::len);
    // Targets that would not take the request's tools, with their limits.
    let mut refused_tools: Vec<String> = Vec::new();
    for idx in order {
        let target = handle.targets[idx].clone();
        let over_tools = target
            .max_tools_bytes
            .filter(|&max| tools_bytes > max)
            .map(|max| (max, target.over_tools));
        if let Some((max, OverTools::Refuse)) = over_tools {
            tracing::debug!(target = %target.key, tools_bytes, max, "tools over the target's limit; skipped");
            refused_tools.push(format!("{} takes {max} bytes", target.key));
            continue;
        }
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
        let dropping = matches!(over_tools, Some((_, OverTools::Drop)));
        let edits = Edits {
            model: Some(&target.upstream_model),
            defaults: target.params.as_ref(),
            include_usage: stream && !client_wants_usage,
            remove: if dropping { &TOOL_MEMBERS } else { &[] },
        };
        let upstream_body = Bytes::from(rewrite::rewrite(&body, &scanned, &edits));
        rec.tools_dropped = dropping.then_some(tools_bytes);
        if dropping {
            tracing::debug!(request_id = %rec.request_id, target = %target.key, tools_bytes, "tools over the target's limit; sent without them");
        }
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
                Attempt::Failed {
                    reason,
                    retry_same,
                    timeout,
                    busy,
                    loading,
                } => {
                    let standing = decide::Standing {
                        loading_may_wait: patience::loading_retry(
                            rec.started,
                            Instant::now(),
                            state.config.loading_wait,
                            rec.started + target.timeouts.total,
                        )
                        .is_some(),
                        retries_done: attempt_on_target,
                        retries: state.config.retries,
                        probe: permit == Permit::Probe,
                    };
                    let next = decide::after_failure(
                        decide::Failure {
                            retry_same,
                            loading,
                        },
                        standing,
                    );
                    if next == Next::WaitForLoading {
                        // Starting, not failing: no breaker report, no attempt counted.
                        rec.attempts -= 1;
                        outcome.loading = true;
                        drop(guard);
                        tracing::debug!(request_id = %rec.request_id, target = %target.key, "the model is loading; waiting");
                        tokio::time::sleep(patience::LOADING_POLL).await;
                        continue;
                    }
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
                    let Next::RetrySame(backoff) = next else {
                        break;
                    };
                    tokio::time::sleep(backoff).await;
                    attempt_on_target += 1;
                }
            }
        }
    }
    // Only when every target refused the tools is that the answer; a target skipped for
    // another reason (circuit open, rate limit) is unavailable, not too small.
    if !refused_tools.is_empty() && refused_tools.len() == handle.targets.len() {
        return rec.fail(Error::ToolsTooLarge {
            handle: handle.name.clone(),
            bytes: tools_bytes,
            limits: refused_tools.join(", "),
        });
    }
    let why = outcome.why(&state).await;
    let attempts = rec.attempts;
    rec.fail(Error::AllTargetsFailed {
        handle: handle.name.clone(),
        attempts,
        why,
    })
}

/// Answers a request refused before forwarding (bad key, bad body), and logs it.
pub fn reject(
    state: &Arc<AppState>,
    route: Route,
    request_id: String,
    caller: Option<Caller>,
    headers: &HeaderMap,
    err: Error,
) -> Response {
    let mut rec = Record::new(
        state,
        route,
        request_id,
        caller.unwrap_or(Caller::Anonymous),
    );
    rec.user = crate::auth::end_user(headers);
    rec.fail(err)
}

/// Like [`reject`], for errors already in wire form (a body over the limit, ...).
pub fn reject_api(
    state: &Arc<AppState>,
    route: Route,
    request_id: String,
    caller: Option<Caller>,
    headers: &HeaderMap,
    api: contract::ApiError,
) -> Response {
    let mut rec = Record::new(
        state,
        route,
        request_id,
        caller.unwrap_or(Caller::Anonymous),
    );
    rec.user = crate::auth::end_user(headers);
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
            "/messages" | "/messages/count_tokens" => Some(Route::Messages),
            "/responses" => Some(Route::Responses),
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
