//! Forwarding one request: pick the targets that offer its API, try them in order (retrying
//! and falling back only while nothing has reached the client), then pass the answer through
//! — buffered for plain JSON, chunk by chunk for SSE and speech — and log it.
//!
//! [`forward`] is the path; [`record`] accounts for the outcome (the one place that writes
//! request-log rows), [`attempt`] is one upstream attempt, [`decide`] says what follows a
//! failed attempt (a pure function), [`relay`] passes the answer on.

mod attempt;
mod context;
mod decide;
mod frames;
mod record;
mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::Error;
use crate::metrics::{AttemptLabels, HandleLabels};
use crate::patience::{self};
use crate::rewrite::{self, Edits};
use crate::routing::TargetState;
use crate::routing::affinity;
use crate::routing::breaker::Permit;
use crate::routing::strategy::{self, Candidate};
use crate::state::AppState;
use crate::table::{Handle, Target};
use crate::upload::Upload;
use docsdb::spec::{Api, Offer, OverTools};

pub use attempt::TRACEPARENT;
use attempt::{Attempt, Outgoing, Sent, attempt};
use decide::Next;
use record::{Outcome, Record};
pub(crate) use record::{SearchDone, log_search};
use relay::respond;

/// The endpoints the gateway forwards. `Messages` and `Responses` (Anthropic's and OpenAI's
/// newer APIs, translated) reach the targets as chat completions — `Messages` natively on an
/// Anthropic endpoint; their name keeps them apart in the request log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
    Messages,
    Responses,
    Transcriptions,
    Translations,
    Speech,
    Images,
    Rerank,
}

/// Every upstream path a route may call (what [`Route::path`] answers), parsed per target
/// when the table loads.
pub const UPSTREAM_PATHS: [&str; 9] = [
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/messages",
    "/audio/transcriptions",
    "/audio/translations",
    "/audio/speech",
    "/images/generations",
    "/rerank",
];

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Chat => "chat",
            Route::Completions => "completions",
            Route::Embeddings => "embeddings",
            Route::Messages => "messages",
            Route::Responses => "responses",
            Route::Transcriptions => "transcriptions",
            Route::Translations => "translations",
            Route::Speech => "speech",
            Route::Images => "images",
            Route::Rerank => "rerank",
        }
    }

    /// The upstream path, on `target` (one of [`UPSTREAM_PATHS`]).
    fn path(self, target: &Target) -> &'static str {
        self.path_on(target.api)
    }

    /// The upstream path on an endpoint of flavour `api`.
    fn path_on(self, api: Api) -> &'static str {
        match self {
            Route::Messages if api == Api::Anthropic => "/messages",
            Route::Chat | Route::Messages | Route::Responses => "/chat/completions",
            Route::Completions => "/completions",
            Route::Embeddings => "/embeddings",
            Route::Transcriptions => "/audio/transcriptions",
            Route::Translations => "/audio/translations",
            Route::Speech => "/audio/speech",
            Route::Images => "/images/generations",
            Route::Rerank => "/rerank",
        }
    }

    /// The API a target must offer to be sent this route's requests.
    pub fn offer(self) -> Offer {
        match self {
            Route::Chat | Route::Messages | Route::Responses => Offer::Chat,
            Route::Completions => Offer::Completions,
            Route::Embeddings => Offer::Embeddings,
            Route::Transcriptions => Offer::Transcriptions,
            Route::Translations => Offer::Translations,
            Route::Speech => Offer::Speech,
            Route::Images => Offer::Images,
            Route::Rerank => Offer::Rerank,
        }
    }

    /// Whether `target` takes this route's requests: it offers the route's API (Messages on
    /// an Anthropic endpoint: Anthropic Messages).
    pub fn served_by(self, target: &Target) -> bool {
        let needs = if self.native_messages(target) {
            Offer::Messages
        } else {
            self.offer()
        };
        target.offers.contains(&needs)
    }

    /// Whether `target` gets the client's Anthropic request as it is.
    pub fn native_messages(self, target: &Target) -> bool {
        self == Route::Messages && target.api == Api::Anthropic
    }

    /// Whether the targets get a chat completion.
    pub fn is_chat(self) -> bool {
        self.offer() == Offer::Chat
    }

    /// Whether requests carry prompt tokens (and the log counts tokens).
    fn uses_tokens(self) -> bool {
        self.is_chat() || matches!(self, Route::Completions | Route::Embeddings)
    }

    /// Whether answers are passed on as they come, whatever their type (speech audio).
    fn streams_any_answer(self) -> bool {
        self == Route::Speech
    }

    /// Whether the client's `stream: true` makes an SSE answer.
    fn may_stream(self) -> bool {
        !matches!(
            self,
            Route::Embeddings | Route::Images | Route::Rerank | Route::Speech
        )
    }
}

