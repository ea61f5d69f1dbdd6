//! Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Per handle and target: requests, errors, latency and time-to-first-token histograms,
//! tokens, in-flight requests, upstream attempts by outcome, targets skipped by reason and
//! retries, fallbacks by reason, the gaps between a stream's tokens; cache hits and misses per
//! handle; per route, the gateway's own time per request. At scrape time: request-log rows
//! written/dropped/failed, each target's circuit state and the response cache's size.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

// Label values that repeat on every request are shared, not copied: a handle's or target's
// name is an `Arc<str>` from the routing table, the rest are static words or numbers.

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub handle: Arc<str>,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub route: &'static str,
    pub handle: Arc<str>,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub handle: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub handle: Arc<str>,
    pub target: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub handle: Arc<str>,
    pub target: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub handle: Arc<str>,
    pub target: Arc<str>,
    /// Skipped: `circuit_open`, `rate_limited`, `tools` (over the target's
    /// `max_tools_bytes`), `context` (the prompt is clearly larger than its window). Left
    /// after a failed attempt: `error`, `timeout`, `busy`, `context` (the backend said the
    /// prompt does not fit).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub handle: Arc<str>,
    /// `hit` or `miss` (a cacheable request the cache did not have).
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AffinityLabels {
    pub handle: Arc<str>,
    /// `kept` (back to the conversation's target), `moved` (it stands lower or is
    /// saturated), `new` (a conversation not seen before).
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub handle: Arc<str>,
    pub target: Arc<str>,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandleLabels {
    pub handle: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverheadLabels {
    pub route: &'static str,
}

/// 10 µs to ~2.6 s: the gateway's own time per request is microseconds, and so are the gaps
/// between tokens that arrive together.
fn overhead_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 18))
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~8 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Every metric of the gateway.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub ttft: Family<TargetLabels, Histogram, fn() -> Histogram>,
    pub attempts: Family<AttemptLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub in_flight: Family<HandleLabels, Gauge>,
    /// The gateway's own time per forwarded request: all but the waits on the upstream.
    pub overhead: Family<OverheadLabels, Histogram, fn() -> Histogram>,
    /// Targets passed over without an attempt, by reason.
    pub skipped: Family<SkipLabels, Counter>,
    /// Attempts again on the same target after a failure (a refused connection).
    pub retries: Family<TargetLabels, Counter>,
    /// The gaps between a stream's data events (tokens), per handle and target.
    pub between_tokens: Family<TargetLabels, Histogram, fn() -> Histogram>,
    /// Targets left for the next one after a failed attempt, by reason.
    pub fallbacks: Family<SkipLabels, Counter>,
    /// Cacheable requests by result.
    pub cache: Family<CacheLabels, Counter>,
    /// Requests of handles with several targets, by what prefix affinity did.
    pub affinity: Family<AffinityLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("homelab_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let ttft = Family::<TargetLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let in_flight = Family::<HandleLabels, Gauge>::default();
        let overhead = Family::<OverheadLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            overhead_histogram as fn() -> Histogram,
        );
        let skipped = Family::<SkipLabels, Counter>::default();
        let retries = Family::<TargetLabels, Counter>::default();
        let fallbacks = Family::<SkipLabels, Counter>::default();
        let cache = Family::<CacheLabels, Counter>::default();
        let affinity = Family::<AffinityLabels, Counter>::default();
        registry.register(
            "prefix_affinity",
            "Requests of handles with several targets, by what prefix affinity did (kept, moved, new)",
            affinity.clone(),
        );
        registry.register(
            "fallbacks",
            "Targets left for the next one after a failed attempt, by reason (error, timeout, busy, context)",
            fallbacks.clone(),
        );
        registry.register(
            "cache_requests",
            "Cacheable requests by result (hit, miss)",
            cache.clone(),
        );
        registry.register(
            "skipped_targets",
            "Targets passed over without an attempt, by reason (circuit_open, rate_limited, tools, context)",
            skipped.clone(),
        );
        registry.register(
            "retries",
            "Attempts again on the same target after a failure",
            retries.clone(),
        );
        let between_tokens =
            Family::<TargetLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                overhead_histogram as fn() -> Histogram,
            );
        registry.register(
            "time_between_tokens_seconds",
            "Gaps between a stream's data events as they reached the gateway",
            between_tokens.clone(),
        );
        registry.register(
            "overhead_seconds",
            "The gateway's own time per forwarded request (routing, rewriting, relaying, logging), without the waits on the upstream",
            overhead.clone(),
        );
        registry.register(
            "requests",
            "Client requests by route, handle and status",
            requests.clone(),
        );
        registry.register("errors", "Failed client requests by kind", errors.clone());
        registry.register(
            "request_duration_seconds",
            "Time until the last byte",
            duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time until the first byte of the answer",
            ttft.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Requests sent to targets, by outcome",
            attempts.clone(),
        );
        registry.register(
            "tokens",
            "Tokens by kind (prompt, completion)",
            tokens.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Client requests being served",
            in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            duration,
            ttft,
            attempts,
            tokens,
            in_flight,
            overhead,
            skipped,
            retries,
            between_tokens,
            fallbacks,
            cache,
            affinity,
        }
    }
}

