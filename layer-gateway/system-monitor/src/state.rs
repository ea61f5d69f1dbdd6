//! What the handlers and background tasks share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Config;
use crate::alerts::Alert;

/// Counters of the monitor's own work, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub probes_ok: AtomicU64,
    pub probes_failed: AtomicU64,
    pub alerts_sent: AtomicU64,
    pub alerts_failed: AtomicU64,
    pub alerts_dropped: AtomicU64,
    pub rollup_rows: AtomicU64,
}

impl Counters {
    pub fn probe(&self, ok: bool) {
        let c = if ok {
            &self.probes_ok
        } else {
            &self.probes_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn alert(&self, sent: bool) {
        let c = if sent {
            &self.alerts_sent
        } else {
            &self.alerts_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct AppState {
    pub config: Config,
    pub db: docsdb::Db,
    pub http: reqwest::Client,
    /// Each service's last status as the prober saw it.
    pub last_status: Mutex<HashMap<String, String>>,
    pub metrics: Counters,
    /// The background tasks: probes, rollups, alert deliveries.
    pub tasks: service_kit::tasks::Tasks,
    alerts: tokio::sync::mpsc::Sender<Alert>,
    /// Cancelled when shutdown begins: `/mcp`'s open event streams end so the drain can finish.
    pub mcp_cancel: tokio_util::sync::CancellationToken,
}

impl AppState {
    pub fn new(
        config: Config,
        db: docsdb::Db,
        alerts: tokio::sync::mpsc::Sender<Alert>,
    ) -> Result<Self, crate::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "homelab-system-monitor/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(config.probe_timeout)
            .pool_max_idle_per_host(2)
            .build()
            .map_err(|e| crate::Error::BadConfig(format!("HTTP client: {e}")))?;
        Ok(AppState {
            config,
            db,
            http,
            last_status: Mutex::default(),
            metrics: Counters::default(),
            tasks: service_kit::tasks::Tasks::new(),
            alerts,
            mcp_cancel: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Queues an alert; a full queue drops it (and counts the drop) rather than stall probes.
    pub fn alert(&self, alert: Alert) {
        if self.alerts.try_send(alert).is_err() {
            self.metrics.alerts_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("alert queue full: an alert was dropped");
        }
    }
}