/// Names the handle that answered when a prompt too large for the requested one went to its
/// `context_fallback`.
pub const CONTEXT_FALLBACK_HEADER: &str = "x-homelab-context-fallback";

/// What a target over its `max_tools_bytes` with `over_tools: drop` is sent without.
const TOOL_MEMBERS: [&str; 3] = ["tools", "tool_choice", "parallel_tool_calls"];

/// What a request sends its targets.
pub enum Payload {
    /// A JSON body, unparsed (`model` rewritten for each target).
    Json(Bytes),
    /// An Anthropic Messages request: as it is to Anthropic endpoints, its chat translation
    /// to the rest (or why it has none: built-in tools only Anthropic runs).
    Messages {
        native: Bytes,
        chat: Result<Bytes, String>,
    },
    /// A form upload, read up to its `model`, streamed once.
    Upload(Box<Upload>),
}

/// Marks an answer that came from an Anthropic endpoint as it is (not a chat completion).
#[derive(Debug, Clone, Copy)]
pub struct NativeMessages;

/// A JSON body and where its members are.
struct Json {
    body: Bytes,
    scanned: rewrite::Scanned,
}

impl Json {
    fn read(body: Bytes) -> Result<Self, Error> {
        let scanned = rewrite::scan(&body)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?;
        Ok(Json { body, scanned })
    }

    fn get(&self, key: &str) -> Option<&[u8]> {
        self.scanned.get(&self.body, key)
    }

    fn rewritten(&self, edits: &Edits<'_>) -> Bytes {
        Bytes::from(rewrite::rewrite(&self.body, &self.scanned, edits))
    }
}

