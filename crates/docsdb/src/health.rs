//! Health-check rows and the service status view.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::read::{flag, float, int, req, text};

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub ok: bool,
    pub status_code: Option<u16>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

/// Records a probe of the service named `service` at `checked_at_ms`.
pub async fn record(db: &Db, service: &str, checked_at_ms: i64, check: &Check) -> Result<()> {
    let id = sqlx::query("SELECT id FROM services WHERE name = $1")
        .bind(service)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "service",
            name: service.to_owned(),
        })?
        .try_get::<i64, _>("id")?;
    sqlx::query(
        "INSERT INTO health_checks (service_id, checked_at_ms, ok, status_code, latency_ms, error) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(checked_at_ms)
    .bind(check.ok)
    .bind(check.status_code.map(i64::from))
    .bind(check.latency_ms)
    .bind(&check.error)
    .persistent(db.backend().caches_nullable_floats())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// One row of `v_service_status`: a service and its status now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    pub layer: String,
    pub host: Option<String>,
    pub kind: String,
    pub base_url: Option<String>,
    pub health_path: Option<String>,
    /// `up`, `degraded`, `down`, `unknown`, or the lifecycle (`planned`, `retired`).
    pub status: String,
    /// When the current run of successes (or failures) began.
    pub since_ms: Option<i64>,
    pub failures_in_row: i64,
    pub fail_threshold: i64,
    pub probe_interval_ms: i64,
    /// The last probe is older than three intervals.
    pub stale: bool,
    pub last_checked_at_ms: Option<i64>,
    pub last_ok: Option<bool>,
    pub last_status_code: Option<i64>,
    pub last_latency_ms: Option<f64>,
    pub last_error: Option<String>,
}

impl ServiceStatus {
    /// The last probe's error, while the service is failing.
    pub fn current_error(&self) -> Option<&str> {
        self.last_error
            .as_deref()
            .filter(|_| self.last_ok == Some(false))
    }
}

/// The columns [`status_row`] reads, qualified by `alias`.
pub(crate) fn status_columns(alias: &str) -> String {
    [
        "service",
        "layer",
        "host",
        "kind",
        "base_url",
        "health_path",
        "status",
        "since_ms",
        "failures_in_row",
        "fail_threshold",
        "probe_interval_ms",
        "stale",
        "last_checked_at_ms",
        "last_ok",
        "last_status_code",
        "last_latency_ms",
        "last_error",
    ]
    .map(|c| format!("{alias}.{c}"))
    .join(", ")
}

/// Reads the [`status_columns`] of a row.
pub(crate) fn status_row(r: &AnyRow) -> Result<ServiceStatus> {
    Ok(ServiceStatus {
        service: req(text(r, "service")?, "service")?,
        layer: req(text(r, "layer")?, "layer")?,
        host: text(r, "host")?,
        kind: req(text(r, "kind")?, "kind")?,
        base_url: text(r, "base_url")?,
        health_path: text(r, "health_path")?,
        status: req(text(r, "status")?, "status")?,
        since_ms: int(r, "since_ms")?,
        failures_in_row: int(r, "failures_in_row")?.unwrap_or(0),
        fail_threshold: int(r, "fail_threshold")?.unwrap_or(3),
        probe_interval_ms: int(r, "probe_interval_ms")?.unwrap_or(15_000),
        stale: flag(r, "stale")?.unwrap_or(false),
        last_checked_at_ms: int(r, "last_checked_at_ms")?,
        last_ok: flag(r, "last_ok")?,
        last_status_code: int(r, "last_status_code")?,
        last_latency_ms: float(r, "last_latency_ms")?,
        last_error: text(r, "last_error")?,
    })
}

/// The status of every service, by layer and name.
pub async fn statuses(db: &Db) -> Result<Vec<ServiceStatus>> {
    let rows = sqlx::query(&format!(
        "SELECT {} FROM v_service_status s ORDER BY s.layer, s.service",
        status_columns("s")
    ))
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(status_row).collect()
}

/// The status of one service, if it exists: what the prober reads after each probe (only
/// this view, not the uptime and latency windows).
pub async fn status(db: &Db, service: &str) -> Result<Option<ServiceStatus>> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM v_service_status s WHERE s.service = $1",
        status_columns("s")
    ))
    .bind(service)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(status_row).transpose()
}
