//! What the system monitor reads and writes: its settings, the views it shows, and the
//! hourly rollups that keep the DB small. Every reader (the monitor, `homelab status`) goes
//! through here, so they all see the same picture.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::Db;
use crate::error::Result;
use crate::health::{ServiceStatus, status_columns, status_row};
use crate::read::{flag, float, int, req, text};

/// One hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

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
                p50_latency_ms_24h, p95_latency_ms_24h, avg_ttft_ms_24h, prompt_tokens_24h, \
                completion_tokens_24h, tokens_per_s_24h, last_request_at_ms \
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

/// One row of `v_model_inventory`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub model_id: String,
    pub host: Option<String>,
    pub format: Option<String>,
    pub quantization: Option<String>,
    pub context_length: Option<i64>,
    pub size_on_disk_bytes: Option<i64>,
    pub memory_footprint_bytes: Option<i64>,
    pub host_memory_bytes: Option<i64>,
    pub host_headroom_bytes: Option<i64>,
}

/// Models, largest memory footprint first.
pub async fn models(db: &Db) -> Result<Vec<ModelRow>> {
    let rows = sqlx::query(
        "SELECT model_id, host, format, quantization, context_length, size_on_disk_bytes, \
                memory_footprint_bytes, host_memory_bytes, host_headroom_bytes \
         FROM v_model_inventory",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ModelRow {
                model_id: req(text(r, "model_id")?, "model_id")?,
                host: text(r, "host")?,
                format: text(r, "format")?,
                quantization: text(r, "quantization")?,
                context_length: int(r, "context_length")?,
                size_on_disk_bytes: int(r, "size_on_disk_bytes")?,
                memory_footprint_bytes: int(r, "memory_footprint_bytes")?,
                host_memory_bytes: int(r, "host_memory_bytes")?,
                host_headroom_bytes: int(r, "host_headroom_bytes")?,
            })
        })
        .collect()
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
}

/// Hosts by name, with the memory their models take.
pub async fn hosts(db: &Db) -> Result<Vec<HostRow>> {
    let rows = sqlx::query(
        "SELECT host, os, arch, accelerator, memory_bytes, models, models_footprint_bytes, \
                headroom_bytes, services FROM v_host_capacity ORDER BY host",
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
            })
        })
        .collect()
}

/// One row of `v_recent_errors`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRow {
    /// `request` or `health`.
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

/// What one rollup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RollupReport {
    /// Health checks folded and deleted.
    pub health_rows: u64,
    /// (service, hour) rollups written.
    pub health_hours: u64,
    /// Request-log rows folded and deleted.
    pub request_rows: u64,
    /// (handle, hour) rollups written.
    pub request_hours: u64,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Folds raw health checks and request-log rows from whole hours before `cutoff_ms` into
/// hourly rollups and deletes them, one hour per transaction (a crash loses nothing and
/// counts nothing twice). An hour that already has a rollup (rows that arrived late) is
/// merged: counts add up, percentiles are weighted by count.
pub async fn rollup(db: &Db, cutoff_ms: i64) -> Result<RollupReport> {
    let cutoff = cutoff_ms.div_euclid(HOUR_MS) * HOUR_MS;
    let mut report = RollupReport::default();
    while let Some(hour) = oldest_hour(db, "health_checks", "checked_at_ms", cutoff).await? {
        let (rows, hours) = rollup_health_hour(db, hour).await?;
        report.health_rows += rows;
        report.health_hours += hours;
    }
    while let Some(hour) = oldest_hour(db, "request_log", "started_at_ms", cutoff).await? {
        let (rows, hours) = rollup_request_hour(db, hour).await?;
        report.request_rows += rows;
        report.request_hours += hours;
    }
    Ok(report)
}

