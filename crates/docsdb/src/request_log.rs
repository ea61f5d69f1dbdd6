//! The request log: one row per client request, written in batches.
//!
//! [`insert_batch`] writes many rows in one transaction (multi-row `INSERT`s).
//! [`RequestLogWriter`] puts a bounded channel in front of it so that a request never waits
//! on the DB: [`RequestLogWriter::log`] either queues the row at once or drops it and counts
//! the drop; a background task writes what is queued in batches, and
//! [`RequestLogWriter::close`] writes everything still queued before it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::db::{Backend, Db};
use crate::error::Result;

/// Tokens (prompt and completion) the key `key_name` has used in requests since `since_ms`.
pub async fn tokens_used_by_key(db: &Db, key_name: &str, since_ms: i64) -> Result<u64> {
    use sqlx::Row;
    let used: Option<i64> = sqlx::query(
        "SELECT CAST(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) AS BIGINT) AS n \
         FROM request_log WHERE key_name = $1 AND started_at_ms >= $2",
    )
    .bind(key_name)
    .bind(since_ms)
    .fetch_one(db.pool())
    .await?
    .try_get("n")?;
    Ok(used.unwrap_or(0).max(0) as u64)
}

/// The newest `limit` rows of the request log, newest last.
pub async fn recent(db: &Db, limit: i64) -> Result<Vec<RequestLogRow>> {
    use crate::read::{flag, float, int, req, text};
    let rows = sqlx::query(
        "SELECT * FROM (SELECT id, request_id, started_at_ms, key_name, route, handle, target, \
         upstream_model, status, error_type, attempts, latency_ms, ttft_ms, prompt_tokens, \
         completion_tokens, streamed, generation_ms, user_id, user_name, user_email, user_role, \
         chat_id FROM request_log ORDER BY id DESC LIMIT $1) \
         AS newest ORDER BY id",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    let count = |v: Option<i64>| v.map(|n| n.max(0) as u64);
    rows.iter()
        .map(|r| {
            Ok(RequestLogRow {
                request_id: req(text(r, "request_id")?, "request_id")?,
                started_at_ms: req(int(r, "started_at_ms")?, "started_at_ms")?,
                key_name: text(r, "key_name")?,
                route: req(text(r, "route")?, "route")?,
                handle: text(r, "handle")?,
                target: text(r, "target")?,
                upstream_model: text(r, "upstream_model")?,
                status: u16::try_from(req(int(r, "status")?, "status")?).unwrap_or(0),
                error_type: text(r, "error_type")?,
                attempts: u32::try_from(int(r, "attempts")?.unwrap_or(0)).unwrap_or(0),
                latency_ms: float(r, "latency_ms")?.unwrap_or(0.0),
                ttft_ms: float(r, "ttft_ms")?,
                prompt_tokens: count(int(r, "prompt_tokens")?),
                completion_tokens: count(int(r, "completion_tokens")?),
                streamed: flag(r, "streamed")?.unwrap_or(false),
                generation_ms: float(r, "generation_ms")?,
                user: EndUser {
                    id: text(r, "user_id")?,
                    name: text(r, "user_name")?,
                    email: text(r, "user_email")?,
                    role: text(r, "user_role")?,
                    chat_id: text(r, "chat_id")?,
                },
            })
        })
        .collect()
}

/// One client request, as the gateway saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLogRow {
    pub request_id: String,
    pub started_at_ms: i64,
    /// The virtual key's name (`master` for the master key), if any.
    pub key_name: Option<String>,
    /// `chat`, `completions`, `embeddings`, `search`, ...
    pub route: String,
    pub handle: Option<String>,
    /// The endpoint that finally served (or failed) the request.
    pub target: Option<String>,
    pub upstream_model: Option<String>,
    /// The HTTP status sent to the client.
    pub status: u16,
    /// The OpenAI error type or our failure kind, when the request failed.
    pub error_type: Option<String>,
    pub attempts: u32,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub streamed: bool,
    /// How long the backend spent generating the completion tokens, when it was measured
    /// (the backend's `timings`, or a stream's first to last chunk); tokens per second come
    /// from this and nothing else.
    #[serde(default)]
    pub generation_ms: Option<f64>,
    /// Who the request was for, as the client said (Open WebUI's forwarded user headers).
    #[serde(default)]
    pub user: EndUser,
}

/// The end user and chat a client named for a request (Open WebUI sends them with
/// `ENABLE_FORWARD_USER_INFO_HEADERS=True`). What the client says, not an identity checked
/// here: the virtual key is the caller the gateway vouches for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndUser {
    pub id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Option<String>,
    pub chat_id: Option<String>,
}

/// Rows per `INSERT` statement: 21 columns × 256 rows stays far below both dialects'
/// bind-parameter limits.
const ROWS_PER_STATEMENT: usize = 256;

const COLUMNS: usize = 21;

/// The multi-row `INSERT`.
fn insert_sql(rows: usize, backend: Backend) -> String {
    let mut sql = String::from(
        "INSERT INTO request_log (request_id, started_at_ms, key_name, route, handle, target, \
         upstream_model, status, error_type, attempts, latency_ms, ttft_ms, prompt_tokens, \
         completion_tokens, streamed, generation_ms, user_id, user_name, user_email, user_role, \
         chat_id) VALUES ",
    );
    crate::db::push_values(&mut sql, rows, COLUMNS, backend);
    sql
}

