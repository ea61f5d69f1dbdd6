//! The gateway's flags, with environment fallbacks and every limit explicit.

use std::time::Duration;

use clap::Parser;
use service_kit::config::{CommonArgs, duration, size};

/// homelab-llm gateway: routes OpenAI-compatible requests by handle, with fallbacks,
/// virtual keys, limits and a request log.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOMELAB_GATEWAY_BIND", default_value = "127.0.0.1:4000")]
    pub bind: String,

    /// The system-docs DB.
    #[arg(long, env = "HOMELAB_DB", default_value = docsdb::DEFAULT_DB_URL)]
    pub db: String,

    /// The master key. With it, every /v1 call needs `Authorization: Bearer <master or
    /// virtual key>`. Set it through the environment so it does not show in `ps`.
    #[arg(long, env = "HOMELAB_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,

    /// Serve without any key on a non-loopback address (refused otherwise).
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// How often the handle and key tables are re-read from the DB.
    #[arg(long, env = "HOMELAB_GATEWAY_RELOAD_INTERVAL", default_value = "2s", value_parser = duration)]
    pub reload_interval: Duration,

    /// Extra attempts on the same target after a connection error, before falling back.
    #[arg(long, default_value_t = 1)]
    pub retries: u32,

    /// Consecutive failures that open a target's circuit breaker.
    #[arg(long, default_value_t = 3)]
    pub breaker_failures: u32,

    /// How long an open breaker keeps its target out before one probe request is let through.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub breaker_cooldown: Duration,

    /// Default connect timeout (a target's `connect_timeout_ms` overrides it).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// Default time to the first byte of the answer (`first_byte_timeout_ms`). When it
    /// passes, a backend that says the request is still queued or making progress
    /// (`GET /queue/{request_id}`) gets another period, up to the total timeout.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub first_byte_timeout: Duration,

    /// Default longest silence between stream chunks (`idle_timeout_ms`).
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// How long a request waits for a backend that is loading its model (it answers 503
    /// "Loading model") before another target is tried or the request fails.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub loading_wait: Duration,

    /// Default total time for a request (`timeout_ms`).
    #[arg(long, default_value = "30m", value_parser = duration)]
    pub total_timeout: Duration,

    /// Time limit of one web search (all SearXNG pages together).
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub search_timeout: Duration,

    /// Requests handled at once; more get 503 at once rather than queueing without bound.
    #[arg(long, default_value_t = 4096)]
    pub max_concurrency: usize,

    /// Largest non-streamed upstream answer buffered (streams are not buffered).
    #[arg(long, default_value = "64MiB", value_parser = size)]
    pub max_response: u64,

    /// Request-log rows that may wait for the writer; beyond this they are dropped and counted.
    #[arg(long, default_value_t = 10_000)]
    pub log_queue: usize,

    /// Request-log rows per transaction.
    #[arg(long, default_value_t = 512)]
    pub log_batch: usize,

    /// How long a response stored by the Responses API (`store: true`) can be continued
    /// with `previous_response_id`.
    #[arg(long, default_value = "30d", value_parser = duration)]
    pub responses_retention: Duration,

    /// Stored responses kept at most; the oldest go first.
    #[arg(long, default_value_t = 10_000)]
    pub responses_max: u64,

    /// Largest audio upload (`/v1/audio/transcriptions`, `/translations`): these bodies are
    /// streamed to the target, not held, so they may be larger than `--body-limit`.
    #[arg(long, default_value = "512MiB", value_parser = size)]
    pub max_upload: u64,

    /// Bytes of an upload's form fields held in memory while the gateway waits for its
    /// `model` field (a form that sends the file first); beyond this they wait in a temporary
    /// file.
    #[arg(long, default_value = "1MiB", value_parser = size)]
    pub upload_memory: u64,

    /// How long `/mcp` waits for a tool server's tool list; one slower is left out of the
    /// list for that request.
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub mcp_list_timeout: Duration,

    /// How long `/mcp` waits for a tool call.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub mcp_call_timeout: Duration,

    /// A `Host` header value `/mcp` accepts besides the loopback names (the name clients use
    /// for this machine when the gateway listens beyond loopback); repeatable.
    #[arg(long = "mcp-host-header", value_name = "HOST")]
    pub mcp_host_headers: Vec<String>,

    /// Memory the response cache may use (request bodies and answers together, for handles
    /// with `cache_ttl_ms`); the least recently used answers go first.
    #[arg(long, default_value = "64MiB", value_parser = size)]
    pub cache_max_bytes: u64,

    /// Bytes of prompt per token when judging, before sending, whether a prompt fits a
    /// target's context window (its `context_length`, or the models registry's). Generous
    /// on purpose: text runs about four bytes per token, so only a clearly oversized prompt
    /// is passed to the next target; near the edge the backend's own error decides. 0 turns
    /// the estimate off.
    #[arg(long, default_value_t = 6)]
    pub context_bytes_per_token: u64,

    /// Conversations whose serving target is remembered, so that their next turns go back
    /// to the engine that holds their prefix (when a handle has targets of equal standing);
    /// 0 turns prefix affinity off.
    #[arg(long, default_value_t = 10_000)]
    pub prefix_affinity_conversations: usize,

    /// How long a conversation's target is remembered after its last turn.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub prefix_affinity_ttl: Duration,

    /// Requests in flight at which a conversation's target counts as saturated: its next
    /// turn goes where the strategy says instead.
    #[arg(long, default_value_t = 4)]
    pub prefix_affinity_max_in_flight: u64,

    /// Idle keep-alive connections kept per plain-HTTP upstream (host and port).
    #[arg(long, default_value_t = 256)]
    pub upstream_idle_connections: usize,

    /// How long an idle keep-alive connection to an upstream is kept.
    #[arg(long, default_value = "90s", value_parser = duration)]
    pub upstream_idle_timeout: Duration,

    /// Export OpenTelemetry traces (a span per request, one per upstream attempt; built with
    /// the `otlp` feature) to this OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (JSON
    /// encoding; `/v1/traces` is added). Off when unset.
    #[cfg(feature = "otlp")]
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Spans that may wait for export; beyond this they are dropped and counted.
    #[cfg(feature = "otlp")]
    #[arg(long, default_value_t = 8192)]
    pub otlp_queue: usize,

    /// Spans per export at most (a batch also goes after a second).
    #[cfg(feature = "otlp")]
    #[arg(long, default_value_t = 512)]
    pub otlp_batch: usize,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// A configuration for tests and embedding: defaults, this DB, this bind address.
    pub fn new(db: &str, bind: &str) -> Self {
        let mut c = Config::parse_from(["gateway"]);
        c.db = db.to_owned();
        c.bind = bind.to_owned();
        c.master_key = None;
        c
    }
}
