//! What the system monitor reads and writes: its settings, the views it shows, and (in
//! `rollup`, re-exported here) the hourly rollups that keep the views fast and the DB small.
//! Every reader (the monitor, `homelab status`) goes through here, so they all see the same
//! picture.

use serde::Serialize;
use sqlx::any::AnyRow;

use crate::db::Db;
use crate::error::Result;
use crate::health::{ServiceStatus, status_columns, status_row};
use crate::read::{flag, float, int, req, text};
pub use crate::rollup::{HOUR_MS, RollupReport, rollup};

/// Stores the monitor's defaults where the status view reads them.
pub async fn write_settings(db: &Db, fail_threshold: u32, probe_interval_ms: u64) -> Result<()> {
    let mut tx = db.pool().begin().await?;
    for (name, value) in [
        ("fail_threshold", i64::from(fail_threshold.max(1))),
        (
            "probe_interval_ms",
            i64::try_from(probe_interval_ms).unwrap_or(i64::MAX),
        ),
    ] {
        sqlx::query(
            "INSERT INTO monitor_settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A service the monitor probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub service: String,
    /// `base_url` joined with `health_path`.
    pub url: String,
    /// The service's own interval, if it has one.
    pub interval_ms: Option<i64>,
}

/// Active services with a base URL and a health path.
pub async fn probe_targets(db: &Db) -> Result<Vec<ProbeTarget>> {
    let rows = sqlx::query(
        "SELECT name, base_url, health_path, probe_interval_ms FROM services \
         WHERE lifecycle = 'active' AND base_url IS NOT NULL AND health_path IS NOT NULL \
         ORDER BY name",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let base = req(text(r, "base_url")?, "base_url")?;
            let path = req(text(r, "health_path")?, "health_path")?;
            Ok(ProbeTarget {
                service: req(text(r, "name")?, "name")?,
                url: join_url(&base, &path),
                interval_ms: int(r, "probe_interval_ms")?,
            })
        })
        .collect()
}

/// A latency for people: tenths below 10 ms (a loopback probe takes well under one), whole
/// milliseconds above.
pub fn show_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// `http://h:1/v1` + `/health` → `http://h:1/v1/health`; an absolute path URL wins.
pub fn join_url(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        return path.to_owned();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// A service's status now ([`ServiceStatus`], flattened into the same JSON object) with its
/// uptime and probe latency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceRow {
    #[serde(flatten)]
    pub now: ServiceStatus,
    pub uptime_1h: Option<f64>,
    pub uptime_24h: Option<f64>,
    pub uptime_7d: Option<f64>,
    pub checks_24h: i64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

/// Field access reads through to the status (`row.status`, `row.service`).
impl std::ops::Deref for ServiceRow {
    type Target = ServiceStatus;
    fn deref(&self) -> &ServiceStatus {
        &self.now
    }
}

/// How many services are in each status.
#[derive(Debug, Serialize)]
pub struct Counts {
    pub up: usize,
    pub degraded: usize,
    pub down: usize,
    pub unknown: usize,
    pub inactive: usize,
}

impl Counts {
    /// The whole stack in one word: `down` if any active service is down, else `degraded`
    /// if any is degraded, else `unknown` if none is up, else `ok`.
    pub fn overall(&self) -> &'static str {
        if self.down > 0 {
            "down"
        } else if self.degraded > 0 {
            "degraded"
        } else if self.up == 0 {
            "unknown"
        } else {
            "ok"
        }
    }
}

/// Names joined for speech: "a", "a and b", "a, b and c".
fn spoken_list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The stack's state as one or two sentences to be read aloud (Shortcuts' `/status`):
/// "All 7 services up.", "2 problems: memory is down and web-search is degraded.", with
/// services not checked yet named after. Planned and retired services are left out.
pub fn spoken_status(services: &[ServiceRow]) -> String {
    let named = |status: &str| -> Vec<String> {
        services
            .iter()
            .filter(|s| s.status == status)
            .map(|s| s.service.clone())
            .collect()
    };
    let (down, degraded, unknown) = (named("down"), named("degraded"), named("unknown"));
    let up = services.iter().filter(|s| s.status == "up").count();
    let problems: Vec<String> = down
        .iter()
        .map(|s| format!("{s} is down"))
        .chain(degraded.iter().map(|s| format!("{s} is degraded")))
        .collect();
    let unchecked = match unknown.len() {
        0 => String::new(),
        1 => format!(" {} has not been checked yet.", unknown[0]),
        _ => format!(" {} have not been checked yet.", spoken_list(&unknown)),
    };
    let head = match (problems.len(), up, unknown.len()) {
        (0, 0, 0) => return "No services are registered yet.".to_owned(),
        (0, 0, _) => "No service is up yet.".to_owned(),
        (0, 1, 0) => "The one service is up.".to_owned(),
        (0, n, 0) => format!("All {n} services up."),
        (0, n, u) => format!("{n} of {} services up.", n + u),
        (1, _, _) => format!("1 problem: {}.", problems[0]),
        (k, _, _) => format!("{k} problems: {}.", spoken_list(&problems)),
    };
    format!("{head}{unchecked}")
}

