//! OpenTelemetry traces, exported over OTLP/HTTP with the JSON encoding (built with the
//! `otlp` cargo feature, on with `--otlp-endpoint`): a server span per forwarded request and
//! a client span per upstream attempt under it.
//!
//! A client's W3C `traceparent` makes the request span its child (and one that says "not
//! sampled" is not recorded); each attempt sends the backend a `traceparent` naming its own
//! span, so that a backend that traces (vLLM, an OpenTelemetry-instrumented server) joins the
//! trace. Spans wait in a bounded queue (`--otlp-queue`; beyond it they are dropped and
//! counted, a request never waits) and go out in batches (`--otlp-batch`, or after a second)
//! from a background task; what is queued is sent when the gateway stops.
//!
//! The span names and attributes follow the OpenTelemetry GenAI conventions where they
//! apply: `{operation} {model}`, `gen_ai.operation.name`, `gen_ai.request.model`,
//! `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`; the gateway's own are
//! `homelab.*`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::proxy::TRACEPARENT;

/// How long a batch waits for more spans before it goes.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where traces go and how many wait.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added unless it is there).
    pub endpoint: String,
    /// Spans that may wait for export.
    pub queue: usize,
    /// Spans per export at most.
    pub batch: usize,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| fastrand::u8(..));
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

/// A client's `traceparent`: its trace id, its span id and whether it is sampled; none when
/// absent or malformed (then the gateway starts a trace of its own).
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; a later version may add some; ff is invalid.
    if unhex::<1>(version).is_none_or(|v| v[0] == 0xff)
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    let trace = unhex::<16>(trace).filter(|t| t.iter().any(|&b| b != 0))?;
    let parent = unhex::<8>(parent).filter(|p| p.iter().any(|&b| b != 0))?;
    let flags = unhex::<1>(flags)?;
    Some((trace, parent, flags[0] & 1 == 1))
}

fn traceparent(trace: &[u8; 16], span: &[u8; 8]) -> HeaderValue {
    HeaderValue::try_from(format!("00-{}-{}-01", hex(trace), hex(span)))
        .unwrap_or(HeaderValue::from_static(""))
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Attr {
    fn json(&self) -> Value {
        match self {
            Attr::Str(s) => json!({"stringValue": s}),
            // OTLP/JSON writes 64-bit integers as strings.
            Attr::Int(i) => json!({"intValue": i.to_string()}),
            Attr::Bool(b) => json!({"boolValue": b}),
        }
    }
}

/// Server (a request) or client (an attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub kind: Kind,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set when the span failed: why.
    pub error: Option<String>,
}

impl Span {
    fn json(&self) -> Value {
        let mut v = json!({
            "traceId": hex(&self.trace_id),
            "spanId": hex(&self.span_id),
            "name": self.name,
            // SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3.
            "kind": match self.kind { Kind::Server => 2, Kind::Client => 3 },
            "startTimeUnixNano": self.start_ns.to_string(),
            "endTimeUnixNano": self.end_ns.max(self.start_ns).to_string(),
            "attributes": self.attributes.iter()
                .map(|(k, a)| json!({"key": k, "value": a.json()}))
                .collect::<Vec<_>>(),
            // STATUS_CODE_UNSET = 0, STATUS_CODE_ERROR = 2.
            "status": match &self.error {
                Some(m) => json!({"code": 2, "message": m}),
                None => json!({"code": 0}),
            },
        });
        if let Some(p) = &self.parent {
            v["parentSpanId"] = Value::String(hex(p));
        }
        v
    }
}

/// An attempt's span while it runs.
#[derive(Debug)]
pub struct Open {
    span_id: [u8; 8],
    start_ns: u64,
    /// The `traceparent` the backend is sent.
    pub header: HeaderValue,
}

