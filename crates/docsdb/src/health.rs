//! Health-check rows and the service status view.

use serde::Serialize;
use sqlx::Row;

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
    .execute(db.pool())
    .await?;
    Ok(())
}

/// One row of `v_service_status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    pub layer: String,
    pub host: Option<String>,
    /// `up`, `down`, `unknown` (never probed), or the lifecycle (`planned`, `retired`).
    pub status: String,
    pub last_checked_at_ms: Option<i64>,
    pub last_ok: Option<bool>,
    pub last_latency_ms: Option<f64>,
    pub last_error: Option<String>,
}

/// The status of every service, by layer and name.
pub async fn statuses(db: &Db) -> Result<Vec<ServiceStatus>> {
    let rows = sqlx::query(
        "SELECT service, layer, host, status, last_checked_at_ms, last_ok, last_latency_ms, \
                last_error FROM v_service_status ORDER BY layer, service",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ServiceStatus {
                service: req(text(r, "service")?, "service")?,
                layer: req(text(r, "layer")?, "layer")?,
                host: text(r, "host")?,
                status: req(text(r, "status")?, "status")?,
                last_checked_at_ms: int(r, "last_checked_at_ms")?,
                last_ok: flag(r, "last_ok")?,
                last_latency_ms: float(r, "last_latency_ms")?,
                last_error: text(r, "last_error")?,
            })
        })
        .collect()
}
