//! Writing a [`SystemSpec`] into the DB: one transaction, idempotent, with a report.
//!
//! Entities are matched by their natural key (host, service, endpoint and handle names;
//! model id + host). A matching row is updated only if a field differs, so applying the same
//! spec twice changes nothing and reports everything unchanged. Apply never deletes: a host
//! missing from the file stays in the DB. A handle's targets are the file's list, replaced
//! as a whole when it differs.
//!
//! Errors name the field as a path into the spec (`handles[1].targets[0].endpoint`), which
//! [`crate::formats::Parsed::locate`] turns into a file line.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::db::Db;
use crate::error::{Error, InputError, Result};
use crate::read;
use crate::spec::{Api, EndpointSpec, HandleSpec, SystemSpec, TargetSpec};

/// What happened to one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub kind: &'static str,
    pub name: String,
    pub action: Action,
    /// For updates: `field: old → new`.
    pub details: Vec<String>,
}

/// Everything an apply did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ApplyReport {
    pub changes: Vec<Change>,
}

impl ApplyReport {
    fn push(&mut self, kind: &'static str, name: &str, action: Action, details: Vec<String>) {
        self.changes.push(Change {
            kind,
            name: name.to_owned(),
            action,
            details,
        });
    }

    /// How many entities had each action.
    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }

    /// Whether the apply changed anything.
    pub fn is_noop(&self) -> bool {
        self.changes.iter().all(|c| c.action == Action::Unchanged)
    }
}

impl fmt::Display for ApplyReport {
    /// `+` created, `~` updated (with the fields), unchanged entities only counted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            match c.action {
                Action::Created => writeln!(f, "+ {} {}", c.kind, c.name)?,
                Action::Updated => {
                    writeln!(f, "~ {} {}", c.kind, c.name)?;
                    for d in &c.details {
                        writeln!(f, "    {d}")?;
                    }
                }
                Action::Unchanged => {}
            }
        }
        write!(
            f,
            "{} created, {} updated, {} unchanged",
            self.count(Action::Created),
            self.count(Action::Updated),
            self.count(Action::Unchanged)
        )
    }
}

/// Applies `spec` in one transaction. With `dry_run` the transaction is rolled back and the
/// report says what would have changed. Any error rolls everything back.
pub async fn apply(db: &Db, spec: &SystemSpec, dry_run: bool) -> Result<ApplyReport> {
    validate(spec)?;
    let mut tx = db.begin_write().await?;
    let report = apply_in(&mut tx, spec).await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(report)
}

fn err(field: String, message: impl Into<String>) -> Error {
    Error::Input(InputError::new(message).field(field))
}