/// The start of the hour of the oldest row of `table` before `cutoff`, if any.
async fn oldest_hour(db: &Db, table: &str, time_col: &str, cutoff: i64) -> Result<Option<i64>> {
    let oldest: Option<i64> = sqlx::query(&format!(
        "SELECT MIN({time_col}) AS m FROM {table} WHERE {time_col} < $1"
    ))
    .bind(cutoff)
    .fetch_one(db.pool())
    .await?
    .try_get("m")?;
    Ok(oldest.map(|t| t.div_euclid(HOUR_MS) * HOUR_MS))
}

/// Merges a percentile of `n_new` samples into one of `n_old`, weighted by count.
fn merge_pct(old: Option<f64>, n_old: i64, new: Option<f64>, n_new: i64) -> Option<f64> {
    match (old, new) {
        (Some(a), Some(b)) => {
            Some((a * n_old as f64 + b * n_new as f64) / (n_old + n_new).max(1) as f64)
        }
        (a, b) => a.or(b),
    }
}

async fn rollup_health_hour(db: &Db, hour: i64) -> Result<(u64, u64)> {
    let mut tx = db.pool().begin().await?;
    let rows = sqlx::query(
        "SELECT service_id, ok, latency_ms FROM health_checks \
         WHERE checked_at_ms >= $1 AND checked_at_ms < $2",
    )
    .bind(hour)
    .bind(hour + HOUR_MS)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_service: std::collections::BTreeMap<i64, (i64, i64, Vec<f64>)> =
        std::collections::BTreeMap::new();
    for r in &rows {
        let id = req(int(r, "service_id")?, "service_id")?;
        let e = by_service.entry(id).or_default();
        e.0 += 1;
        if !req(flag(r, "ok")?, "ok")? {
            e.1 += 1;
        } else if let Some(l) = float(r, "latency_ms")? {
            e.2.push(l);
        }
    }
    let service_hours = by_service.len() as u64;
    for (service_id, (checks, failures, mut lat)) in by_service {
        lat.sort_by(f64::total_cmp);
        let (p50, p95, max) = (pct(&lat, 0.5), pct(&lat, 0.95), lat.last().copied());
        let old = sqlx::query(
            "SELECT checks, latency_p50_ms, latency_p95_ms, latency_max_ms FROM health_rollups \
             WHERE service_id = $1 AND hour_ms = $2",
        )
        .bind(service_id)
        .bind(hour)
        .fetch_optional(&mut *tx)
        .await?;
        let (p50, p95, max) = match &old {
            Some(o) => {
                let n = int(o, "checks")?.unwrap_or(0);
                (
                    merge_pct(float(o, "latency_p50_ms")?, n, p50, checks),
                    merge_pct(float(o, "latency_p95_ms")?, n, p95, checks),
                    match (float(o, "latency_max_ms")?, max) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    },
                )
            }
            None => (p50, p95, max),
        };
        sqlx::query(
            "INSERT INTO health_rollups \
                 (service_id, hour_ms, checks, failures, latency_p50_ms, latency_p95_ms, latency_max_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (service_id, hour_ms) DO UPDATE SET \
                 checks = health_rollups.checks + excluded.checks, \
                 failures = health_rollups.failures + excluded.failures, \
                 latency_p50_ms = excluded.latency_p50_ms, \
                 latency_p95_ms = excluded.latency_p95_ms, \
                 latency_max_ms = excluded.latency_max_ms",
        )
        .bind(service_id)
        .bind(hour)
        .bind(checks)
        .bind(failures)
        .bind(p50)
        .bind(p95)
        .bind(max)
        .execute(&mut *tx)
        .await?;
    }
    let deleted =
        sqlx::query("DELETE FROM health_checks WHERE checked_at_ms >= $1 AND checked_at_ms < $2")
            .bind(hour)
            .bind(hour + HOUR_MS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    tx.commit().await?;
    Ok((deleted, service_hours))
}

#[derive(Default)]
struct ReqAgg {
    requests: i64,
    errors: i64,
    latency: Vec<f64>,
    ttft: Vec<f64>,
    prompt: i64,
    completion: i64,
    generation_ms: f64,
}