/// A payload read for routing.
enum Sending {
    Json(Json),
    Messages {
        native: Json,
        chat: Result<Json, String>,
    },
    /// `None` once sent.
    Upload {
        upload: Option<Box<Upload>>,
        content_type: HeaderValue,
        read: Arc<AtomicU64>,
        over_limit: Arc<AtomicBool>,
    },
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Sending {
    fn read(payload: Payload) -> Result<Self, Error> {
        Ok(match payload {
            Payload::Json(b) => Sending::Json(Json::read(b)?),
            Payload::Messages { native, chat } => Sending::Messages {
                native: Json::read(native)?,
                chat: chat.and_then(|c| Json::read(c).map_err(|e| e.to_string())),
            },
            Payload::Upload(u) => Sending::Upload {
                content_type: HeaderValue::from_str(&u.content_type)
                    .map_err(|_| Error::BadRequest("invalid Content-Type".into()))?,
                read: u.bytes_read(),
                over_limit: u.over_limit(),
                upload: Some(u),
            },
        })
    }

    /// The JSON the gateway reads `model`, `stream`, `tools` and `messages` from; none for
    /// an upload.
    fn json(&self) -> Option<&Json> {
        match self {
            Sending::Json(j) | Sending::Messages { native: j, .. } => Some(j),
            Sending::Upload { .. } => None,
        }
    }

    /// Whether the stream's usage chunk goes to the client: it asked for it (the chat
    /// translation of a Messages request always does, for its own usage events).
    fn wants_usage(&self) -> bool {
        let asks = |j: &Json| {
            j.get("stream_options")
                .and_then(|v| serde_json::from_slice::<Value>(v).ok())
                .is_some_and(|v| v["include_usage"] == Value::Bool(true))
        };
        match self {
            Sending::Json(j) | Sending::Messages { chat: Ok(j), .. } => asks(j),
            Sending::Messages { chat: Err(_), .. } | Sending::Upload { .. } => false,
        }
    }

    /// Whether this request can go to `target` at all: a Messages request without a chat
    /// translation goes only to Anthropic endpoints.
    fn fits(&self, route: Route, target: &Target) -> bool {
        match self {
            Sending::Messages { chat: Err(_), .. } => route.native_messages(target),
            _ => true,
        }
    }

    /// Why no target fits, when the request itself is the reason.
    fn unfit(&self) -> Option<String> {
        match self {
            Sending::Messages { chat: Err(why), .. } => Some(why.clone()),
            _ => None,
        }
    }

    fn model(&self) -> Option<String> {
        match self {
            Sending::Upload { upload, .. } => upload.as_ref().map(|u| u.model.clone()),
            _ => self
                .json()
                .and_then(|j| j.get("model"))
                .and_then(|v| serde_json::from_slice(v).ok()),
        }
    }

    /// The body and its type for one attempt on `target`; `None` when an upload was already
    /// sent.
    fn body_for(
        &mut self,
        route: Route,
        target: &Target,
        edits: &Edits<'_>,
    ) -> Option<(Outgoing, HeaderValue)> {
        let bytes = |b: Bytes| Outgoing::Bytes(b);
        match self {
            Sending::Json(j) => Some((bytes(j.rewritten(edits)), JSON.clone())),
            Sending::Messages { native, .. } if route.native_messages(target) => {
                let edits = Edits {
                    include_usage: false,
                    ..*edits
                };
                Some((bytes(native.rewritten(&edits)), JSON.clone()))
            }
            Sending::Messages { chat: Ok(chat), .. } => {
                Some((bytes(chat.rewritten(edits)), JSON.clone()))
            }
            Sending::Messages { chat: Err(_), .. } => None,
            Sending::Upload {
                upload,
                content_type,
                ..
            } => upload.take().map(|u| {
                (
                    Outgoing::Stream(u.into_body(target.upstream_model.clone())),
                    content_type.clone(),
                )
            }),
        }
    }

    /// Bytes of the client's body.
    fn bytes(&self) -> u64 {
        match self {
            Sending::Json(j) => j.body.len() as u64,
            Sending::Messages { native, .. } => native.body.len() as u64,
            Sending::Upload { read, .. } => read.load(Ordering::Relaxed),
        }
    }
}

/// Forwards one request.
pub async fn forward(
    state: Arc<AppState>,
    route: Route,
    caller: Caller,
    request_id: String,
    client_headers: &HeaderMap,
    payload: Payload,
) -> Response {
    let mut rec = Record::new(&state, route, request_id, caller);
    rec.user = crate::auth::end_user(client_headers);
    rec.start_trace(client_headers);
    let Ok(_permit) = state.concurrency.clone().try_acquire_owned() else {
        return rec.fail(Error::Overloaded);
    };
    let mut sending = match Sending::read(payload) {
        Ok(s) => s,
        Err(e) => return rec.fail(e),
    };
    rec.request_bytes = Some(sending.bytes());
    let Some(model) = sending.model().filter(|m| !m.is_empty()) else {
        return rec.fail(Error::BadRequest(
            "you must provide a `model` (a handle name)".into(),
        ));
    };
    let json = sending.json();
    let stream = route.may_stream()
        && json
            .and_then(|j| j.get("stream"))
            .is_some_and(|v| v == b"true");
    rec.streamed = stream;
    let client_wants_usage = sending.wants_usage();
    let tools_bytes = json.and_then(|j| j.get("tools")).map_or(0, <[u8]>::len);
    if route.uses_tokens()
        && let Some(j) = json
    {
        rec.prompt = Some(context::Prompt::of(&j.body, &j.scanned));
    }

    let table = state.table.load_full();
    let handle = match table.handles.get(&model) {
        Some(h) if rec.caller.allows(&model) => {
            rec.handle = Some(h.name.clone());
            h.clone()
        }
        _ => {
            rec.handle = Some(Arc::from(model.as_str()));
            return rec.fail(Error::UnknownHandle(model));
        }
    };
    if !handle.targets.iter().any(|t| route.served_by(t)) {
        let mut offers: Vec<&str> = handle
            .targets
            .iter()
            .flat_map(|t| t.offers.iter().map(|o| o.as_str()))
            .collect();
        offers.sort_unstable();
        offers.dedup();
        return rec.fail(Error::NotOffered {
            handle: handle.name.to_string(),
            api: route.offer().as_str(),
            offers: if offers.is_empty() {
                "nothing".into()
            } else {
                offers.join(", ")
            },
        });
    }
    if let Some(why) = sending.unfit()
        && !handle
            .targets
            .iter()
            .any(|t| route.served_by(t) && sending.fits(route, t))
    {
        return rec.fail(Error::BadRequest(why));
    }
    if let Err(e) = admit_key(&state, &rec.caller) {
        return rec.fail(e);
    }
    let priority = match crate::priority::from_header(client_headers) {
        Ok(client) => crate::priority::choose(
            client,
            route
                .is_chat()
                .then(|| json.and_then(|j| j.get("messages")))
                .flatten(),
        ),
        Err(e) => return rec.fail(Error::BadRequest(e)),
    };
    let priority = priority.map(|p| p.header_value());
    if let Some(ttl) = handle.cache_ttl
        && let Some(key) = cache_key(route, &handle, &sending, stream)
    {
        let (read, store) = crate::cache::client_allows(client_headers.get(CACHE_CONTROL));
        let hit = read
            .then(|| state.cache.get(&key, Instant::now()))
            .flatten();
        state
            .metrics
            .cache
            .get_or_create(&crate::metrics::CacheLabels {
                handle: handle.name.clone(),
                result: if hit.is_some() { "hit" } else { "miss" },
            })
            .inc();
        if let Some(hit) = hit {
            rec.request_bytes = Some(sending.bytes());
            return relay::cached(rec, hit);
        }
        if store {
            rec.cache_slot = Some((key, ttl));
        }
    }
    let _in_flight = HandleGauge::new(&state, &handle.name);

    // The handle's own targets first; when the prompt fits none of them, its declared
    // larger-context fallback's (and so on, each handle once).
    // Embedding servers hold each input, not the batch, to the window (and cut it).
    let estimate = route != Route::Embeddings && state.config.context_bytes_per_token > 0;
    let mut chain: Vec<Arc<Handle>> = vec![handle.clone()];
    let mut outcome = Outcome::default();
    // Targets that would not take the request's tools, with their limits.
    let mut refused_tools: Vec<String> = Vec::new();
    // Targets passed over because the prompt does not fit, and why.
    let mut too_small: Vec<String> = Vec::new();
    let mut offering = 0;
    let mut next_handle = 0;
    // The conversation this request continues, when its turns could go to several targets.
    let conversation = (state.affinity.enabled()
        && handle.targets.len() > 1
        && (route.is_chat() || route == Route::Completions))
        .then(|| json.and_then(|j| affinity::key(&handle.name, |f| j.get(f))))
        .flatten();
    'handles: while let Some(current) = chain.get(next_handle).cloned() {
        next_handle += 1;
        let small_before = too_small.len();
        // Each target's live state, looked up once per request.
        let states: Vec<Arc<TargetState>> = current
            .targets
            .iter()
            .map(|t| state.target_state(&t.key))
            .collect();
        let mut order = order_targets(&current, &states);
        if let Some(k) = conversation {
            prefer_conversation_target(&state, &current, &states, &mut order, k);
        }
        for idx in order {
            let target = current.targets[idx].clone();
            if !route.served_by(&target) || !sending.fits(route, &target) {
                continue;
            }
            offering += 1;
            let ts = states[idx].clone();
            let screened = Screen {
                state: &state,
                target: &target,
                ts: &ts,
                tools_bytes,
                prompt: rec.prompt.as_mut().filter(|_| estimate),
            }
            .run();
            let Admitted { permit, dropping } = match screened {
                Ok(a) => a,
                Err(pass) => {
                    count_skip(&state, &current, &target, pass.reason());
                    match pass {
                        Pass::Context(why) => too_small.push(why),
                        Pass::Tools(why) => refused_tools.push(why),
                        Pass::CircuitOpen | Pass::RateLimited => {}
                    }
                    continue;
                }
            };
            let edits = Edits {
                model: Some(&target.upstream_model),
                defaults: target.params.as_ref(),
                include_usage: stream && !client_wants_usage,
                remove: if dropping { &TOOL_MEMBERS } else { &[] },
            };
            let native = route.native_messages(&target);
            rec.tools_dropped = dropping.then_some(tools_bytes);
            if dropping {
                tracing::debug!(request_id = %rec.request_id, target = %target.key, tools_bytes, "tools over the target's limit; sent without them");
            }
            let mut attempt_on_target = 0;
            loop {
                let Some((body, content_type)) = sending.body_for(route, &target, &edits) else {
                    // An upload goes once: what failed is the answer.
                    break 'handles;
                };
                rec.attempts += 1;
                if rec.own.is_none() {
                    // Everything before the first attempt is the gateway's own time.
                    rec.add_own(rec.started.elapsed());
                }
                let guard = ts.start();
                let traced = rec.attempt_trace(client_headers);
                let sent = Sent {
                    route,
                    request_id: &rec.request_id,
                    client_headers,
                    content_type: &content_type,
                    stream,
                    started: rec.started,
                    priority: priority.as_ref(),
                    traceparent: traced.traceparent.as_ref(),
                };
                match attempt(&state, &target, &sent, body).await {
                    Attempt::Answered(up) => {
                        rec.attempt_traced(traced, &target, "ok", Some(up.status.as_u16()), None);
                        if let Some(k) = conversation {
                            state.affinity.set(k, target.key.clone(), Instant::now());
                        }
                        ts.report(true, Instant::now());
                        count_attempt(&state, &current, &target, "ok");
                        rec.target = Some(target.clone());
                        rec.request_bytes = Some(sending.bytes());
                        let filter_usage = !client_wants_usage && stream && !native;
                        let mut res = respond(rec, *up, ts, guard, filter_usage).await;
                        if native {
                            res.extensions_mut().insert(NativeMessages);
                        }
                        if current.name != handle.name
                            && let Ok(v) = HeaderValue::from_str(&current.name)
                        {
                            res.headers_mut().insert(CONTEXT_FALLBACK_HEADER, v);
                        }
                        return res;
                    }
                    Attempt::Failed {
                        reason,
                        retry_same,
                        timeout,
                        busy,
                        loading,
                        context,
                    } => {
                        let traced_as = if context.is_some() {
                            "context_exceeded"
                        } else if loading {
                            "loading"
                        } else if timeout {
                            "timeout"
                        } else {
                            "error"
                        };
                        rec.attempt_traced(traced, &target, traced_as, None, Some(&reason));
                        if let Sending::Upload { over_limit, .. } = &sending
                            && over_limit.load(Ordering::Relaxed)
                        {
                            rec.request_bytes = Some(sending.bytes());
                            return rec.fail(Error::UploadTooLarge(state.config.max_upload));
                        }
                        if let Some(said) = context {
                            // The request's size, not the target's failure: no breaker report.
                            drop(guard);
                            count_attempt(&state, &current, &target, "context_exceeded");
                            count_fallback(&state, &current, &target, "context");
                            tracing::info!(request_id = %rec.request_id, target = %target.key, %said, "the prompt does not fit the target's context; next target");
                            too_small.push(format!("{}: {said}", target.key));
                            rec.target = Some(target.clone());
                            break;
                        }
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
                            &current,
                            &target,
                            if timeout { "timeout" } else { "error" },
                        );
                        outcome.any_tried = true;
                        outcome.timed_out &= timeout;
                        outcome.loading &= loading;
                        if busy {
                            outcome.busy = Some(target.clone());
                        }
                        tracing::warn!(request_id = %rec.request_id, handle = %current.name, target = %target.key, %reason, "attempt failed");
                        rec.target = Some(target.clone());
                        let Next::RetrySame(backoff) = next else {
                            let why = if busy {
                                "busy"
                            } else if timeout {
                                "timeout"
                            } else {
                                "error"
                            };
                            count_fallback(&state, &current, &target, why);
                            break;
                        };
                        count_retry(&state, &current, &target);
                        tokio::time::sleep(backoff).await;
                        attempt_on_target += 1;
                    }
                }
            }
        }
        // Too large for this handle: on to its larger-context fallback, once per handle.
        if too_small.len() > small_before
            && let Some(name) = current.context_fallback.as_deref()
            && !chain.iter().any(|h| &*h.name == name)
        {
            match table.handles.get(name) {
                Some(h) => {
                    tracing::debug!(request_id = %rec.request_id, from = %current.name, to = %name, "the prompt fits no target; context fallback");
                    chain.push(h.clone());
                }
                None => {
                    tracing::warn!(handle = %current.name, context_fallback = %name, "context_fallback names no handle");
                }
            }
        }
    }
    rec.request_bytes = Some(sending.bytes());
    // Only when every target refused the tools is that the answer; a target skipped for
    // another reason (circuit open, rate limit) is unavailable, not too small.
    if !refused_tools.is_empty() && refused_tools.len() == offering {
        return rec.fail(Error::ToolsTooLarge {
            handle: handle.name.to_string(),
            bytes: tools_bytes,
            limits: refused_tools.join(", "),
        });
    }
    // Likewise, a prompt too large for every target is the client's to shorten.
    if !too_small.is_empty() && too_small.len() == offering {
        return rec.fail(Error::ContextExceeded {
            handle: handle.name.to_string(),
            detail: too_small.join("; "),
        });
    }
    let why = outcome.why(&state).await;
    let attempts = rec.attempts;
    rec.fail(Error::AllTargetsFailed {
        handle: handle.name.to_string(),
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
    api.into_response()
}

/// Logs a request the edge refused before routing (a body over the size limit is refused
/// from its `Content-Length`, unread), so that every client request has its row.
pub fn log_refusal(state: &Arc<AppState>, refused: &service_kit::edge::Refusal<'_>) {
    let route = match refused.path.strip_prefix("/v1").unwrap_or(refused.path) {
        "/chat/completions" => Route::Chat,
        "/messages" | "/messages/count_tokens" => Route::Messages,
        "/responses" => Route::Responses,
        "/completions" => Route::Completions,
        "/embeddings" => Route::Embeddings,
        "/audio/transcriptions" => Route::Transcriptions,
        "/audio/translations" => Route::Translations,
        "/audio/speech" => Route::Speech,
        "/images/generations" => Route::Images,
        "/rerank" => Route::Rerank,
        _ => return,
    };
    let kind = if refused.status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "bad_request"
    };
    Record::new(
        state,
        route,
        refused.request_id.to_owned(),
        Caller::Anonymous,
    )
    .finish(refused.status.as_u16(), Some(kind));
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

/// Why a target is passed over before any attempt.
enum Pass {
    /// The prompt is clearly larger than its window: why, for the client.
    Context(String),
    /// Its `max_tools_bytes` under `over_tools: refuse`: its limit, for the client.
    Tools(String),
    CircuitOpen,
    RateLimited,
}

impl Pass {
    /// The reason in `homelab_gateway_skipped_targets_total`.
    fn reason(&self) -> &'static str {
        match self {
            Pass::Context(_) => "context",
            Pass::Tools(_) => "tools",
            Pass::CircuitOpen => "circuit_open",
            Pass::RateLimited => "rate_limited",
        }
    }
}

