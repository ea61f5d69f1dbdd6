//! Hourly rollups of the health checks and the request log.
//!
//! [`rollup`] does two things. It *folds* every complete hour into `health_rollups`,
//! `request_rollups` and the per-hour latency histograms as soon as the hour ends, and moves
//! the fold marks in `monitor_folds` (see migration 0003 for what they mean to the views). It
//! then *prunes*: raw rows older than the retention cutoff that are already folded are
//! deleted. Folding never deletes and pruning never counts, so a crash between the two loses
//! nothing and counts nothing twice; each fold pass is one transaction that covers at most
//! [`FOLD_HOURS`] hours, so catching up on a week of rows never holds the DB for long.
//!
//! Rows written late for an hour already folded (a long request is logged when it ends, with
//! the time it started) are told apart by their id: the fold marks record the highest id seen,
//! and the next pass merges such rows into their hour.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{Backend, Db, push_values};
use crate::error::Result;
use crate::read::{flag, float, int, req, text};

/// One hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// Hours folded per transaction at most.
const FOLD_HOURS: i64 = 6;

/// Ratio between the bounds of a latency bucket: a bucket's value is within
/// (γ − 1)/(γ + 1) < 1 % of every latency in it.
const GAMMA: f64 = 1.02;

/// The bucket of latencies of 0 (or less).
const ZERO_BUCKET: i64 = -1_000_000;

/// Rows per multi-row `INSERT` of buckets (5 columns each).
const BUCKET_ROWS_PER_STATEMENT: usize = 200;

/// The histogram bucket of a latency and the value that stands for it: bucket `i` holds
/// (γ^(i−1), γ^i] and stands for 2·γ^i/(γ + 1).
fn bucket(ms: f64) -> (i64, f64) {
    if ms.is_nan() || ms <= 0.0 {
        return (ZERO_BUCKET, 0.0);
    }
    let i = (ms.ln() / GAMMA.ln()).ceil() as i64;
    (i, 2.0 * GAMMA.powf(i as f64) / (GAMMA + 1.0))
}

fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// What one [`rollup`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RollupReport {
    /// Health checks folded into rollups.
    pub health_rows: u64,
    /// (service, hour) rollups written or merged into.
    pub health_hours: u64,
    /// Request-log rows folded into rollups.
    pub request_rows: u64,
    /// (handle, hour) rollups written or merged into.
    pub request_hours: u64,
    /// Folded health checks deleted for their age.
    pub health_pruned: u64,
    /// Folded request-log rows deleted for their age.
    pub request_pruned: u64,
    /// Tool-call rows deleted for their age (they are not folded: the views read the last
    /// 24 hours of raw rows).
    pub tool_calls_pruned: u64,
}

/// Folds every complete hour before `now_ms`, then deletes folded raw rows of the hours
/// before `cutoff_ms` (the retention).
pub async fn rollup(db: &Db, now_ms: i64, cutoff_ms: i64) -> Result<RollupReport> {
    let until = hour_of(now_ms);
    let mut report = RollupReport::default();
    for source in [Source::Health, Source::Requests] {
        let (rows, groups, pruned) = match source {
            Source::Health => (
                &mut report.health_rows,
                &mut report.health_hours,
                &mut report.health_pruned,
            ),
            Source::Requests => (
                &mut report.request_rows,
                &mut report.request_hours,
                &mut report.request_pruned,
            ),
        };
        loop {
            let pass = fold_pass(db, source, until).await?;
            *rows += pass.rows;
            *groups += pass.groups;
            if pass.caught_up {
                break;
            }
        }
        *pruned = prune(db, source, hour_of(cutoff_ms)).await?;
    }
    report.tool_calls_pruned = prune_tool_calls(db, hour_of(cutoff_ms)).await?;
    Ok(report)
}

/// Deletes the tool calls before `cutoff`, an hour per statement.
async fn prune_tool_calls(db: &Db, cutoff: i64) -> Result<u64> {
    let mut deleted = 0;
    loop {
        let oldest: Option<i64> =
            sqlx::query("SELECT MIN(started_at_ms) AS m FROM tool_calls WHERE started_at_ms < $1")
                .bind(cutoff)
                .fetch_one(db.pool())
                .await?
                .try_get("m")?;
        let Some(oldest) = oldest else { break };
        let end = (hour_of(oldest) + HOUR_MS).min(cutoff);
        deleted += sqlx::query("DELETE FROM tool_calls WHERE started_at_ms < $1")
            .bind(end)
            .execute(db.pool())
            .await?
            .rows_affected();
    }
    Ok(deleted)
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Health,
    Requests,
}