/// Values read at scrape time.
pub struct ScrapeExtras {
    pub log_written: u64,
    pub log_dropped: u64,
    pub log_failed: u64,
    /// (target key, breaker state 0/1/2, requests in flight)
    pub targets: Vec<(String, i64, u64)>,
    pub cache: crate::cache::Stats,
    /// Trace spans exported, dropped (queue full) and failed (collector), when exporting.
    pub spans: Option<[u64; 3]>,
}

impl Metrics {
    /// The OpenMetrics text of everything.
    pub fn render(&self, extras: &ScrapeExtras) -> String {
        let mut out = String::with_capacity(4096);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP homelab_gateway_{name} {help}.");
            let _ = writeln!(out, "# TYPE homelab_gateway_{name} counter");
            let _ = writeln!(out, "homelab_gateway_{name}_total {v}");
        };
        counter(
            &mut out,
            "request_log_rows_written",
            "Request-log rows written to the DB",
            extras.log_written,
        );
        counter(
            &mut out,
            "request_log_rows_dropped",
            "Request-log rows dropped because the queue was full",
            extras.log_dropped,
        );
        counter(
            &mut out,
            "request_log_rows_failed",
            "Request-log rows lost to DB errors",
            extras.log_failed,
        );
        let _ = writeln!(
            out,
            "# HELP homelab_gateway_circuit_state Circuit breaker per target: 0 closed, 1 open, 2 half-open."
        );
        let _ = writeln!(out, "# TYPE homelab_gateway_circuit_state gauge");
        for (t, state, _) in &extras.targets {
            let _ = writeln!(
                out,
                "homelab_gateway_circuit_state{{target=\"{}\"}} {state}",
                escape(t)
            );
        }
        let _ = writeln!(
            out,
            "# HELP homelab_gateway_target_in_flight_requests Requests in flight per target."
        );
        let _ = writeln!(
            out,
            "# TYPE homelab_gateway_target_in_flight_requests gauge"
        );
        for (t, _, n) in &extras.targets {
            let _ = writeln!(
                out,
                "homelab_gateway_target_in_flight_requests{{target=\"{}\"}} {n}",
                escape(t)
            );
        }
        for (name, help, v) in [
            (
                "cache_entries",
                "Answers in the response cache",
                extras.cache.entries,
            ),
            (
                "cache_bytes",
                "Memory the response cache holds (bodies and answers)",
                extras.cache.bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP homelab_gateway_{name} {help}.");
            let _ = writeln!(out, "# TYPE homelab_gateway_{name} gauge");
            let _ = writeln!(out, "homelab_gateway_{name} {v}");
        }
        if let Some([exported, dropped, failed]) = extras.spans {
            let _ = writeln!(
                out,
                "# HELP homelab_gateway_trace_spans Trace spans by result (exported, dropped: the queue was full, failed: the collector did not take them)."
            );
            let _ = writeln!(out, "# TYPE homelab_gateway_trace_spans counter");
            for (result, n) in [
                ("exported", exported),
                ("dropped", dropped),
                ("failed", failed),
            ] {
                let _ = writeln!(
                    out,
                    "homelab_gateway_trace_spans_total{{result=\"{result}\"}} {n}"
                );
            }
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