/// A target that takes the request: its breaker's say, and whether it gets the request
/// without its tools.
struct Admitted {
    permit: Permit,
    dropping: bool,
}

/// What decides whether a target is tried: the prompt against its window (when estimated),
/// the tools against its limit, its breaker, its rate limit — in that order, so that a
/// target the request cannot fit takes no breaker probe and no rate-limit slot.
struct Screen<'a> {
    state: &'a AppState,
    target: &'a Target,
    ts: &'a TargetState,
    tools_bytes: usize,
    /// The request's prompt, when it is to be measured against windows.
    prompt: Option<&'a mut context::Prompt>,
}

impl Screen<'_> {
    fn run(self) -> Result<Admitted, Pass> {
        let Screen {
            state,
            target,
            ts,
            tools_bytes,
            prompt,
        } = self;
        let over_tools = target
            .max_tools_bytes
            .filter(|&max| tools_bytes > max)
            .map(|max| (max, target.over_tools));
        let dropping = matches!(over_tools, Some((_, OverTools::Drop)));
        if let (Some(window), Some(prompt)) = (target.context_length, prompt) {
            let per_token = state.config.context_bytes_per_token;
            let est = context::tokens(prompt.bytes(!dropping), per_token);
            if est > window {
                tracing::debug!(target = %target.key, estimate = est, window, "the prompt is larger than the target's context; skipped");
                return Err(Pass::Context(format!(
                    "{} holds {window} tokens, the prompt is about {est}",
                    target.key
                )));
            }
        }
        if let Some((max, OverTools::Refuse)) = over_tools {
            tracing::debug!(target = %target.key, tools_bytes, max, "tools over the target's limit; skipped");
            return Err(Pass::Tools(format!("{} takes {max} bytes", target.key)));
        }
        let permit = ts.permit(Instant::now());
        if permit == Permit::Rejected {
            tracing::debug!(target = %target.key, "circuit open; skipped");
            return Err(Pass::CircuitOpen);
        }
        if state
            .limiter
            .admit(&target.key, target.rpm, target.tpm, docsdb::now_ms() / 1000)
            .is_err()
        {
            tracing::debug!(target = %target.key, "target rate limit reached; skipped");
            return Err(Pass::RateLimited);
        }
        Ok(Admitted { permit, dropping })
    }
}

