//! Alerts: a status change becomes one message to every configured sink — a generic JSON
//! webhook or an ntfy-style plain-text POST — delivered off the probe path, with retries and
//! doubling back-off.

use std::sync::Arc;
use std::time::Duration;

use docsdb::health::ServiceStatus;
use serde::Serialize;

use crate::state::AppState;

/// Which changes are sent: into `down`, out of `down`, and — when asked — into or out of
/// `degraded`. A service must fail the threshold of probes in a row to be `down`, so one
/// failed probe is never an alert.
pub fn worth_telling(from: &str, to: &str, degraded_too: bool) -> bool {
    let watched = |s: &str| matches!(s, "up" | "down" | "degraded");
    if !watched(to) || from == to {
        return false;
    }
    match (from, to) {
        (_, "down") => true,
        ("down", _) => true,
        (_, "degraded") | ("degraded", _) => degraded_too,
        _ => false,
    }
}

/// One status change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub event: &'static str,
    pub service: String,
    pub layer: String,
    pub host: Option<String>,
    pub from: String,
    pub to: String,
    pub at_ms: i64,
    pub since_ms: Option<i64>,
    pub failures_in_row: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub message: String,
}

impl Alert {
    pub fn from_row(row: &ServiceStatus, from: &str, at_ms: i64) -> Self {
        let message = match (row.status.as_str(), &row.last_error) {
            ("down", Some(e)) => format!(
                "{} is down ({} failed probes in a row): {e}",
                row.service, row.failures_in_row
            ),
            ("up", _) => format!("{} is up again (was {from})", row.service),
            (to, Some(e)) => format!("{} is {to}: {e}", row.service),
            (to, None) => format!("{} is {to}", row.service),
        };
        Alert {
            event: "service_status_changed",
            service: row.service.clone(),
            layer: row.layer.clone(),
            host: row.host.clone(),
            from: from.to_owned(),
            to: row.status.clone(),
            at_ms,
            since_ms: row.since_ms,
            failures_in_row: row.failures_in_row,
            status_code: row.last_status_code,
            error: row.last_error.clone(),
            message,
        }
    }
}

/// Where alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Json(String),
    Ntfy(String),
}

/// Delivers alerts from the queue until shutdown, then what is still queued.
pub async fn run(state: Arc<AppState>, mut rx: tokio::sync::mpsc::Receiver<Alert>) {
    let sinks: Vec<Sink> = state
        .config
        .webhooks
        .iter()
        .filter(|u| !u.is_empty())
        .map(|u| Sink::Json(u.clone()))
        .chain(
            state
                .config
                .ntfy
                .iter()
                .filter(|u| !u.is_empty())
                .map(|u| Sink::Ntfy(u.clone())),
        )
        .collect();
    let send = |alert: Alert| {
        for sink in &sinks {
            let (st, sink, alert) = (state.clone(), sink.clone(), alert.clone());
            state
                .tasks
                .spawn(async move { deliver(&st, &sink, &alert).await });
        }
    };
    let mut stop = std::pin::pin!(state.tasks.cancelled());
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(alert) => send(alert),
                None => return,
            },
            () = &mut stop => break,
        }
    }
    while let Ok(alert) = rx.try_recv() {
        send(alert);
    }
}

async fn deliver(state: &AppState, sink: &Sink, alert: &Alert) {
    let attempts = state.config.webhook_attempts.max(1);
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=attempts {
        let req = match sink {
            Sink::Json(url) => state.http.post(url).json(alert),
            Sink::Ntfy(url) => {
                let (priority, tags) = match alert.to.as_str() {
                    "down" => ("high", "rotating_light"),
                    "up" => ("default", "white_check_mark"),
                    _ => ("default", "warning"),
                };
                state
                    .http
                    .post(url)
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("Title", format!("homelab: {} {}", alert.service, alert.to))
                    .header("Priority", priority)
                    .header("Tags", tags)
                    .body(alert.message.clone())
            }
        };
        let url = match sink {
            Sink::Json(u) | Sink::Ntfy(u) => u,
        };
        match req.timeout(state.config.webhook_timeout).send().await {
            Ok(r) if r.status().is_success() => {
                state.metrics.alert(true);
                tracing::info!(service = %alert.service, to = %alert.to, url = %url, "alert sent");
                return;
            }
            Ok(r) => {
                tracing::warn!(url = %url, status = %r.status(), attempt, "alert refused")
            }
            Err(e) => tracing::warn!(url = %url, error = %e, attempt, "alert not delivered"),
        }
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    state.metrics.alert(false);
}

#[cfg(test)]
mod tests {
    use super::worth_telling;

    #[test]
    fn only_confirmed_changes_are_told() {
        assert!(worth_telling("up", "down", false));
        assert!(worth_telling("degraded", "down", false));
        assert!(worth_telling("unknown", "down", false));
        assert!(worth_telling("down", "up", false));
        assert!(!worth_telling("up", "degraded", false));
        assert!(!worth_telling("degraded", "up", false));
        assert!(worth_telling("up", "degraded", true));
        assert!(!worth_telling("unknown", "up", false));
        assert!(!worth_telling("down", "unknown", false));
        assert!(!worth_telling("down", "down", true));
    }
}
