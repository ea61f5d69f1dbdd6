//! Outcome accounting: what one request did — metrics, token windows, budgets — and its
//! request-log row, written once, when it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use docsdb::request_log::{EndUser, RequestLogRow, UsageSource};

use crate::auth::Caller;
use crate::error::{Error, Unavailable};
use crate::metrics::{
    ErrorLabels, OverheadLabels, RequestLabels, RouteLabels, TargetLabels, TokenLabels,
};
use crate::patience::{self};
use crate::state::AppState;
use crate::table::Target;

use super::Route;
use super::TRACEPARENT;

/// What one request did, for the log and the metrics.
pub(super) struct Record {
    pub(super) state: Arc<AppState>,
    pub(super) route: Route,
    pub(super) request_id: String,
    pub(super) started: Instant,
    pub(super) started_ms: i64,
    pub(super) caller: Caller,
    pub(super) handle: Option<Arc<str>>,
    pub(super) target: Option<Arc<Target>>,
    pub(super) attempts: u32,
    pub(super) streamed: bool,
    pub(super) ttft: Option<Duration>,
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    /// Measured time spent generating the completion tokens.
    pub(super) generation: Option<Duration>,
    /// Who the client said the request is for.
    pub(super) user: EndUser,
    /// Bytes of tool definitions left out for the target that answered.
    pub(super) tools_dropped: Option<usize>,
    /// The request body's size, once read (or, streamed through, once passed on).
    pub(super) request_bytes: Option<u64>,
    /// The answer body's size as passed to the client.
    pub(super) response_bytes: Option<u64>,
    /// The gateway's own time so far, when the request reached a target: before the first
    /// attempt, and handling the answer (not the waits on the upstream).
    pub(super) own: Option<Duration>,
    /// The request's prompt members, for routes that use tokens.
    pub(super) prompt: Option<super::context::Prompt>,
    /// The gateway counted the tokens (the backend reported none).
    pub(super) counted: bool,
    /// Answered from the response cache.
    pub(super) cache_hit: bool,
    /// Where a 200 answer is kept, and for how long (a cacheable request that missed).
    pub(super) cache_slot: Option<(crate::cache::Key, Duration)>,
    /// The request's trace, when traces are exported and the client's allows.
    #[cfg(feature = "otlp")]
    pub(super) trace: Option<crate::otlp::RequestTrace>,
}

/// One attempt's part in the trace: the `traceparent` its backend is sent — its own span's
/// when the gateway traces, else the client's as it came — and, when tracing, its span.
pub(super) struct AttemptTrace {
    pub(super) traceparent: Option<HeaderValue>,
    #[cfg(feature = "otlp")]
    open: Option<crate::otlp::Open>,
}