pub fn counts(services: &[ServiceRow]) -> Counts {
    let n = |s: &str| services.iter().filter(|r| r.status == s).count();
    Counts {
        up: n("up"),
        degraded: n("degraded"),
        down: n("down"),
        unknown: n("unknown"),
        inactive: n("planned") + n("retired"),
    }
}

/// Services grouped by layer, in the order of [`crate::spec::Layer::ALL`], empty layers left out.
pub fn by_layer(services: &[ServiceRow]) -> Vec<(&'static str, Vec<&ServiceRow>)> {
    crate::spec::Layer::ALL
        .iter()
        .map(|l| {
            let layer = l.as_str();
            (
                layer,
                services
                    .iter()
                    .filter(|s| s.layer == layer)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect()
}

fn service_select() -> String {
    format!(
        "SELECT {}, u.uptime_1h, u.uptime_24h, u.uptime_7d, u.checks_24h, \
                l.latency_p50_ms, l.latency_p95_ms \
         FROM v_service_status s \
         JOIN v_service_uptime u ON u.service_id = s.service_id \
         JOIN v_service_latency l ON l.service_id = s.service_id",
        status_columns("s")
    )
}

fn service_row(r: &AnyRow) -> Result<ServiceRow> {
    Ok(ServiceRow {
        now: status_row(r)?,
        uptime_1h: float(r, "uptime_1h")?,
        uptime_24h: float(r, "uptime_24h")?,
        uptime_7d: float(r, "uptime_7d")?,
        checks_24h: int(r, "checks_24h")?.unwrap_or(0),
        latency_p50_ms: float(r, "latency_p50_ms")?,
        latency_p95_ms: float(r, "latency_p95_ms")?,
    })
}

/// Every service, by layer and name.
pub async fn services(db: &Db) -> Result<Vec<ServiceRow>> {
    let rows = sqlx::query(&format!("{} ORDER BY s.layer, s.service", service_select()))
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(service_row).collect()
}

/// One service, if it exists.
pub async fn service(db: &Db, name: &str) -> Result<Option<ServiceRow>> {
    let row = sqlx::query(&format!("{} WHERE s.service = $1", service_select()))
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(service_row).transpose()
}

/// One probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRow {
    pub checked_at_ms: i64,
    pub ok: bool,
    pub status_code: Option<i64>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

/// The newest `limit` probes of a service, newest first.
pub async fn recent_checks(db: &Db, service: &str, limit: i64) -> Result<Vec<CheckRow>> {
    let rows = sqlx::query(
        "SELECT hc.checked_at_ms, hc.ok, hc.status_code, hc.latency_ms, hc.error \
         FROM health_checks hc JOIN services s ON s.id = hc.service_id \
         WHERE s.name = $1 ORDER BY hc.checked_at_ms DESC, hc.id DESC LIMIT $2",
    )
    .bind(service)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CheckRow {
                checked_at_ms: req(int(r, "checked_at_ms")?, "checked_at_ms")?,
                ok: req(flag(r, "ok")?, "ok")?,
                status_code: int(r, "status_code")?,
                latency_ms: float(r, "latency_ms")?,
                error: text(r, "error")?,
            })
        })
        .collect()
}

/// Probes of one service in one hour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourRow {
    pub service: String,
    pub hour_ms: i64,
    pub checks: i64,
    pub failures: i64,
    pub latency_ms: Option<f64>,
}