/// Checks what can be checked without the DB: names, duplicates, URLs, numbers.
fn validate(spec: &SystemSpec) -> Result<()> {
    fn unique<'a>(section: &str, key: &str, names: impl Iterator<Item = &'a str>) -> Result<()> {
        let mut seen = HashSet::new();
        for (i, n) in names.enumerate() {
            if n.trim().is_empty() {
                return Err(err(format!("{section}[{i}].{key}"), "must not be empty"));
            }
            if !seen.insert(n) {
                return Err(err(
                    format!("{section}[{i}].{key}"),
                    format!("`{n}` appears twice"),
                ));
            }
        }
        Ok(())
    }
    unique("hosts", "name", spec.hosts.iter().map(|h| h.name.as_str()))?;
    unique(
        "services",
        "name",
        spec.services.iter().map(|s| s.name.as_str()),
    )?;
    unique(
        "endpoints",
        "name",
        spec.endpoints.iter().map(|e| e.name.as_str()),
    )?;
    unique(
        "handles",
        "handle",
        spec.handles.iter().map(|h| h.handle.as_str()),
    )?;
    let mut model_keys = HashSet::new();
    for (i, m) in spec.models.iter().enumerate() {
        if m.model_id.trim().is_empty() {
            return Err(err(format!("models[{i}].model_id"), "must not be empty"));
        }
        if !model_keys.insert((m.model_id.as_str(), m.host.as_deref())) {
            return Err(err(
                format!("models[{i}].model_id"),
                "this model and host appear twice",
            ));
        }
    }
    for (i, s) in spec.services.iter().enumerate() {
        if let Some(u) = &s.base_url {
            check_url(u, format!("services[{i}].base_url"))?;
        }
        if s.probe_interval_ms.is_some_and(|v| v < 1000) {
            return Err(err(
                format!("services[{i}].probe_interval_ms"),
                "must be at least 1000 (one second)",
            ));
        }
        if s.fail_threshold.is_some_and(|v| v < 1) {
            return Err(err(
                format!("services[{i}].fail_threshold"),
                "must be at least 1",
            ));
        }
    }
    for (i, e) in spec.endpoints.iter().enumerate() {
        check_url(&e.base_url, format!("endpoints[{i}].base_url"))?;
        if e.offers.as_ref().is_some_and(Vec::is_empty) {
            return Err(err(
                format!("endpoints[{i}].offers"),
                "an empty list offers nothing; leave `offers` out for what its `api` serves",
            ));
        }
    }
    for (i, h) in spec.handles.iter().enumerate() {
        if h.targets.is_empty() {
            return Err(err(
                format!("handles[{i}].targets"),
                "a handle needs at least one target",
            ));
        }
        if h.cache_ttl_ms.is_some_and(|v| v <= 0) {
            return Err(err(
                format!("handles[{i}].cache_ttl_ms"),
                "must be greater than 0",
            ));
        }
        if h.context_fallback.as_deref() == Some(h.handle.as_str()) {
            return Err(err(
                format!("handles[{i}].context_fallback"),
                "must name another handle",
            ));
        }
        for (j, t) in h.targets.iter().enumerate() {
            let at = |f: &str| format!("handles[{i}].targets[{j}].{f}");
            if t.endpoint.is_none() && t.base_url.is_none() {
                return Err(err(
                    at("endpoint"),
                    "give `endpoint` (a name) or `base_url`",
                ));
            }
            if let Some(u) = &t.base_url {
                check_url(u, at("base_url"))?;
            }
            if t.model.trim().is_empty() {
                return Err(err(at("model"), "must not be empty"));
            }
            if t.weight < 0 {
                return Err(err(at("weight"), "must not be negative"));
            }
            for (name, v) in [
                ("timeout_ms", t.timeout_ms),
                ("connect_timeout_ms", t.connect_timeout_ms),
                ("first_byte_timeout_ms", t.first_byte_timeout_ms),
                ("idle_timeout_ms", t.idle_timeout_ms),
                ("rpm", t.rpm),
                ("tpm", t.tpm),
                ("context_length", t.context_length),
            ] {
                if v.is_some_and(|v| v <= 0) {
                    return Err(err(at(name), "must be greater than 0"));
                }
            }
            if t.max_tools_bytes.is_some_and(|v| v < 0) {
                return Err(err(at("max_tools_bytes"), "must not be negative"));
            }
        }
    }
    Ok(())
}

fn check_url(u: &str, field: String) -> Result<()> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => Ok(()),
        Ok(_) => Err(err(field, format!("`{u}` is not an http(s) URL"))),
        Err(e) => Err(err(field, format!("`{u}` is not a URL: {e}"))),
    }
}

/// `field: old → new` for each top-level field that differs.
fn diff<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(o)), Ok(serde_json::Value::Object(n))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["changed".into()];
    };
    let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    let show = |v: Option<&serde_json::Value>| match v {
        None => "(unset)".to_owned(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 60 {
                format!("{}…", &s[..s.floor_char_boundary(60)])
            } else {
                s
            }
        }
    };
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| format!("{k}: {} → {}", show(o.get(k)), show(n.get(k))))
        .collect()
}

async fn id_by_name(conn: &mut AnyConnection, table: &str, name: &str) -> Result<Option<i64>> {
    // `table` is one of ours, never input.
    let row = sqlx::query(&format!("SELECT id FROM {table} WHERE name = $1"))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get::<i64, _>("id")?),
        None => None,
    })
}