/// The cache key of a request whose answer is deterministic (embeddings; a chat or
/// completion with `temperature: 0` or a `seed`) and not streamed; none for the rest.
fn cache_key(
    route: Route,
    handle: &Handle,
    sending: &Sending,
    stream: bool,
) -> Option<crate::cache::Key> {
    let Sending::Json(j) = sending else {
        return None;
    };
    let deterministic = match route {
        Route::Embeddings => true,
        Route::Chat | Route::Completions => {
            crate::cache::deterministic(j.get("temperature"), j.get("seed"))
        }
        _ => false,
    };
    (deterministic && !stream).then(|| crate::cache::Key {
        route: route.name(),
        handle: handle.name.clone(),
        body: j.body.clone(),
    })
}

/// Puts the target that served the conversation's previous turn first, where it stands as
/// well as the strategy's choice and is not saturated ([`affinity`]), and counts what it did.
fn prefer_conversation_target(
    state: &AppState,
    handle: &Handle,
    states: &[Arc<TargetState>],
    order: &mut Vec<usize>,
    conversation: u64,
) {
    let remembered = state
        .affinity
        .get(conversation, Instant::now())
        .and_then(|t| handle.targets.iter().position(|x| x.key == t));
    let priority: Vec<i64> = handle.targets.iter().map(|t| t.priority).collect();
    let in_flight: Vec<u64> = states.iter().map(|s| s.in_flight()).collect();
    let outcome = affinity::apply(
        order,
        remembered,
        &priority,
        &in_flight,
        state.config.prefix_affinity_max_in_flight,
    );
    state
        .metrics
        .affinity
        .get_or_create(&crate::metrics::AffinityLabels {
            handle: handle.name.clone(),
            outcome: outcome.as_str(),
        })
        .inc();
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

fn count_attempt(state: &AppState, handle: &Handle, target: &Target, outcome: &'static str) {
    state
        .metrics
        .attempts
        .get_or_create(&AttemptLabels {
            handle: handle.name.clone(),
            target: target.key.clone(),
            outcome,
        })
        .inc();
}

fn count_skip(state: &AppState, handle: &Handle, target: &Target, reason: &'static str) {
    count_reason(&state.metrics.skipped, handle, target, reason);
}

fn count_retry(state: &AppState, handle: &Handle, target: &Target) {
    state
        .metrics
        .retries
        .get_or_create(&crate::metrics::TargetLabels {
            handle: handle.name.clone(),
            target: target.key.clone(),
        })
        .inc();
}

fn count_fallback(state: &AppState, handle: &Handle, target: &Target, reason: &'static str) {
    count_reason(&state.metrics.fallbacks, handle, target, reason);
}

fn count_reason(
    family: &prometheus_client::metrics::family::Family<
        crate::metrics::SkipLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    handle: &Handle,
    target: &Target,
    reason: &'static str,
) {
    family
        .get_or_create(&crate::metrics::SkipLabels {
            handle: handle.name.clone(),
            target: target.key.clone(),
            reason,
        })
        .inc();
}

/// Counts the request in the per-handle in-flight gauge while alive.
struct HandleGauge {
    state: Arc<AppState>,
    handle: Arc<str>,
}

impl HandleGauge {
    fn new(state: &Arc<AppState>, handle: &Arc<str>) -> Self {
        state
            .metrics
            .in_flight
            .get_or_create(&HandleLabels {
                handle: handle.clone(),
            })
            .inc();
        HandleGauge {
            state: state.clone(),
            handle: handle.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: [Route; 10] = [
        Route::Chat,
        Route::Completions,
        Route::Embeddings,
        Route::Messages,
        Route::Responses,
        Route::Transcriptions,
        Route::Translations,
        Route::Speech,
        Route::Images,
        Route::Rerank,
    ];

    #[test]
    fn every_upstream_path_is_parsed_when_the_table_loads() {
        for route in ROUTES {
            for api in Api::ALL {
                let path = route.path_on(*api);
                assert!(UPSTREAM_PATHS.contains(&path), "{route:?} on {api}: {path}");
            }
        }
    }
}