/// The trace of one forwarded request: its span's identity, and its attempts' spans.
#[derive(Debug)]
pub struct RequestTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start_ns: u64,
    attempts: Vec<Span>,
    /// The attempt that answered: its span ends with the answer.
    answering: Option<Span>,
}

impl RequestTrace {
    /// Starts a request's trace, under the client's `traceparent` if it sent one; none when
    /// that says the trace is not sampled.
    pub fn start(headers: &HeaderMap) -> Option<Self> {
        let from_client = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let (trace_id, parent) = match from_client {
            Some((_, _, false)) => return None,
            Some((t, p, true)) => (t, Some(p)),
            None => (random_id(), None),
        };
        Some(RequestTrace {
            trace_id,
            span_id: random_id(),
            parent,
            start_ns: now_ns(),
            attempts: Vec::new(),
            answering: None,
        })
    }

    /// An attempt begins.
    pub fn open(&self) -> Open {
        let span_id = random_id();
        Open {
            header: traceparent(&self.trace_id, &span_id),
            span_id,
            start_ns: now_ns(),
        }
    }

    /// An attempt ended: `error` says why it failed; an answer's span ends with the request.
    pub fn close(
        &mut self,
        open: Open,
        name: String,
        attributes: Vec<(&'static str, Attr)>,
        error: Option<String>,
    ) {
        let answered = error.is_none();
        let span = Span {
            name,
            kind: Kind::Client,
            trace_id: self.trace_id,
            span_id: open.span_id,
            parent: Some(self.span_id),
            start_ns: open.start_ns,
            end_ns: now_ns(),
            attributes,
            error,
        };
        if answered {
            self.answering = Some(span);
        } else {
            self.attempts.push(span);
        }
    }

    /// The request ended: its span and its attempts'.
    pub fn finish(
        mut self,
        name: String,
        attributes: Vec<(&'static str, Attr)>,
        error: Option<String>,
    ) -> Vec<Span> {
        let end_ns = now_ns();
        if let Some(mut a) = self.answering.take() {
            a.end_ns = end_ns;
            self.attempts.push(a);
        }
        let mut spans = std::mem::take(&mut self.attempts);
        spans.push(Span {
            name,
            kind: Kind::Server,
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            start_ns: self.start_ns,
            end_ns,
            attributes,
            error,
        });
        spans
    }
}

/// What the exporter did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub exported: AtomicU64,
    /// Refused because the queue was full.
    pub dropped: AtomicU64,
    /// Lost because the collector did not take them.
    pub failed: AtomicU64,
}

enum Msg {
    Spans(Vec<Span>),
    Flush(oneshot::Sender<()>),
}

/// Sends spans to the collector from a background task.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Msg>,
    /// Spans queued now (the channel counts messages, a request's spans are one).
    queued: Arc<AtomicU64>,
    queue: u64,
    pub stats: Arc<Stats>,
}

impl Exporter {
    /// Starts the export task.
    pub fn spawn(settings: &Settings, service_version: &str) -> Self {
        let url = match settings.endpoint.trim_end_matches('/') {
            e if e.ends_with("/v1/traces") => e.to_owned(),
            e => format!("{e}/v1/traces"),
        };
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let stats = Arc::new(Stats::default());
        let queued = Arc::new(AtomicU64::new(0));
        let resource = json!({
            "attributes": [
                {"key": "service.name", "value": {"stringValue": "homelab-gateway"}},
                {"key": "service.version", "value": {"stringValue": service_version}},
            ]
        });
        let scope = json!({"name": "homelab-gateway", "version": service_version});
        tokio::spawn(run(Task {
            rx,
            client: reqwest::Client::new(),
            url,
            resource,
            scope,
            batch: settings.batch.max(1),
            stats: stats.clone(),
            queued: queued.clone(),
        }));
        Exporter {
            tx,
            queued,
            queue: settings.queue.max(1) as u64,
            stats,
        }
    }