/// Writes `rows` in one transaction. Either all are written or none.
pub async fn insert_batch(db: &Db, rows: &[RequestLogRow]) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = db.pool().begin().await?;
    let mut written = 0;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = insert_sql(chunk.len(), db.backend());
        let mut q = sqlx::query(&sql).persistent(db.backend().caches_nullable_floats());
        for r in chunk {
            q = q
                .bind(r.request_id.clone())
                .bind(r.started_at_ms)
                .bind(r.key_name.clone())
                .bind(r.route.clone())
                .bind(r.handle.clone())
                .bind(r.target.clone())
                .bind(r.upstream_model.clone())
                .bind(i64::from(r.status))
                .bind(r.error_type.clone())
                .bind(i64::from(r.attempts))
                .bind(r.latency_ms)
                .bind(r.ttft_ms)
                .bind(r.prompt_tokens.map(|t| t as i64))
                .bind(r.completion_tokens.map(|t| t as i64))
                .bind(r.streamed)
                .bind(r.generation_ms)
                .bind(r.user.id.clone())
                .bind(r.user.name.clone())
                .bind(r.user.email.clone())
                .bind(r.user.role.clone())
                .bind(r.user.chat_id.clone());
        }
        written += q.execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(written)
}

/// Limits of a [`RequestLogWriter`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Rows that may wait in the channel; beyond this, rows are dropped and counted.
    pub capacity: usize,
    /// Rows per transaction at most.
    pub batch_size: usize,
    /// How long the first row of a batch may wait for others before the batch is written.
    pub flush_interval: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            capacity: 10_000,
            batch_size: 512,
            flush_interval: Duration::from_millis(200),
        }
    }
}

/// Counters of a writer, for `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    /// Rows refused because the channel was full or the writer closed.
    pub dropped: AtomicU64,
    /// Rows lost because their batch could not be written.
    pub failed: AtomicU64,
}

enum Msg {
    Row(Box<RequestLogRow>),
    Close(oneshot::Sender<()>),
}

/// A bounded queue in front of [`insert_batch`], drained by a background task.
#[derive(Debug)]
pub struct RequestLogWriter {
    tx: mpsc::Sender<Msg>,
    closed: AtomicBool,
    stats: Arc<WriterStats>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The writer's death has been reported.
    reported: AtomicBool,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl RequestLogWriter {
    /// Starts the background task on the current Tokio runtime.
    pub fn spawn(db: Db, config: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let task = tokio::spawn(run(db, config, rx, stats.clone()));
        RequestLogWriter {
            tx,
            closed: AtomicBool::new(false),
            stats,
            task: std::sync::Mutex::new(Some(task)),
            reported: AtomicBool::new(false),
        }
    }

    /// Whether the background task has ended before [`close`](Self::close) asked it to.
    pub fn died(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.tx.is_closed()
    }

    fn report_death(&self, why: &str) {
        if !self.reported.swap(true, Ordering::AcqRel) {
            tracing::error!(
                why,
                dropped = self.stats.dropped.load(Ordering::Relaxed),
                "the request-log writer died: rows are no longer written"
            );
        }
    }

    /// Queues a row without waiting. Returns false (and counts a drop) if the queue is full
    /// or the writer is closed.
    pub fn log(&self, row: RequestLogRow) -> bool {
        if self.closed.load(Ordering::Acquire) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.tx.try_send(Msg::Row(Box::new(row))) {
            Ok(()) => true,
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                    self.report_death("its queue is closed");
                }
                false
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Refuses new rows, writes every queued row, then returns; false (and an error logged)
    /// if the writer had died and rows were lost. Safe to call twice.
    pub async fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return true;
        }
        let (done_tx, done_rx) = oneshot::channel();
        let flushed = self.tx.send(Msg::Close(done_tx)).await.is_ok() && done_rx.await.is_ok();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let ended = match task {
            Some(t) => t.await.map_err(|e| e.to_string()),
            None => Ok(()),
        };
        match (flushed, ended) {
            (true, Ok(())) => true,
            (_, Err(e)) => {
                self.report_death(&e);
                false
            }
            (false, Ok(())) => {
                self.report_death("it ended before the close");
                false
            }
        }
    }
}

async fn run(db: Db, cfg: WriterConfig, mut rx: mpsc::Receiver<Msg>, stats: Arc<WriterStats>) {
    let mut batch: Vec<RequestLogRow> = Vec::with_capacity(cfg.batch_size);
    loop {
        let mut close = None;
        match rx.recv().await {
            None => break,
            Some(Msg::Close(done)) => close = Some(done),
            Some(Msg::Row(r)) => batch.push(*r),
        }
        if close.is_none() {
            let deadline = tokio::time::Instant::now() + cfg.flush_interval;
            while batch.len() < cfg.batch_size {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Msg::Row(r))) => batch.push(*r),
                    Ok(Some(Msg::Close(done))) => {
                        close = Some(done);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if close.is_some() {
            // Rows queued before the close message are all in the channel ahead of it, so
            // nothing is left behind; drain anything that raced in as well.
            while let Ok(Msg::Row(r)) = rx.try_recv() {
                batch.push(*r);
            }
        }
        for chunk in batch.chunks(cfg.batch_size.max(1)) {
            write(&db, chunk, &stats).await;
        }
        batch.clear();
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

async fn write(db: &Db, rows: &[RequestLogRow], stats: &WriterStats) {
    // One retry: SQLite may report "database is locked" past its busy timeout under a burst.
    for attempt in 0..2 {
        match insert_batch(db, rows).await {
            Ok(n) => {
                stats.written.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(e) if attempt == 0 => {
                tracing::warn!(error = %e, rows = rows.len(), "request log batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = rows.len(), "request log batch lost");
                stats.failed.fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
        }
    }
}
