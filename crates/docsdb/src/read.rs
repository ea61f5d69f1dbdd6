//! Reading the registry back: for export, for listing, and for [`crate::apply`] to compare
//! what the DB holds with what a file says.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::error::{Error, Result};
use crate::spec::{
    ByteSize, DocSpec, EndpointSpec, HandleSpec, HostSpec, ModelSpec, ServiceSpec, SystemSpec,
    TargetSpec,
};

/// Reads an optional text column.
pub(crate) fn text(row: &AnyRow, col: &str) -> Result<Option<String>> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}

/// Reads an optional integer column.
pub(crate) fn int(row: &AnyRow, col: &str) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

/// Reads a required column.
pub(crate) fn req<T>(v: Option<T>, col: &str) -> Result<T> {
    v.ok_or_else(|| Error::Conflict(format!("column `{col}` is NULL where a value is required")))
}

/// Reads a flag: BOOLEAN in Postgres, INTEGER 0/1 in SQLite.
pub(crate) fn flag(row: &AnyRow, col: &str) -> Result<Option<bool>> {
    match row.try_get::<Option<bool>, _>(col) {
        Ok(v) => Ok(v),
        Err(_) => Ok(row.try_get::<Option<i64>, _>(col)?.map(|v| v != 0)),
    }
}

/// Reads an optional floating-point column (SQLite may hand back an integer).
pub(crate) fn float(row: &AnyRow, col: &str) -> Result<Option<f64>> {
    match row.try_get::<Option<f64>, _>(col) {
        Ok(v) => Ok(v),
        Err(_) => Ok(row.try_get::<Option<i64>, _>(col)?.map(|v| v as f64)),
    }
}

fn size(row: &AnyRow, col: &str) -> Result<Option<ByteSize>> {
    Ok(int(row, col)?.map(|v| ByteSize(v.max(0) as u64)))
}

fn parse_enum<T: std::str::FromStr<Err = String>>(v: Option<String>, col: &str) -> Result<T> {
    req(v, col)?.parse().map_err(Error::Conflict)
}

/// Every host, by name, with its id.
pub async fn hosts(conn: &mut AnyConnection) -> Result<Vec<(i64, HostSpec)>> {
    let rows = sqlx::query(
        "SELECT id, name, description, address, os, arch, accelerator, memory_bytes \
         FROM hosts ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("id")?,
                HostSpec {
                    name: req(text(r, "name")?, "name")?,
                    description: text(r, "description")?,
                    address: text(r, "address")?,
                    os: text(r, "os")?,
                    arch: text(r, "arch")?,
                    accelerator: text(r, "accelerator")?,
                    memory_bytes: size(r, "memory_bytes")?,
                },
            ))
        })
        .collect()
}

/// Every service with its docs, by name.
pub async fn services(conn: &mut AnyConnection) -> Result<Vec<(i64, ServiceSpec)>> {
    let rows = sqlx::query(
        "SELECT s.id, s.name, s.layer, h.name AS host, s.kind, s.base_url, s.health_path, \
                s.unit, s.lifecycle, s.description, s.probe_interval_ms, s.fail_threshold \
         FROM services s LEFT JOIN hosts h ON h.id = s.host_id ORDER BY s.name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let docs = sqlx::query("SELECT service_id, kind, location FROM docs ORDER BY kind, location")
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let mut service_docs = Vec::new();
        for d in docs
            .iter()
            .filter(|d| d.try_get::<i64, _>("service_id").ok() == Some(id))
        {
            service_docs.push(DocSpec {
                kind: req(text(d, "kind")?, "kind")?,
                location: req(text(d, "location")?, "location")?,
            });
        }
        out.push((
            id,
            ServiceSpec {
                name: req(text(r, "name")?, "name")?,
                layer: parse_enum(text(r, "layer")?, "layer")?,
                host: text(r, "host")?,
                kind: parse_enum(text(r, "kind")?, "kind")?,
                base_url: text(r, "base_url")?,
                health_path: text(r, "health_path")?,
                unit: text(r, "unit")?,
                lifecycle: parse_enum(text(r, "lifecycle")?, "lifecycle")?,
                description: text(r, "description")?,
                probe_interval_ms: int(r, "probe_interval_ms")?,
                fail_threshold: int(r, "fail_threshold")?,
                docs: service_docs,
            },
        ));
    }
    Ok(out)
}