    /// Queues a request's spans (never waits); drops them, counted, when the queue is full.
    pub fn export(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > self.queue
            || self.tx.try_send(Msg::Spans(spans)).is_err()
        {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sends what is queued and waits for it (up to `wait`).
    pub async fn flush(&self, wait: Duration) {
        let (done, ack) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(wait, ack).await;
        }
    }
}

struct Task {
    rx: mpsc::Receiver<Msg>,
    client: reqwest::Client,
    url: String,
    resource: Value,
    scope: Value,
    batch: usize,
    stats: Arc<Stats>,
    queued: Arc<AtomicU64>,
}

async fn run(mut t: Task) {
    let mut spans: Vec<Span> = Vec::new();
    loop {
        // Wait for the first spans, then for more up to a batch or a second.
        let mut flushed = None;
        match t.rx.recv().await {
            None => return,
            Some(Msg::Flush(done)) => flushed = Some(done),
            Some(Msg::Spans(s)) => {
                spans.extend(s);
                let until = tokio::time::Instant::now() + BATCH_WAIT;
                while spans.len() < t.batch {
                    match tokio::time::timeout_at(until, t.rx.recv()).await {
                        Ok(Some(Msg::Spans(s))) => spans.extend(s),
                        Ok(Some(Msg::Flush(done))) => {
                            flushed = Some(done);
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        for chunk in spans.chunks(t.batch) {
            t.queued.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
            send(&t, chunk).await;
        }
        spans.clear();
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

async fn send(t: &Task, spans: &[Span]) {
    let body = json!({
        "resourceSpans": [{
            "resource": t.resource,
            "scopeSpans": [{
                "scope": t.scope,
                "spans": spans.iter().map(Span::json).collect::<Vec<_>>(),
            }],
        }],
    });
    let n = spans.len() as u64;
    let res = t
        .client
        .post(&t.url)
        .timeout(EXPORT_TIMEOUT)
        .json(&body)
        .send()
        .await;
    match res {
        Ok(r) if r.status().is_success() => {
            t.stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Ok(r) => {
            t.stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(url = %t.url, status = %r.status(), spans = n, "the trace collector refused spans");
        }
        Err(e) => {
            t.stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(url = %t.url, error = %e, spans = n, "cannot reach the trace collector");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents() {
        let (t, p, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert!(sampled);
        assert!(
            !parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .2
        );
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_requests_spans_nest_and_encode() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut trace = RequestTrace::start(&h).unwrap();
        let first = trace.open();
        let header = first.header.to_str().unwrap().to_owned();
        trace.close(
            first,
            "chat m".into(),
            vec![],
            Some("upstream answered 500".into()),
        );
        let second = trace.open();
        trace.close(
            second,
            "chat m".into(),
            vec![("homelab.target", Attr::Str("b/m".into()))],
            None,
        );
        let spans = trace.finish(
            "chat h".into(),
            vec![("gen_ai.usage.input_tokens", Attr::Int(7))],
            None,
        );
        assert_eq!(spans.len(), 3);
        let server = &spans[2];
        assert_eq!(server.kind, Kind::Server);
        assert_eq!(hex(&server.parent.unwrap()), "00f067aa0ba902b7");
        assert!(
            spans[..2]
                .iter()
                .all(|s| s.parent == Some(server.span_id) && s.trace_id == server.trace_id)
        );
        assert!(header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(
            header,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                hex(&spans[0].span_id)
            )
        );
        let j = server.json();
        assert_eq!(j["kind"], 2);
        assert_eq!(j["attributes"][0]["value"]["intValue"], "7");
        assert_eq!(j["status"]["code"], 0);
        assert_eq!(spans[0].json()["status"]["code"], 2);
        // Not sampled: not recorded.
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(RequestTrace::start(&h).is_none());
        // None sent: a trace of its own, as a root.
        let own = RequestTrace::start(&HeaderMap::new()).unwrap();
        assert!(own.parent.is_none());
    }
}