async fn rollup_request_hour(db: &Db, hour: i64) -> Result<(u64, u64)> {
    let mut tx = db.pool().begin().await?;
    let rows = sqlx::query(
        "SELECT handle, status, error_type, latency_ms, ttft_ms, prompt_tokens, completion_tokens \
         FROM request_log WHERE started_at_ms >= $1 AND started_at_ms < $2",
    )
    .bind(hour)
    .bind(hour + HOUR_MS)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_handle: std::collections::BTreeMap<String, ReqAgg> =
        std::collections::BTreeMap::new();
    for r in &rows {
        let handle = text(r, "handle")?.unwrap_or_default();
        let a = by_handle.entry(handle).or_default();
        a.requests += 1;
        let status = int(r, "status")?.unwrap_or(0);
        if status >= 400 || text(r, "error_type")?.is_some() {
            a.errors += 1;
        }
        let latency = float(r, "latency_ms")?.unwrap_or(0.0);
        a.latency.push(latency);
        let ttft = float(r, "ttft_ms")?;
        if let Some(t) = ttft {
            a.ttft.push(t);
        }
        a.prompt += int(r, "prompt_tokens")?.unwrap_or(0);
        let completion = int(r, "completion_tokens")?.unwrap_or(0);
        a.completion += completion;
        if completion > 0 {
            a.generation_ms += (latency - ttft.unwrap_or(0.0)).max(0.0);
        }
    }
    let hours = by_handle.len() as u64;
    for (handle, mut a) in by_handle {
        a.latency.sort_by(f64::total_cmp);
        a.ttft.sort_by(f64::total_cmp);
        let old = sqlx::query(
            "SELECT requests, latency_p50_ms, latency_p95_ms, ttft_p50_ms FROM request_rollups \
             WHERE handle = $1 AND hour_ms = $2",
        )
        .bind(&handle)
        .bind(hour)
        .fetch_optional(&mut *tx)
        .await?;
        let (mut p50, mut p95, mut t50) = (
            pct(&a.latency, 0.5),
            pct(&a.latency, 0.95),
            pct(&a.ttft, 0.5),
        );
        if let Some(o) = &old {
            let n = int(o, "requests")?.unwrap_or(0);
            p50 = merge_pct(float(o, "latency_p50_ms")?, n, p50, a.requests);
            p95 = merge_pct(float(o, "latency_p95_ms")?, n, p95, a.requests);
            t50 = merge_pct(float(o, "ttft_p50_ms")?, n, t50, a.requests);
        }
        sqlx::query(
            "INSERT INTO request_rollups (handle, hour_ms, requests, errors, latency_p50_ms, \
                 latency_p95_ms, ttft_p50_ms, prompt_tokens, completion_tokens, generation_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (handle, hour_ms) DO UPDATE SET \
                 requests = request_rollups.requests + excluded.requests, \
                 errors = request_rollups.errors + excluded.errors, \
                 latency_p50_ms = excluded.latency_p50_ms, \
                 latency_p95_ms = excluded.latency_p95_ms, \
                 ttft_p50_ms = excluded.ttft_p50_ms, \
                 prompt_tokens = request_rollups.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = request_rollups.completion_tokens + excluded.completion_tokens, \
                 generation_ms = request_rollups.generation_ms + excluded.generation_ms",
        )
        .bind(&handle)
        .bind(hour)
        .bind(a.requests)
        .bind(a.errors)
        .bind(p50)
        .bind(p95)
        .bind(t50)
        .bind(a.prompt)
        .bind(a.completion)
        .bind(a.generation_ms)
        .execute(&mut *tx)
        .await?;
    }
    let deleted =
        sqlx::query("DELETE FROM request_log WHERE started_at_ms >= $1 AND started_at_ms < $2")
            .bind(hour)
            .bind(hour + HOUR_MS)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    tx.commit().await?;
    Ok((deleted, hours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), Some(50.0));
        assert_eq!(pct(&v, 0.95), Some(95.0));
        assert_eq!(pct(&[7.0], 0.95), Some(7.0));
        assert_eq!(pct(&[], 0.5), None);
    }

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