/// Every endpoint, by name.
pub async fn endpoints(conn: &mut AnyConnection) -> Result<Vec<(i64, EndpointSpec)>> {
    let rows = sqlx::query(
        "SELECT e.id, e.name, s.name AS service, e.base_url, e.api, e.auth_env, e.offers \
         FROM endpoints e LEFT JOIN services s ON s.id = e.service_id ORDER BY e.name",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("id")?,
                EndpointSpec {
                    name: req(text(r, "name")?, "name")?,
                    service: text(r, "service")?,
                    base_url: req(text(r, "base_url")?, "base_url")?,
                    api: parse_enum(text(r, "api")?, "api")?,
                    auth_env: text(r, "auth_env")?,
                    offers: offers(text(r, "offers")?)?,
                },
            ))
        })
        .collect()
}

/// An endpoint's stored `offers` (a JSON array of names).
fn offers(stored: Option<String>) -> Result<Option<Vec<crate::spec::Offer>>> {
    stored
        .map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| Error::Conflict(format!("stored endpoint offers `{s}`: {e}")))
        })
        .transpose()
}

/// Every model, largest memory footprint first.
pub async fn models(conn: &mut AnyConnection) -> Result<Vec<(i64, ModelSpec)>> {
    let rows = sqlx::query(
        "SELECT m.id, m.model_id, h.name AS host, m.family, m.format, m.quantization, m.params, \
                m.context_length, m.size_on_disk_bytes, m.memory_footprint_bytes, \
                m.source_path, m.cache_path \
         FROM models m LEFT JOIN hosts h ON h.id = m.host_id \
         ORDER BY m.memory_footprint_bytes DESC NULLS LAST, m.model_id, h.name",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("id")?,
                ModelSpec {
                    model_id: req(text(r, "model_id")?, "model_id")?,
                    host: text(r, "host")?,
                    family: text(r, "family")?,
                    format: text(r, "format")?,
                    quantization: text(r, "quantization")?,
                    params: int(r, "params")?,
                    context_length: int(r, "context_length")?,
                    size_on_disk_bytes: size(r, "size_on_disk_bytes")?,
                    memory_footprint_bytes: size(r, "memory_footprint_bytes")?,
                    source_path: text(r, "source_path")?,
                    cache_path: text(r, "cache_path")?,
                },
            ))
        })
        .collect()
}

/// Every handle with its targets in order. Targets name their endpoint; with
/// `self_contained` they also carry the endpoint's URL, API and auth variable, so that the
/// handle can be imported into a DB that has no such endpoint yet (`handles.jsonl`).
pub async fn handles(
    conn: &mut AnyConnection,
    self_contained: bool,
) -> Result<Vec<(i64, HandleSpec)>> {
    let rows = sqlx::query(
        "SELECT id, name, description, strategy, context_fallback, cache_ttl_ms FROM handles \
         ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let targets = sqlx::query(
        "SELECT t.handle_id, e.name AS endpoint, e.base_url, e.api, e.auth_env, t.upstream_model, \
                t.priority, t.weight, t.timeout_ms, t.connect_timeout_ms, t.first_byte_timeout_ms, \
                t.idle_timeout_ms, t.rpm, t.tpm, t.params, t.max_tools_bytes, t.over_tools, \
                t.context_length \
         FROM handle_targets t JOIN endpoints e ON e.id = t.endpoint_id \
         ORDER BY t.handle_id, t.position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: i64 = r.try_get("id")?;
        let mut ts = Vec::new();
        for t in targets
            .iter()
            .filter(|t| t.try_get::<i64, _>("handle_id").ok() == Some(id))
        {
            let params = match text(t, "params")? {
                Some(p) => Some(
                    serde_json::from_str(&p)
                        .map_err(|e| Error::Conflict(format!("stored target params: {e}")))?,
                ),
                None => None,
            };
            let mut spec = TargetSpec::on_endpoint(
                &req(text(t, "endpoint")?, "endpoint")?,
                &req(text(t, "upstream_model")?, "upstream_model")?,
            );
            spec.priority = int(t, "priority")?.unwrap_or(0);
            spec.weight = int(t, "weight")?.unwrap_or(1);
            spec.timeout_ms = int(t, "timeout_ms")?;
            spec.connect_timeout_ms = int(t, "connect_timeout_ms")?;
            spec.first_byte_timeout_ms = int(t, "first_byte_timeout_ms")?;
            spec.idle_timeout_ms = int(t, "idle_timeout_ms")?;
            spec.rpm = int(t, "rpm")?;
            spec.tpm = int(t, "tpm")?;
            spec.params = params;
            spec.max_tools_bytes = int(t, "max_tools_bytes")?;
            spec.over_tools = parse_enum(text(t, "over_tools")?, "over_tools")?;
            spec.context_length = int(t, "context_length")?;
            if self_contained {
                spec.base_url = text(t, "base_url")?;
                spec.api = Some(parse_enum(text(t, "api")?, "api")?);
                spec.auth_env = text(t, "auth_env")?;
            }
            ts.push(spec);
        }
        out.push((
            id,
            HandleSpec {
                context_fallback: text(r, "context_fallback")?,
                cache_ttl_ms: int(r, "cache_ttl_ms")?,
                handle: req(text(r, "name")?, "name")?,
                description: text(r, "description")?,
                strategy: parse_enum(text(r, "strategy")?, "strategy")?,
                targets: ts,
            },
        ));
    }
    Ok(out)
}