/// Hourly probe buckets since `since_ms` (of one service, or all), by service and hour.
pub async fn hourly(db: &Db, since_ms: i64, service: Option<&str>) -> Result<Vec<HourRow>> {
    const SELECT: &str = "SELECT service, hour_ms, checks, failures, latency_ms \
                          FROM v_service_hourly WHERE hour_ms >= $1";
    let rows = match service {
        Some(name) => {
            sqlx::query(&format!("{SELECT} AND service = $2 ORDER BY hour_ms"))
                .bind(since_ms)
                .bind(name)
                .fetch_all(db.pool())
                .await?
        }
        None => {
            sqlx::query(&format!("{SELECT} ORDER BY service, hour_ms"))
                .bind(since_ms)
                .fetch_all(db.pool())
                .await?
        }
    };
    rows.iter()
        .map(|r| {
            Ok(HourRow {
                service: req(text(r, "service")?, "service")?,
                hour_ms: req(int(r, "hour_ms")?, "hour_ms")?,
                checks: int(r, "checks")?.unwrap_or(0),
                failures: int(r, "failures")?.unwrap_or(0),
                latency_ms: float(r, "latency_ms")?,
            })
        })
        .collect()
}

/// One row of `v_handle_stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandleRow {
    pub handle: String,
    pub strategy: String,
    pub targets: i64,
    pub requests_1h: i64,
    pub errors_1h: i64,
    pub error_rate_1h: Option<f64>,
    pub avg_latency_ms_1h: Option<f64>,
    pub avg_ttft_ms_1h: Option<f64>,
    pub requests_24h: i64,
    pub errors_24h: i64,
    pub error_rate_24h: Option<f64>,
    pub avg_latency_ms_24h: Option<f64>,
    pub p50_latency_ms_24h: Option<f64>,
    pub p95_latency_ms_24h: Option<f64>,
    pub avg_ttft_ms_24h: Option<f64>,
    pub prompt_tokens_24h: i64,
    pub completion_tokens_24h: i64,
    pub tokens_per_s_24h: Option<f64>,
    pub last_request_at_ms: Option<i64>,
}

/// Traffic per handle, by name.
pub async fn handles(db: &Db) -> Result<Vec<HandleRow>> {
    let rows = sqlx::query(
        "SELECT handle, strategy, targets, requests_1h, errors_1h, error_rate_1h, \
                avg_latency_ms_1h, avg_ttft_ms_1h, requests_24h, errors_24h, error_rate_24h, \
                avg_latency_ms_24h, p50_latency_ms_24h, p95_latency_ms_24h, avg_ttft_ms_24h, \
                prompt_tokens_24h, completion_tokens_24h, tokens_per_s_24h, last_request_at_ms \
         FROM v_handle_stats ORDER BY handle",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HandleRow {
                handle: req(text(r, "handle")?, "handle")?,
                strategy: req(text(r, "strategy")?, "strategy")?,
                targets: int(r, "targets")?.unwrap_or(0),
                requests_1h: int(r, "requests_1h")?.unwrap_or(0),
                errors_1h: int(r, "errors_1h")?.unwrap_or(0),
                error_rate_1h: float(r, "error_rate_1h")?,
                avg_latency_ms_1h: float(r, "avg_latency_ms_1h")?,
                avg_ttft_ms_1h: float(r, "avg_ttft_ms_1h")?,
                requests_24h: int(r, "requests_24h")?.unwrap_or(0),
                errors_24h: int(r, "errors_24h")?.unwrap_or(0),
                error_rate_24h: float(r, "error_rate_24h")?,
                avg_latency_ms_24h: float(r, "avg_latency_ms_24h")?,
                p50_latency_ms_24h: float(r, "p50_latency_ms_24h")?,
                p95_latency_ms_24h: float(r, "p95_latency_ms_24h")?,
                avg_ttft_ms_24h: float(r, "avg_ttft_ms_24h")?,
                prompt_tokens_24h: int(r, "prompt_tokens_24h")?.unwrap_or(0),
                completion_tokens_24h: int(r, "completion_tokens_24h")?.unwrap_or(0),
                tokens_per_s_24h: float(r, "tokens_per_s_24h")?,
                last_request_at_ms: int(r, "last_request_at_ms")?,
            })
        })
        .collect()
}

/// One row of `v_handle_users`: a handle's traffic over the last 24 hours from one caller —
/// a virtual key (a device, an app) and the end user the client named, either may be absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandleUserRow {
    pub handle: String,
    pub key_name: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub user_email: Option<String>,
    pub user_role: Option<String>,
    pub requests_24h: i64,
    pub errors_24h: i64,
    pub chats_24h: i64,
    pub prompt_tokens_24h: i64,
    pub completion_tokens_24h: i64,
    pub avg_latency_ms_24h: Option<f64>,
    pub last_request_at_ms: Option<i64>,
}