impl Source {
    fn table(self) -> &'static str {
        match self {
            Source::Health => "health_checks",
            Source::Requests => "request_log",
        }
    }

    fn time(self) -> &'static str {
        match self {
            Source::Health => "checked_at_ms",
            Source::Requests => "started_at_ms",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Source::Health => "service_id, checked_at_ms, ok, latency_ms",
            Source::Requests => {
                "handle, started_at_ms, status, error_type, latency_ms, ttft_ms, prompt_tokens, \
                 completion_tokens, generation_ms"
            }
        }
    }
}

struct Pass {
    rows: u64,
    groups: u64,
    caught_up: bool,
}

/// The fold marks of a source: rows with `at < until` and `id <= max_id` are in the rollups.
struct Marks {
    until: i64,
    max_id: i64,
}

impl Marks {
    fn from_row(r: &AnyRow) -> Result<Marks> {
        Ok(Marks {
            until: req(int(r, "folded_until_ms")?, "folded_until_ms")?,
            max_id: req(int(r, "folded_max_id")?, "folded_max_id")?,
        })
    }
}

async fn fold_pass(db: &Db, source: Source, until: i64) -> Result<Pass> {
    let (table, time) = (source.table(), source.time());
    let mut tx = db.pool().begin().await?;
    // Take the write lock first, so no other writer commits between what this pass reads and
    // what it writes, and two monitors never fold the same rows. On Postgres, also wait for
    // inserts in flight: a row whose id is below the highest id seen must not commit later.
    if db.backend() == Backend::Postgres {
        sqlx::query(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await?;
    }
    // The no-op update takes SQLite's write lock (and the row's lock on Postgres).
    let old = Marks::from_row(
        &sqlx::query(
            "UPDATE monitor_folds SET folded_until_ms = folded_until_ms WHERE source = $1 \
             RETURNING folded_until_ms, folded_max_id",
        )
        .bind(table)
        .fetch_one(&mut *tx)
        .await?,
    )?;
    let r = sqlx::query(&format!(
        "SELECT MAX(id) AS max_id, \
                (SELECT MIN({time}) FROM {table} WHERE {time} >= $1 AND {time} < $2) AS first_new, \
                (SELECT MIN({time}) FROM {table} WHERE id > $3 AND {time} + 0 < $1) AS first_late \
         FROM {table}"
    ))
    .bind(old.until)
    .bind(until)
    .bind(old.max_id)
    .fetch_one(&mut *tx)
    .await?;
    let max_id = int(&r, "max_id")?.unwrap_or(0).max(old.max_id);
    let first = [int(&r, "first_new")?, int(&r, "first_late")?]
        .into_iter()
        .flatten()
        .min();
    let new = Marks {
        until: match first {
            Some(t) => (hour_of(t) + FOLD_HOURS * HOUR_MS)
                .min(until)
                .max(old.until),
            None => until.max(old.until),
        },
        max_id,
    };
    // Late rows (`id > max_id`) are found through the primary key: `time + 0` keeps the
    // planner from walking the time index over everything already folded instead.
    let rows = sqlx::query(&format!(
        "SELECT {cols} FROM {table} WHERE {time} >= $1 AND {time} < $2 AND id <= $3 \
         UNION ALL \
         SELECT {cols} FROM {table} WHERE id > $4 AND id <= $3 AND {time} + 0 < $1",
        cols = source.columns()
    ))
    .bind(old.until)
    .bind(new.until)
    .bind(new.max_id)
    .bind(old.max_id)
    .fetch_all(&mut *tx)
    .await?;
    let groups = match source {
        Source::Health => write_health(&mut tx, db.backend(), &rows).await?,
        Source::Requests => write_requests(&mut tx, db.backend(), &rows).await?,
    };
    sqlx::query(
        "UPDATE monitor_folds SET folded_until_ms = $1, folded_max_id = $2 WHERE source = $3",
    )
    .bind(new.until)
    .bind(new.max_id)
    .bind(table)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Pass {
        rows: rows.len() as u64,
        groups,
        caught_up: new.until >= until,
    })
}

/// A latency histogram: bucket → (value, samples).
type Histogram = BTreeMap<i64, (f64, i64)>;

fn add_sample(h: &mut Histogram, ms: f64) {
    let (b, v) = bucket(ms);
    h.entry(b).or_insert((v, 0)).1 += 1;
}

