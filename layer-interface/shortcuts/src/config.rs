//! The Shortcuts service's flags, with environment fallbacks and every limit explicit.

use std::time::Duration;

use clap::Parser;
use service_kit::config::{CommonArgs, duration};

/// homelab-llm shortcuts: endpoints an Apple Shortcut uses in one "Get Contents of URL" step —
/// ask, summarise, status, long jobs — answering plain text it can speak. A client of the
/// gateway with no model logic of its own: the device's key goes through to the gateway
/// unchanged, so limits and the request log are per device.
#[derive(Debug, Clone, Parser)]
#[command(name = "shortcuts", version)]
#[command(mut_arg("body_limit", |a| a.default_value("64KiB")))]
pub struct Config {
    /// Address to listen on. Beyond loopback every request needs a key (a gateway virtual
    /// key, one per device).
    #[arg(long, env = "HOMELAB_SHORTCUTS_BIND", default_value = "127.0.0.1:4003")]
    pub bind: String,

    /// The gateway's base URL (OpenAI-compatible, without `/v1`).
    #[arg(
        long,
        env = "HOMELAB_GATEWAY_URL",
        default_value = "http://127.0.0.1:4000"
    )]
    pub gateway: String,

    /// The system monitor's base URL (for `/status`).
    #[arg(
        long,
        env = "HOMELAB_MONITOR_URL",
        default_value = "http://127.0.0.1:4001"
    )]
    pub monitor: String,

    /// The web-fetch MCP endpoint (for `/summarise` of a URL); empty: URLs are refused.
    #[arg(
        long,
        env = "HOMELAB_WEB_FETCH_URL",
        default_value = "http://127.0.0.1:4020/mcp"
    )]
    pub web_fetch: String,

    /// The web-fetch tool's bearer key, when it wants one.
    #[arg(long, env = "HOMELAB_WEB_FETCH_KEY")]
    pub web_fetch_key: Option<String>,

    /// The model (gateway handle) asked when a request names none.
    #[arg(long, default_value = "default")]
    pub model: String,

    /// How long a request may take before the answer so far is returned, cut at its last
    /// full sentence (a shortcut run by Siri is stopped after about 15 s). A request may ask
    /// for another with `X-Deadline-Ms`, up to `--max-deadline`.
    #[arg(long, default_value = "12s", value_parser = duration)]
    pub deadline: Duration,

    /// The longest deadline a request may ask for.
    #[arg(long, default_value = "120s", value_parser = duration)]
    pub max_deadline: Duration,

    /// How long a job (`POST /jobs`) may run.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub job_timeout: Duration,

    /// How long a finished job's answer is kept for polling.
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub job_ttl: Duration,

    /// Jobs kept at once (running and finished); a new one beyond this evicts the oldest
    /// finished one, or is refused when all are running.
    #[arg(long, default_value_t = 64)]
    pub max_jobs: usize,

    /// Turns (a question and its answer) a conversation keeps; older ones are forgotten.
    #[arg(long, default_value_t = 10)]
    pub max_turns: usize,

    /// How long a conversation lives after its last turn.
    #[arg(long, default_value = "30m", value_parser = duration)]
    pub conversation_ttl: Duration,

    /// Conversations kept at once; beyond this the least recently used is forgotten.
    #[arg(long, default_value_t = 1000)]
    pub max_conversations: usize,

    /// The longest answer a request may ask for with `max_words`.
    #[arg(long, default_value_t = 1000)]
    pub max_words: usize,

    /// Characters of a fetched page (or a sent text) given to the model to summarise; the
    /// rest is left out, and the model is told it has only the beginning.
    #[arg(long, default_value_t = 12000)]
    pub max_summary_chars: usize,

    /// How long a call to the gateway, the monitor or web-fetch may take to connect.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// A configuration for `bind` with every other setting at its default (for `homelab up`
    /// and tests).
    pub fn new(bind: &str, gateway: &str, monitor: &str) -> Config {
        let mut c = Config::parse_from(["shortcuts"]);
        c.bind = bind.to_owned();
        c.gateway = gateway.to_owned();
        c.monitor = monitor.to_owned();
        c.web_fetch_key = None;
        c
    }
}