/// Traffic per caller of `handle` (every handle when `None`) over the last 24 hours, the
/// busiest first.
pub async fn handle_users(db: &Db, handle: Option<&str>) -> Result<Vec<HandleUserRow>> {
    let rows = sqlx::query(
        "SELECT handle, key_name, user_id, user_name, user_email, user_role, requests_24h, \
                errors_24h, chats_24h, prompt_tokens_24h, completion_tokens_24h, \
                avg_latency_ms_24h, last_request_at_ms \
         FROM v_handle_users WHERE (CAST($1 AS TEXT) IS NULL OR handle = $1) \
         ORDER BY handle, requests_24h DESC, user_name, key_name",
    )
    .bind(handle)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HandleUserRow {
                handle: req(text(r, "handle")?, "handle")?,
                key_name: text(r, "key_name")?,
                user_id: text(r, "user_id")?,
                user_name: text(r, "user_name")?,
                user_email: text(r, "user_email")?,
                user_role: text(r, "user_role")?,
                requests_24h: int(r, "requests_24h")?.unwrap_or(0),
                errors_24h: int(r, "errors_24h")?.unwrap_or(0),
                chats_24h: int(r, "chats_24h")?.unwrap_or(0),
                prompt_tokens_24h: int(r, "prompt_tokens_24h")?.unwrap_or(0),
                completion_tokens_24h: int(r, "completion_tokens_24h")?.unwrap_or(0),
                avg_latency_ms_24h: float(r, "avg_latency_ms_24h")?,
                last_request_at_ms: int(r, "last_request_at_ms")?,
            })
        })
        .collect()
}

/// One row of `v_model_inventory` (the same row `homelab models list` reads).
pub use crate::read::InventoryRow as ModelRow;

/// Models, largest memory footprint first.
pub async fn models(db: &Db) -> Result<Vec<ModelRow>> {
    let mut conn = db.pool().acquire().await?;
    crate::read::model_inventory(&mut conn).await
}

/// One row of `v_host_capacity`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub os: Option<String>,
    pub arch: Option<String>,
    pub accelerator: Option<String>,
    pub memory_bytes: Option<i64>,
    pub models: i64,
    pub models_footprint_bytes: i64,
    pub headroom_bytes: Option<i64>,
    pub services: i64,
    /// Models in memory now, the memory they take, and what is left.
    pub loaded_models: i64,
    pub loaded_bytes: i64,
    pub free_bytes: Option<i64>,
}

/// Hosts by name, with the memory their models take.
pub async fn hosts(db: &Db) -> Result<Vec<HostRow>> {
    let rows = sqlx::query(
        "SELECT host, os, arch, accelerator, memory_bytes, models, models_footprint_bytes, \
                headroom_bytes, services, loaded_models, loaded_bytes, free_bytes \
         FROM v_host_capacity ORDER BY host",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(HostRow {
                host: req(text(r, "host")?, "host")?,
                os: text(r, "os")?,
                arch: text(r, "arch")?,
                accelerator: text(r, "accelerator")?,
                memory_bytes: int(r, "memory_bytes")?,
                models: int(r, "models")?.unwrap_or(0),
                models_footprint_bytes: int(r, "models_footprint_bytes")?.unwrap_or(0),
                headroom_bytes: int(r, "headroom_bytes")?,
                services: int(r, "services")?.unwrap_or(0),
                loaded_models: int(r, "loaded_models")?.unwrap_or(0),
                loaded_bytes: int(r, "loaded_bytes")?.unwrap_or(0),
                free_bytes: int(r, "free_bytes")?,
            })
        })
        .collect()
}

/// One row of `v_recent_errors`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRow {
    /// `request`, `health` or `tool` (a failed tool call: subject the tool, target its server).
    pub source: String,
    pub at_ms: i64,
    /// The handle or the service.
    pub subject: Option<String>,
    pub target: Option<String>,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub request_id: Option<String>,
}

/// The newest `limit` errors of the last day, newest first.
pub async fn errors(db: &Db, limit: i64) -> Result<Vec<ErrorRow>> {
    let rows = sqlx::query(
        "SELECT source, at_ms, subject, target, status, error, request_id FROM v_recent_errors \
         ORDER BY at_ms DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ErrorRow {
                source: req(text(r, "source")?, "source")?,
                at_ms: req(int(r, "at_ms")?, "at_ms")?,
                subject: text(r, "subject")?,
                target: text(r, "target")?,
                status: int(r, "status")?,
                error: text(r, "error")?,
                request_id: text(r, "request_id")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_urls_join_without_doubled_slashes() {
        assert_eq!(join_url("http://h:1/", "/health"), "http://h:1/health");
        assert_eq!(join_url("http://h:1", "health"), "http://h:1/health");
        assert_eq!(
            join_url("http://h:1", "http://x/healthz"),
            "http://x/healthz"
        );
    }
}