/// The whole registry as one spec (what `system.yaml` export writes).
pub async fn load_spec(conn: &mut AnyConnection) -> Result<SystemSpec> {
    Ok(SystemSpec {
        hosts: hosts(conn).await?.into_iter().map(|(_, h)| h).collect(),
        services: services(conn).await?.into_iter().map(|(_, s)| s).collect(),
        endpoints: endpoints(conn).await?.into_iter().map(|(_, e)| e).collect(),
        models: models(conn).await?.into_iter().map(|(_, m)| m).collect(),
        handles: handles(conn, false)
            .await?
            .into_iter()
            .map(|(_, h)| h)
            .collect(),
    })
}

/// One row of `v_model_inventory`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InventoryRow {
    pub model_id: String,
    pub host: Option<String>,
    pub format: Option<String>,
    pub quantization: Option<String>,
    pub context_length: Option<i64>,
    pub size_on_disk_bytes: Option<i64>,
    pub memory_footprint_bytes: Option<i64>,
    pub host_memory_bytes: Option<i64>,
    pub host_headroom_bytes: Option<i64>,
    /// In memory now (`model_residency`).
    pub loaded: bool,
    pub loaded_by: Option<String>,
    pub loaded_at_ms: Option<i64>,
    /// Memory the host's loaded models take, and what is left of the host's memory.
    pub host_loaded_bytes: i64,
    pub host_free_bytes: Option<i64>,
}

/// The model inventory view, largest memory footprint first.
pub async fn model_inventory(conn: &mut AnyConnection) -> Result<Vec<InventoryRow>> {
    let rows = sqlx::query(
        "SELECT model_id, host, format, quantization, context_length, size_on_disk_bytes, \
                memory_footprint_bytes, host_memory_bytes, host_headroom_bytes, loaded, loaded_by, \
                loaded_at_ms, host_loaded_bytes, host_free_bytes \
         FROM v_model_inventory \
         ORDER BY memory_footprint_bytes DESC NULLS LAST, model_id, host",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(InventoryRow {
                model_id: req(text(r, "model_id")?, "model_id")?,
                host: text(r, "host")?,
                format: text(r, "format")?,
                quantization: text(r, "quantization")?,
                context_length: int(r, "context_length")?,
                size_on_disk_bytes: int(r, "size_on_disk_bytes")?,
                memory_footprint_bytes: int(r, "memory_footprint_bytes")?,
                host_memory_bytes: int(r, "host_memory_bytes")?,
                host_headroom_bytes: int(r, "host_headroom_bytes")?,
                loaded: int(r, "loaded")?.unwrap_or(0) != 0,
                loaded_by: text(r, "loaded_by")?,
                loaded_at_ms: int(r, "loaded_at_ms")?,
                host_loaded_bytes: int(r, "host_loaded_bytes")?.unwrap_or(0),
                host_free_bytes: int(r, "host_free_bytes")?,
            })
        })
        .collect()
}

/// A cheap summary of the routing tables (handles, targets, endpoints, keys, and the models
/// whose context windows routing reads): it changes whenever one of them does, so a reader
/// reloads only then.
pub async fn routing_fingerprint(db: &crate::db::Db) -> Result<Vec<i64>> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM handles) AS a, \
                (SELECT COALESCE(MAX(updated_at_ms), 0) FROM handles) AS b, \
                (SELECT COUNT(*) FROM handle_targets) AS c, \
                (SELECT COUNT(*) FROM endpoints) AS d, \
                (SELECT COALESCE(MAX(updated_at_ms), 0) FROM endpoints) AS e, \
                (SELECT COUNT(*) FROM api_keys) AS f, \
                (SELECT COALESCE(MAX(revoked_at_ms), 0) FROM api_keys) AS g, \
                (SELECT COUNT(*) FROM models) AS h, \
                (SELECT COALESCE(MAX(updated_at_ms), 0) FROM models) AS i",
    )
    .fetch_one(db.pool())
    .await?;
    ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .map(|c| Ok(row.try_get::<i64, _>(*c)?))
        .collect()
}

/// When each handle was created, by name.
pub async fn handle_created_at(
    conn: &mut AnyConnection,
) -> Result<std::collections::HashMap<String, i64>> {
    let rows = sqlx::query("SELECT name, created_at_ms FROM handles")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get::<i64, _>("created_at_ms")?)))
        .collect()
}
