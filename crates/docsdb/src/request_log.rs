//! The request log: one row per client request, written in batches.
//!
//! [`insert_batch`] writes many rows in one transaction (multi-row `INSERT`s);
//! [`RequestLogWriter`] queues rows in front of it (see [`crate::writer`]), so that a request
//! never waits on the DB.

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::Result;
use crate::writer::{BatchWriter, Rows};
pub use crate::writer::{WriterConfig, WriterStats};

/// The request log's queued writer.
pub type RequestLogWriter = BatchWriter<RequestLogRow>;

impl Rows for RequestLogRow {
    const WHAT: &'static str = "request log";

    async fn insert(db: &Db, rows: &[Self]) -> Result<u64> {
        insert_batch(db, rows).await
    }
}

/// Tokens (prompt and completion) the key `key_name` has used in requests since `since_ms`
/// (answers from the response cache cost nothing).
pub async fn tokens_used_by_key(db: &Db, key_name: &str, since_ms: i64) -> Result<u64> {
    use sqlx::Row;
    let used: Option<i64> = sqlx::query(
        "SELECT CAST(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) AS BIGINT) AS n \
         FROM request_log WHERE key_name = $1 AND started_at_ms >= $2 AND NOT cache_hit",
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
         chat_id, request_bytes, response_bytes, usage_source, cache_hit FROM request_log \
         ORDER BY id DESC LIMIT $1) \
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
                request_bytes: count(int(r, "request_bytes")?),
                response_bytes: count(int(r, "response_bytes")?),
                usage_source: text(r, "usage_source")?.and_then(|s| UsageSource::parse(&s)),
                cache_hit: flag(r, "cache_hit")?.unwrap_or(false),
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
    /// The request body's size as the gateway read or passed it on (none where it was not
    /// read: a request refused before its body).
    #[serde(default)]
    pub request_bytes: Option<u64>,
    /// The answer body's size as the gateway passed it to the client (a stream's, up to
    /// where it ended).
    #[serde(default)]
    pub response_bytes: Option<u64>,
    /// Where the token counts came from: the backend's `usage`, or counted by the gateway
    /// when the backend sent none (a stream the client left, a server without usage).
    #[serde(default)]
    pub usage_source: Option<UsageSource>,
    /// Answered from the gateway's response cache: no backend was asked, and its tokens do
    /// not count against a key's budget.
    #[serde(default)]
    pub cache_hit: bool,
    /// Who the request was for, as the client said (Open WebUI's forwarded user headers).
    #[serde(default)]
    pub user: EndUser,
}

/// Where a request-log row's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The backend's `usage` (or `timings`).
    Backend,
    /// Counted by the gateway: stream events, or about four bytes of text per token.
    Gateway,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Backend => "backend",
            UsageSource::Gateway => "gateway",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [UsageSource::Backend, UsageSource::Gateway]
            .into_iter()
            .find(|u| u.as_str() == s)
    }
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

/// Rows per `INSERT` statement: 25 columns × 256 rows stays far below both dialects'
/// bind-parameter limits.
const ROWS_PER_STATEMENT: usize = 256;

const COLUMNS: usize = 25;

/// Writes `rows` in one transaction. Either all are written or none.
pub async fn insert_batch(db: &Db, rows: &[RequestLogRow]) -> Result<u64> {
    const HEAD: &str = "INSERT INTO request_log (request_id, started_at_ms, key_name, route, \
         handle, target, upstream_model, status, error_type, attempts, latency_ms, ttft_ms, \
         prompt_tokens, completion_tokens, streamed, generation_ms, user_id, user_name, \
         user_email, user_role, chat_id, request_bytes, response_bytes, usage_source, \
         cache_hit) VALUES ";
    crate::db::insert_rows(db, HEAD, COLUMNS, ROWS_PER_STATEMENT, rows, |q, r| {
        // Texts are bound borrowed from the rows (sqlx still copies them once for its SQLite
        // worker thread, and SQLite once more).
        q.bind(r.request_id.as_str())
            .bind(r.started_at_ms)
            .bind(r.key_name.as_deref())
            .bind(r.route.as_str())
            .bind(r.handle.as_deref())
            .bind(r.target.as_deref())
            .bind(r.upstream_model.as_deref())
            .bind(i64::from(r.status))
            .bind(r.error_type.as_deref())
            .bind(i64::from(r.attempts))
            .bind(r.latency_ms)
            .bind(r.ttft_ms)
            .bind(r.prompt_tokens.map(|t| t as i64))
            .bind(r.completion_tokens.map(|t| t as i64))
            .bind(r.streamed)
            .bind(r.generation_ms)
            .bind(r.user.id.as_deref())
            .bind(r.user.name.as_deref())
            .bind(r.user.email.as_deref())
            .bind(r.user.role.as_deref())
            .bind(r.user.chat_id.as_deref())
            .bind(r.request_bytes.map(|b| b as i64))
            .bind(r.response_bytes.map(|b| b as i64))
            .bind(r.usage_source.map(UsageSource::as_str))
            .bind(r.cache_hit)
    })
    .await
}
