//! The monitor's flags, with environment fallbacks and every limit explicit.

use std::time::Duration;

use clap::Parser;
use service_kit::config::{CommonArgs, duration};

/// homelab-llm system monitor: probes every registered service, keeps the system-docs DB
/// small, and shows views of it (dashboard, JSON API, Prometheus metrics, webhooks).
#[derive(Debug, Clone, Parser)]
#[command(name = "system-monitor", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long,
        env = "HOMELAB_SYSTEM_MONITOR_BIND",
        default_value = "127.0.0.1:4001"
    )]
    pub bind: String,

    /// The system-docs DB.
    #[arg(long, env = "HOMELAB_DB", default_value = docsdb::DEFAULT_DB_URL)]
    pub db: String,

    /// Default time between probes of a service (a service's `probe_interval_ms` overrides it).
    #[arg(long, env = "HOMELAB_MONITOR_INTERVAL", default_value = "15s", value_parser = duration)]
    pub probe_interval: Duration,

    /// Time a probe may take before it counts as failed.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub probe_timeout: Duration,

    /// Probes in flight at once.
    #[arg(long, default_value_t = 8)]
    pub probe_concurrency: usize,

    /// Failed probes in a row before a service is `down` (fewer: `degraded`).
    #[arg(long, default_value_t = 3)]
    pub fail_threshold: u32,

    /// Do not probe (show what the DB holds; another monitor probes).
    #[arg(long)]
    pub no_probe: bool,

    /// Raw health checks and request-log rows older than this are deleted (they are folded
    /// into hourly rollups as each hour ends). At least 25h: the views read the raw rows of
    /// the last hour and of each window's partial first hour.
    #[arg(long, env = "HOMELAB_MONITOR_RETENTION", default_value = "7d", value_parser = duration)]
    pub retention: Duration,

    /// How often complete hours are folded into the rollups and old rows deleted.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub rollup_interval: Duration,

    /// POST a JSON message here on every status change (repeatable).
    #[arg(
        long = "webhook",
        env = "HOMELAB_MONITOR_WEBHOOKS",
        value_delimiter = ','
    )]
    pub webhooks: Vec<String>,

    /// POST an ntfy-style plain-text message here (e.g. https://ntfy.sh/my-topic; repeatable).
    #[arg(long = "ntfy", env = "HOMELAB_MONITOR_NTFY", value_delimiter = ',')]
    pub ntfy: Vec<String>,

    /// Also alert when a service turns `degraded` (failing, not yet `down`).
    #[arg(long)]
    pub alert_degraded: bool,

    /// Attempts per alert delivery (with doubling back-off from 1s).
    #[arg(long, default_value_t = 4)]
    pub webhook_attempts: u32,

    /// Time one alert delivery may take.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub webhook_timeout: Duration,

    /// How often the dashboard reloads itself.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub page_refresh: Duration,

    /// A `Host` header value `/mcp` accepts besides the loopback names (the name MCP clients
    /// use for this machine when the monitor is bound beyond loopback); repeatable.
    #[arg(long = "mcp-host-header", value_name = "HOST")]
    pub mcp_host_headers: Vec<String>,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Defaults, on `db` and `bind`.
    pub fn new(db: &str, bind: &str) -> Self {
        let mut c = Config::parse_from(["system-monitor"]);
        c.db = db.to_owned();
        c.bind = bind.to_owned();
        c
    }
}