#[derive(Default)]
struct HealthHour {
    checks: i64,
    failures: i64,
    latency_sum_ms: f64,
    latency_samples: i64,
    buckets: Histogram,
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

async fn write_health(tx: &mut Tx, backend: Backend, rows: &[AnyRow]) -> Result<u64> {
    let mut hours: BTreeMap<(i64, i64), HealthHour> = BTreeMap::new();
    for r in rows {
        let key = (
            req(int(r, "service_id")?, "service_id")?,
            hour_of(req(int(r, "checked_at_ms")?, "checked_at_ms")?),
        );
        let h = hours.entry(key).or_default();
        h.checks += 1;
        if !req(flag(r, "ok")?, "ok")? {
            h.failures += 1;
        } else if let Some(ms) = float(r, "latency_ms")? {
            h.latency_sum_ms += ms;
            h.latency_samples += 1;
            add_sample(&mut h.buckets, ms);
        }
    }
    let mut buckets = Vec::new();
    for ((service_id, hour), h) in &hours {
        sqlx::query(
            "INSERT INTO health_rollups \
                 (service_id, hour_ms, checks, failures, latency_sum_ms, latency_samples) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (service_id, hour_ms) DO UPDATE SET \
                 checks = health_rollups.checks + excluded.checks, \
                 failures = health_rollups.failures + excluded.failures, \
                 latency_sum_ms = health_rollups.latency_sum_ms + excluded.latency_sum_ms, \
                 latency_samples = health_rollups.latency_samples + excluded.latency_samples",
        )
        .bind(service_id)
        .bind(hour)
        .bind(h.checks)
        .bind(h.failures)
        .bind(h.latency_sum_ms)
        .bind(h.latency_samples)
        .execute(&mut **tx)
        .await?;
        buckets.extend(
            h.buckets
                .iter()
                .map(|(b, (v, n))| (Key::Service(*service_id), *hour, *b, *v, *n)),
        );
    }
    write_buckets(
        tx,
        backend,
        "health_latency_buckets",
        "service_id",
        &buckets,
    )
    .await?;
    Ok(hours.len() as u64)
}

#[derive(Default)]
struct RequestHour {
    requests: i64,
    errors: i64,
    latency_sum_ms: f64,
    ttft_sum_ms: f64,
    ttft_samples: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    generation_ms: f64,
    generation_tokens: i64,
    last_at_ms: i64,
    buckets: Histogram,
}

async fn write_requests(tx: &mut Tx, backend: Backend, rows: &[AnyRow]) -> Result<u64> {
    let mut hours: BTreeMap<(String, i64), RequestHour> = BTreeMap::new();
    for r in rows {
        let at = req(int(r, "started_at_ms")?, "started_at_ms")?;
        let h = hours
            .entry((text(r, "handle")?.unwrap_or_default(), hour_of(at)))
            .or_default();
        h.requests += 1;
        if int(r, "status")?.unwrap_or(0) >= 400 || text(r, "error_type")?.is_some() {
            h.errors += 1;
        }
        let latency = float(r, "latency_ms")?.unwrap_or(0.0);
        h.latency_sum_ms += latency;
        add_sample(&mut h.buckets, latency);
        let ttft = float(r, "ttft_ms")?;
        if let Some(t) = ttft {
            h.ttft_sum_ms += t;
            h.ttft_samples += 1;
        }
        h.prompt_tokens += int(r, "prompt_tokens")?.unwrap_or(0);
        let completion = int(r, "completion_tokens")?.unwrap_or(0);
        h.completion_tokens += completion;
        // Only measured spans, of at least two tokens, make a rate (as in v_handle_stats).
        if let Some(g) = float(r, "generation_ms")?.filter(|g| *g > 0.0)
            && completion > 1
        {
            h.generation_ms += g;
            h.generation_tokens += completion;
        }
        h.last_at_ms = h.last_at_ms.max(at);
    }
    let mut buckets = Vec::new();
    for ((handle, hour), h) in &hours {
        sqlx::query(
            "INSERT INTO request_rollups (handle, hour_ms, requests, errors, latency_sum_ms, \
                 ttft_sum_ms, ttft_samples, prompt_tokens, completion_tokens, generation_ms, \
                 generation_tokens, last_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (handle, hour_ms) DO UPDATE SET \
                 requests = request_rollups.requests + excluded.requests, \
                 errors = request_rollups.errors + excluded.errors, \
                 latency_sum_ms = request_rollups.latency_sum_ms + excluded.latency_sum_ms, \
                 ttft_sum_ms = request_rollups.ttft_sum_ms + excluded.ttft_sum_ms, \
                 ttft_samples = request_rollups.ttft_samples + excluded.ttft_samples, \
                 prompt_tokens = request_rollups.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = request_rollups.completion_tokens + excluded.completion_tokens, \
                 generation_ms = request_rollups.generation_ms + excluded.generation_ms, \
                 generation_tokens = request_rollups.generation_tokens + excluded.generation_tokens, \
                 last_at_ms = CASE WHEN request_rollups.last_at_ms IS NULL \
                                     OR excluded.last_at_ms > request_rollups.last_at_ms \
                                   THEN excluded.last_at_ms ELSE request_rollups.last_at_ms END",
        )
        .bind(handle)
        .bind(hour)
        .bind(h.requests)
        .bind(h.errors)
        .bind(h.latency_sum_ms)
        .bind(h.ttft_sum_ms)
        .bind(h.ttft_samples)
        .bind(h.prompt_tokens)
        .bind(h.completion_tokens)
        .bind(h.generation_ms)
        .bind(h.generation_tokens)
        .bind(h.last_at_ms)
        .execute(&mut **tx)
        .await?;
        buckets.extend(
            h.buckets
                .iter()
                .map(|(b, (v, n))| (Key::Handle(handle), *hour, *b, *v, *n)),
        );
    }
    write_buckets(tx, backend, "request_latency_buckets", "handle", &buckets).await?;
    Ok(hours.len() as u64)
}

/// What a histogram belongs to.
#[derive(Clone, Copy)]
enum Key<'a> {
    Service(i64),
    Handle(&'a str),
}

/// Adds (key, hour, bucket, value, samples) rows into a bucket table.
async fn write_buckets(
    tx: &mut Tx,
    backend: Backend,
    table: &str,
    key: &str,
    rows: &[(Key<'_>, i64, i64, f64, i64)],
) -> Result<()> {
    for chunk in rows.chunks(BUCKET_ROWS_PER_STATEMENT) {
        let mut sql =
            format!("INSERT INTO {table} ({key}, hour_ms, bucket, latency_ms, samples) VALUES ");
        push_values(&mut sql, chunk.len(), 5, backend);
        sql.push_str(&format!(
            " ON CONFLICT ({key}, hour_ms, bucket) DO UPDATE SET \
             samples = {table}.samples + excluded.samples"
        ));
        let mut q = sqlx::query(&sql);
        for (k, hour, b, v, n) in chunk {
            q = match k {
                Key::Service(id) => q.bind(*id),
                Key::Handle(h) => q.bind(h.to_string()),
            };
            q = q.bind(*hour).bind(*b).bind(*v).bind(*n);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Deletes folded rows of the hours before `cutoff` (an hour start), an hour per statement.
async fn prune(db: &Db, source: Source, cutoff: i64) -> Result<u64> {
    let (table, time) = (source.table(), source.time());
    let marks = Marks::from_row(
        &sqlx::query("SELECT folded_until_ms, folded_max_id FROM monitor_folds WHERE source = $1")
            .bind(table)
            .fetch_one(db.pool())
            .await?,
    )?;
    let (limit, max_id) = (cutoff.min(marks.until), marks.max_id);
    let mut deleted = 0;
    loop {
        let oldest: Option<i64> = sqlx::query(&format!(
            "SELECT MIN({time}) AS m FROM {table} WHERE {time} < $1 AND id <= $2"
        ))
        .bind(limit)
        .bind(max_id)
        .fetch_one(db.pool())
        .await?
        .try_get("m")?;
        let Some(oldest) = oldest else { break };
        let end = (hour_of(oldest) + HOUR_MS).min(limit);
        deleted += sqlx::query(&format!(
            "DELETE FROM {table} WHERE {time} < $1 AND id <= $2"
        ))
        .bind(end)
        .bind(max_id)
        .execute(db.pool())
        .await?
        .rows_affected();
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_stands_within_one_percent_of_its_latencies() {
        let mut ms = 0.01;
        while ms < 3_600_000.0 {
            let (b, v) = bucket(ms);
            assert!((v - ms).abs() / ms < 0.01, "{ms} ms → bucket {b} = {v}");
            assert_eq!(bucket(v).0, b, "a bucket's value falls in the bucket");
            ms *= 1.003;
        }
        assert_eq!(bucket(0.0), (ZERO_BUCKET, 0.0));
        assert_eq!(bucket(-1.0).1, 0.0);
        assert!(bucket(10.0).0 < bucket(10.5).0);
    }
}