impl Record {
    pub(super) fn new(
        state: &Arc<AppState>,
        route: Route,
        request_id: String,
        caller: Caller,
    ) -> Self {
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
            user: EndUser::default(),
            tools_dropped: None,
            request_bytes: None,
            response_bytes: None,
            own: None,
            prompt: None,
            counted: false,
            cache_hit: false,
            cache_slot: None,
            #[cfg(feature = "otlp")]
            trace: None,
        }
    }

    /// Starts the request's trace (when traces are exported).
    pub(super) fn start_trace(&mut self, client_headers: &HeaderMap) {
        #[cfg(feature = "otlp")]
        if self.state.otlp.is_some() {
            self.trace = crate::otlp::RequestTrace::start(client_headers);
        }
        #[cfg(not(feature = "otlp"))]
        let _ = client_headers;
    }

    /// An attempt begins.
    pub(super) fn attempt_trace(&self, client_headers: &HeaderMap) -> AttemptTrace {
        #[cfg(feature = "otlp")]
        if let Some(t) = &self.trace {
            let open = t.open();
            return AttemptTrace {
                traceparent: Some(open.header.clone()),
                open: Some(open),
            };
        }
        AttemptTrace {
            traceparent: client_headers.get(TRACEPARENT).cloned(),
            #[cfg(feature = "otlp")]
            open: None,
        }
    }

    /// An attempt ended: answered with `status`, or failed for `failure` (`outcome` names
    /// which).
    pub(super) fn attempt_traced(
        &mut self,
        at: AttemptTrace,
        target: &Target,
        outcome: &'static str,
        status: Option<u16>,
        failure: Option<&str>,
    ) {
        #[cfg(feature = "otlp")]
        if let (Some(trace), Some(open)) = (&mut self.trace, at.open) {
            use crate::otlp::Attr;
            let mut attrs = vec![
                ("gen_ai.operation.name", Attr::Str(self.route.name().into())),
                (
                    "gen_ai.request.model",
                    Attr::Str(target.upstream_model.clone()),
                ),
                ("homelab.target", Attr::Str(target.key.to_string())),
                ("server.address", Attr::Str(target.base_url.clone())),
                ("homelab.outcome", Attr::Str(outcome.into())),
            ];
            if let Some(s) = status {
                attrs.push(("http.response.status_code", Attr::Int(i64::from(s))));
            }
            let name = format!("{} {}", self.route.name(), target.upstream_model);
            trace.close(open, name, attrs, failure.map(str::to_owned));
        }
        #[cfg(not(feature = "otlp"))]
        let _ = (at, target, outcome, status, failure);
    }

    /// Sends the request's spans.
    #[cfg(feature = "otlp")]
    fn export_trace(&mut self, status: u16, error: Option<&'static str>) {
        use crate::otlp::Attr;
        let (Some(trace), Some(exporter)) = (self.trace.take(), &self.state.otlp) else {
            return;
        };
        let handle = self.handle.as_deref().unwrap_or_default();
        let mut attrs = vec![
            ("gen_ai.operation.name", Attr::Str(self.route.name().into())),
            ("gen_ai.request.model", Attr::Str(handle.into())),
            ("homelab.request_id", Attr::Str(self.request_id.clone())),
            ("http.response.status_code", Attr::Int(i64::from(status))),
            ("homelab.attempts", Attr::Int(i64::from(self.attempts))),
            ("homelab.streamed", Attr::Bool(self.streamed)),
            ("homelab.cache_hit", Attr::Bool(self.cache_hit)),
        ];
        if let Some(t) = &self.target {
            attrs.push(("homelab.target", Attr::Str(t.key.to_string())));
            attrs.push(("gen_ai.response.model", Attr::Str(t.upstream_model.clone())));
        }
        for (key, n) in [
            ("gen_ai.usage.input_tokens", self.prompt_tokens),
            ("gen_ai.usage.output_tokens", self.completion_tokens),
        ] {
            if let Some(n) = n {
                attrs.push((key, Attr::Int(i64::try_from(n).unwrap_or(i64::MAX))));
            }
        }
        if let Some(kind) = error {
            attrs.push(("error.type", Attr::Str(kind.into())));
        }
        // A server span fails on a 5xx; a 4xx is the client's (its `error.type` says why).
        let failed = error.filter(|_| status >= 500).map(str::to_owned);
        let name = format!("{} {handle}", self.route.name());
        exporter.export(trace.finish(name, attrs, failed));
    }

    /// Adds `d` to the gateway's own time.
    pub(super) fn add_own(&mut self, d: Duration) {
        self.own = Some(self.own.unwrap_or_default() + d);
    }

    /// Counts the tokens the backend did not report: the prompt (as sent: without the tools
    /// if they were dropped) at about four bytes per token, and `completion` as estimated by
    /// the caller.
    pub(super) fn count_usage(&mut self, completion: Option<u64>) {
        if self.prompt_tokens.is_some() || self.completion_tokens.is_some() {
            return;
        }
        let with_tools = self.tools_dropped.is_none();
        let Some(prompt) = &mut self.prompt else {
            return;
        };
        self.prompt_tokens = Some(super::context::tokens(
            prompt.bytes(with_tools),
            super::context::COUNTING_BYTES_PER_TOKEN,
        ));
        self.completion_tokens = completion;
        self.counted = true;
    }

    /// Where the token counts came from; none when there are none.
    pub(super) fn usage_source(&self) -> Option<UsageSource> {
        if self.counted {
            Some(UsageSource::Gateway)
        } else if self.prompt_tokens.is_some() || self.completion_tokens.is_some() {
            Some(UsageSource::Backend)
        } else {
            None
        }
    }

    pub(super) fn finish(&mut self, status: u16, error: Option<&'static str>) {
        #[cfg(feature = "otlp")]
        self.export_trace(status, error);
        let handle = self.handle.clone().unwrap_or_default();
        let m = &self.state.metrics;
        let elapsed = self.started.elapsed();
        m.requests
            .get_or_create(&RequestLabels {
                route: self.route.name(),
                handle: handle.clone(),
                status,
            })
            .inc();
        m.duration
            .get_or_create(&RouteLabels {
                route: self.route.name(),
                handle: handle.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(own) = self.own {
            m.overhead
                .get_or_create(&OverheadLabels {
                    route: self.route.name(),
                })
                .observe(own.as_secs_f64());
        }
        if let Some(kind) = error {
            m.errors
                .get_or_create(&ErrorLabels {
                    route: self.route.name(),
                    handle: handle.clone(),
                    kind,
                })
                .inc();
        }
        if let Some(t) = self.target.as_ref().filter(|_| !self.cache_hit) {
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
                            kind,
                        })
                        .inc_by(n);
                }
            }
        }
        // A cached answer cost no backend anything: it counts against no limit or budget.
        let tokens = if self.cache_hit {
            0
        } else {
            self.prompt_tokens.unwrap_or(0) + self.completion_tokens.unwrap_or(0)
        };
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
            handle: self.handle.as_deref().map(str::to_owned),
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
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            usage_source: self.usage_source(),
            cache_hit: self.cache_hit,
            user: std::mem::take(&mut self.user),
        });
    }

    pub(super) fn fail(mut self, err: Error) -> Response {
        let status = err.to_api().status;
        self.finish(status, Some(err.kind()));
        err.into_response()
    }
}

/// What the failed attempts of one request had in common.
pub(super) struct Outcome {
    pub(super) any_tried: bool,
    /// Every attempt timed out.
    pub(super) timed_out: bool,
    /// Every attempt found the model loading.
    pub(super) loading: bool,
    /// The last target that said it was busy.
    pub(super) busy: Option<Arc<Target>>,
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
    pub(super) async fn why(self, state: &AppState) -> Unavailable {
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

/// A search (`/v1/search`), as the request log records it: the tool is its handle and its
/// target.
pub(crate) struct SearchDone {
    pub request_id: String,
    pub started: Instant,
    pub started_ms: i64,
    pub key: Option<String>,
    pub tool: Option<String>,
    pub status: u16,
    pub error: Option<String>,
    pub user: EndUser,
}

/// Logs a search.
pub(crate) fn log_search(state: &AppState, s: SearchDone) {
    state.log(RequestLogRow {
        request_id: s.request_id,
        started_at_ms: s.started_ms,
        key_name: s.key,
        route: "search".into(),
        handle: s.tool.clone(),
        target: s.tool,
        upstream_model: None,
        status: s.status,
        error_type: s.error,
        attempts: 1,
        latency_ms: s.started.elapsed().as_secs_f64() * 1000.0,
        ttft_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        streamed: false,
        generation_ms: None,
        request_bytes: None,
        response_bytes: None,
        usage_source: None,
        cache_hit: false,
        user: s.user,
    });
}