async fn resolve(
    conn: &mut AnyConnection,
    table: &'static str,
    name: Option<&str>,
    field: String,
) -> Result<Option<i64>> {
    let Some(name) = name else { return Ok(None) };
    match id_by_name(conn, table, name).await? {
        Some(id) => Ok(Some(id)),
        None => {
            let kind = table.trim_end_matches('s');
            Err(err(
                field,
                format!("{kind} `{name}` does not exist (declare it first)"),
            ))
        }
    }
}

async fn apply_in(conn: &mut AnyConnection, spec: &SystemSpec) -> Result<ApplyReport> {
    let now = crate::now_ms();
    let mut report = ApplyReport::default();

    let existing: BTreeMap<String, _> = read::hosts(conn)
        .await?
        .into_iter()
        .map(|(id, h)| (h.name.clone(), (id, h)))
        .collect();
    for h in &spec.hosts {
        let mem = h.memory_bytes.map(|b| b.as_i64());
        match existing.get(&h.name) {
            Some((_, old)) if old == h => report.push("host", &h.name, Action::Unchanged, vec![]),
            old => {
                sqlx::query(
                    "INSERT INTO hosts (name, description, address, os, arch, accelerator, \
                     memory_bytes, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
                     ON CONFLICT (name) DO UPDATE SET description = excluded.description, \
                     address = excluded.address, os = excluded.os, arch = excluded.arch, \
                     accelerator = excluded.accelerator, memory_bytes = excluded.memory_bytes, \
                     updated_at_ms = excluded.updated_at_ms",
                )
                .bind(&h.name)
                .bind(&h.description)
                .bind(&h.address)
                .bind(&h.os)
                .bind(&h.arch)
                .bind(&h.accelerator)
                .bind(mem)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                match old {
                    Some((_, old)) => report.push("host", &h.name, Action::Updated, diff(old, h)),
                    None => report.push("host", &h.name, Action::Created, vec![]),
                }
            }
        }
    }

    let existing: BTreeMap<String, _> = read::services(conn)
        .await?
        .into_iter()
        .map(|(id, s)| (s.name.clone(), (id, s)))
        .collect();
    for (i, s) in spec.services.iter().enumerate() {
        let host_id = resolve(
            conn,
            "hosts",
            s.host.as_deref(),
            format!("services[{i}].host"),
        )
        .await?;
        let mut wanted = s.clone();
        wanted.docs.sort();
        wanted.docs.dedup();
        let id = match existing.get(&s.name) {
            Some((_, old)) if *old == wanted => {
                report.push("service", &s.name, Action::Unchanged, vec![]);
                continue;
            }
            old => {
                let row = sqlx::query(
                    "INSERT INTO services (name, layer, host_id, kind, base_url, health_path, \
                     unit, lifecycle, description, created_at_ms, updated_at_ms, \
                     probe_interval_ms, fail_threshold) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12) \
                     ON CONFLICT (name) DO UPDATE SET layer = excluded.layer, \
                     host_id = excluded.host_id, kind = excluded.kind, \
                     base_url = excluded.base_url, health_path = excluded.health_path, \
                     unit = excluded.unit, lifecycle = excluded.lifecycle, \
                     description = excluded.description, updated_at_ms = excluded.updated_at_ms, \
                     probe_interval_ms = excluded.probe_interval_ms, \
                     fail_threshold = excluded.fail_threshold \
                     RETURNING id",
                )
                .bind(&s.name)
                .bind(s.layer.as_str())
                .bind(host_id)
                .bind(s.kind.as_str())
                .bind(&s.base_url)
                .bind(&s.health_path)
                .bind(&s.unit)
                .bind(s.lifecycle.as_str())
                .bind(&s.description)
                .bind(now)
                .bind(s.probe_interval_ms)
                .bind(s.fail_threshold)
                .fetch_one(&mut *conn)
                .await?;
                let id = row.try_get::<i64, _>("id")?;
                match old {
                    Some((_, old)) => {
                        report.push("service", &s.name, Action::Updated, diff(old, &wanted));
                        sqlx::query("DELETE FROM docs WHERE service_id = $1")
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                    }
                    None => report.push("service", &s.name, Action::Created, vec![]),
                }
                id
            }
        };
        for d in &wanted.docs {
            sqlx::query("INSERT INTO docs (service_id, kind, location) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(&d.kind)
                .bind(&d.location)
                .execute(&mut *conn)
                .await?;
        }
    }

    for (i, e) in spec.endpoints.iter().enumerate() {
        let service_id = resolve(
            conn,
            "services",
            e.service.as_deref(),
            format!("endpoints[{i}].service"),
        )
        .await?;
        upsert_endpoint(
            conn,
            e,
            service_id,
            true,
            format!("endpoints[{i}]"),
            now,
            &mut report,
        )
        .await?;
    }

    let existing: BTreeMap<String, _> = read::models(conn)
        .await?
        .into_iter()
        .map(|(id, m)| ((m.model_id.clone(), m.host.clone()), (id, m)))
        .map(|((model_id, host), v)| (format!("{model_id}\u{0}{}", host.unwrap_or_default()), v))
        .collect();
    for (i, m) in spec.models.iter().enumerate() {
        let host_id = resolve(
            conn,
            "hosts",
            m.host.as_deref(),
            format!("models[{i}].host"),
        )
        .await?;
        let key = format!("{}\u{0}{}", m.model_id, m.host.clone().unwrap_or_default());
        let name = match &m.host {
            Some(h) => format!("{} on {h}", m.model_id),
            None => m.model_id.clone(),
        };
        let size = m.size_on_disk_bytes.map(|b| b.as_i64());
        let mem = m.memory_footprint_bytes.map(|b| b.as_i64());
        match existing.get(&key) {
            Some((_, old)) if old == m => report.push("model", &name, Action::Unchanged, vec![]),
            old => {
                // The unique index is on (model_id, COALESCE(host_id, 0)) in both dialects,
                // so the conflict target names that expression.
                sqlx::query(
                    "INSERT INTO models (model_id, host_id, family, format, quantization, params, \
                     context_length, size_on_disk_bytes, memory_footprint_bytes, source_path, \
                     cache_path, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
                     ON CONFLICT (model_id, COALESCE(host_id, 0)) DO UPDATE SET \
                     family = excluded.family, format = excluded.format, \
                     quantization = excluded.quantization, params = excluded.params, \
                     context_length = excluded.context_length, \
                     size_on_disk_bytes = excluded.size_on_disk_bytes, \
                     memory_footprint_bytes = excluded.memory_footprint_bytes, \
                     source_path = excluded.source_path, cache_path = excluded.cache_path, \
                     updated_at_ms = excluded.updated_at_ms",
                )
                .bind(&m.model_id)
                .bind(host_id)
                .bind(&m.family)
                .bind(&m.format)
                .bind(&m.quantization)
                .bind(m.params)
                .bind(m.context_length)
                .bind(size)
                .bind(mem)
                .bind(&m.source_path)
                .bind(&m.cache_path)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                match old {
                    Some((_, old)) => report.push("model", &name, Action::Updated, diff(old, m)),
                    None => report.push("model", &name, Action::Created, vec![]),
                }
            }
        }
    }

    let existing: BTreeMap<String, _> = read::handles(conn, false)
        .await?
        .into_iter()
        .map(|(id, h)| (h.handle.clone(), (id, h)))
        .collect();
    for (i, h) in spec.handles.iter().enumerate() {
        let mut resolved = Vec::with_capacity(h.targets.len());
        for (j, t) in h.targets.iter().enumerate() {
            let at = format!("handles[{i}].targets[{j}]");
            let (endpoint_id, endpoint_name) =
                target_endpoint(conn, spec, t, &at, now, &mut report).await?;
            let mut normal = t.clone();
            normal.endpoint = Some(endpoint_name);
            normal.base_url = None;
            normal.api = None;
            normal.auth_env = None;
            resolved.push((endpoint_id, normal));
        }
        let wanted = HandleSpec {
            targets: resolved.iter().map(|(_, t)| t.clone()).collect(),
            ..h.clone()
        };
        let handle_id = match existing.get(&h.handle) {
            Some((_, old)) if *old == wanted => {
                report.push("handle", &h.handle, Action::Unchanged, vec![]);
                continue;
            }
            old => {
                let row = sqlx::query(
                    "INSERT INTO handles (name, description, strategy, context_fallback, \
                     cache_ttl_ms, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6) \
                     ON CONFLICT (name) DO UPDATE SET description = excluded.description, \
                     strategy = excluded.strategy, \
                     context_fallback = excluded.context_fallback, \
                     cache_ttl_ms = excluded.cache_ttl_ms, updated_at_ms = excluded.updated_at_ms \
                     RETURNING id",
                )
                .bind(&h.handle)
                .bind(&h.description)
                .bind(h.strategy.as_str())
                .bind(&h.context_fallback)
                .bind(h.cache_ttl_ms)
                .bind(now)
                .fetch_one(&mut *conn)
                .await?;
                let id = row.try_get::<i64, _>("id")?;
                match old {
                    Some((_, old)) => {
                        sqlx::query("DELETE FROM handle_targets WHERE handle_id = $1")
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                        report.push("handle", &h.handle, Action::Updated, diff(old, &wanted));
                    }
                    None => report.push("handle", &h.handle, Action::Created, vec![]),
                }
                id
            }
        };
        for (position, (endpoint_id, t)) in resolved.iter().enumerate() {
            let params = t
                .params
                .as_ref()
                .map(|p| serde_json::Value::Object(p.clone()).to_string());
            sqlx::query(
                "INSERT INTO handle_targets (handle_id, position, endpoint_id, upstream_model, \
                 priority, weight, timeout_ms, connect_timeout_ms, first_byte_timeout_ms, \
                 idle_timeout_ms, rpm, tpm, params, max_tools_bytes, over_tools, context_length) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            )
            .bind(handle_id)
            .bind(position as i64)
            .bind(endpoint_id)
            .bind(&t.model)
            .bind(t.priority)
            .bind(t.weight)
            .bind(t.timeout_ms)
            .bind(t.connect_timeout_ms)
            .bind(t.first_byte_timeout_ms)
            .bind(t.idle_timeout_ms)
            .bind(t.rpm)
            .bind(t.tpm)
            .bind(params)
            .bind(t.max_tools_bytes)
            .bind(t.over_tools.as_str())
            .bind(t.context_length)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(report)
}

/// The endpoint a target uses, creating or updating it from the target's inline fields.
async fn target_endpoint(
    conn: &mut AnyConnection,
    spec: &SystemSpec,
    t: &TargetSpec,
    at: &str,
    now: i64,
    report: &mut ApplyReport,
) -> Result<(i64, String)> {
    let existing = read::endpoints(conn).await?;
    let by_name = |n: &str| existing.iter().find(|(_, e)| e.name == n);
    let by_url = |u: &str| existing.iter().find(|(_, e)| same_url(&e.base_url, u));
    let Some(url) = &t.base_url else {
        // Validation guarantees a name when there is no URL.
        let name = t.endpoint.as_deref().unwrap_or_default();
        return match by_name(name) {
            Some((id, e)) => Ok((*id, e.name.clone())),
            None => Err(err(
                format!("{at}.endpoint"),
                format!("endpoint `{name}` does not exist; declare it or give `base_url`"),
            )),
        };
    };
    let found = match &t.endpoint {
        Some(n) => by_name(n),
        None => by_url(url),
    };
    if let Some(n) = &t.endpoint
        && let Some(declared) = spec.endpoints.iter().find(|e| e.name == *n)
        && !same_url(&declared.base_url, url)
    {
        return Err(err(
            format!("{at}.base_url"),
            format!(
                "endpoint `{n}` is declared with base_url `{}`",
                declared.base_url
            ),
        ));
    }
    let (name, service) = match found {
        Some((_, e)) => (e.name.clone(), e.service.clone()),
        None => {
            let name = match &t.endpoint {
                Some(n) => n.clone(),
                None => free_name(&existing, &auto_name(url)),
            };
            (name, None)
        }
    };
    let old = found.map(|(_, e)| e);
    let wanted = EndpointSpec {
        name,
        service: service.clone(),
        base_url: url.trim_end_matches('/').to_owned(),
        api: t.api.or(old.map(|e| e.api)).unwrap_or(Api::Openai),
        auth_env: t
            .auth_env
            .clone()
            .or_else(|| old.and_then(|e| e.auth_env.clone())),
        offers: old.and_then(|e| e.offers.clone()),
    };
    let service_id = match &service {
        Some(s) => id_by_name(conn, "services", s).await?,
        None => None,
    };
    let id = upsert_endpoint(conn, &wanted, service_id, false, at.to_owned(), now, report).await?;
    Ok((id, wanted.name))
}

/// Creates or updates one endpoint. `report_unchanged` is false for endpoints named inline
/// by targets, which are reported only when they change.
async fn upsert_endpoint(
    conn: &mut AnyConnection,
    e: &EndpointSpec,
    service_id: Option<i64>,
    report_unchanged: bool,
    at: String,
    now: i64,
    report: &mut ApplyReport,
) -> Result<i64> {
    let existing = read::endpoints(conn).await?;
    if let Some((_, other)) = existing
        .iter()
        .find(|(_, o)| o.name != e.name && same_url(&o.base_url, &e.base_url))
    {
        return Err(err(
            format!("{at}.base_url"),
            format!(
                "`{}` is already the URL of endpoint `{}`",
                e.base_url, other.name
            ),
        ));
    }
    let base_url = e.base_url.trim_end_matches('/');
    let mut wanted = e.clone();
    wanted.base_url = base_url.to_owned();
    match existing.iter().find(|(_, o)| o.name == e.name) {
        Some((id, old)) if *old == wanted => {
            if report_unchanged {
                report.push("endpoint", &e.name, Action::Unchanged, vec![]);
            }
            Ok(*id)
        }
        old => {
            // The URL is nobody else's (checked above), so only the name can conflict.
            let row = sqlx::query(
                "INSERT INTO endpoints (name, service_id, base_url, api, auth_env, created_at_ms, \
                 updated_at_ms, offers) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) \
                 ON CONFLICT (name) DO UPDATE SET service_id = excluded.service_id, \
                 base_url = excluded.base_url, api = excluded.api, auth_env = excluded.auth_env, \
                 updated_at_ms = excluded.updated_at_ms, offers = excluded.offers RETURNING id",
            )
            .bind(&e.name)
            .bind(service_id)
            .bind(base_url)
            .bind(e.api.as_str())
            .bind(&e.auth_env)
            .bind(now)
            .bind(
                e.offers
                    .as_ref()
                    .map(|o| serde_json::to_string(o).unwrap_or_default()),
            )
            .fetch_one(&mut *conn)
            .await?;
            match old {
                Some((_, old)) => {
                    report.push("endpoint", &e.name, Action::Updated, diff(old, &wanted))
                }
                None => report.push("endpoint", &e.name, Action::Created, vec![]),
            }
            Ok(row.try_get::<i64, _>("id")?)
        }
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// `http://127.0.0.1:4010/v1` → `127.0.0.1:4010/v1`.
fn auto_name(url: &str) -> String {
    let s = url.split_once("://").map_or(url, |(_, rest)| rest);
    s.trim_end_matches('/').to_owned()
}

fn free_name(existing: &[(i64, EndpointSpec)], base: &str) -> String {
    let taken = |n: &str| existing.iter().any(|(_, e)| e.name == n);
    if !taken(base) {
        return base.to_owned();
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken(n))
        .unwrap_or_else(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_fields() {
        #[derive(Serialize)]
        struct S {
            a: i32,
            b: Option<String>,
        }
        let d = diff(&S { a: 1, b: None }, &S { a: 2, b: None });
        assert_eq!(d, vec!["a: 1 → 2"]);
        let d = diff(
            &S { a: 1, b: None },
            &S {
                a: 1,
                b: Some("x".into()),
            },
        );
        assert_eq!(d, vec!["b: null → \"x\""]);
    }

    #[test]
    fn auto_names() {
        assert_eq!(auto_name("http://127.0.0.1:4010/v1/"), "127.0.0.1:4010/v1");
        let existing = vec![(
            1,
            EndpointSpec {
                name: "h:1/v1".into(),
                service: None,
                base_url: "http://h:1/v1".into(),
                api: Api::Openai,
                auth_env: None,
                offers: None,
            },
        )];
        assert_eq!(free_name(&existing, "h:1/v1"), "h:1/v1-2");
    }
}
