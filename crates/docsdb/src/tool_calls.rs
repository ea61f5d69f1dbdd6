//! Tool calls: one row per MCP tool call made for a client (an agent run's, or one through
//! the gateway's tool endpoint), written in batches through a [`ToolCallWriter`] so that a
//! call never waits on the DB. The monitor reads them back per tool ([`stats`]) and newest
//! first ([`recent`]); failed calls are also among the recent errors.

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::error::Result;
use crate::read::{flag, float, int, req, text};
use crate::writer::{BatchWriter, Rows};

/// The tool calls' queued writer.
pub type ToolCallWriter = BatchWriter<ToolCallRow>;

/// The longest error text kept in a row, in characters; longer ones are cut.
pub const MAX_ERROR_CHARS: usize = 500;

/// One tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRow {
    /// The client request the call was made for (the request log's rows carry the same id).
    pub request_id: String,
    pub started_at_ms: i64,
    /// Who called: `agent:NAME` for an agent run, the route for the gateway.
    pub caller: String,
    /// The virtual key of the client, when the caller knows it.
    pub key_name: Option<String>,
    /// The MCP server that owns the tool (its own name, else its URL or command); `None`
    /// when no server had a tool of that name.
    pub server: Option<String>,
    pub tool: String,
    pub duration_ms: f64,
    pub ok: bool,
    /// What went wrong, when the call failed (cut to [`MAX_ERROR_CHARS`]).
    pub error: Option<String>,
}

impl ToolCallRow {
    /// `error`, cut to [`MAX_ERROR_CHARS`] characters.
    pub fn with_error(mut self, error: &str) -> Self {
        let cut: String = error.chars().take(MAX_ERROR_CHARS).collect();
        self.error = Some(cut);
        self
    }
}

const COLUMNS: usize = 9;

/// Rows per `INSERT`: 9 columns × 256 rows stays far below both dialects' bind limits.
const ROWS_PER_STATEMENT: usize = 256;

/// Writes `rows` in one transaction. Either all are written or none.
pub async fn insert_batch(db: &Db, rows: &[ToolCallRow]) -> Result<u64> {
    const HEAD: &str = "INSERT INTO tool_calls (request_id, started_at_ms, caller, key_name, \
         server, tool, duration_ms, ok, error) VALUES ";
    crate::db::insert_rows(db, HEAD, COLUMNS, ROWS_PER_STATEMENT, rows, |q, r| {
        q.bind(r.request_id.clone())
            .bind(r.started_at_ms)
            .bind(r.caller.clone())
            .bind(r.key_name.clone())
            .bind(r.server.clone())
            .bind(r.tool.clone())
            .bind(r.duration_ms)
            .bind(r.ok)
            .bind(r.error.clone())
    })
    .await
}

impl Rows for ToolCallRow {
    const WHAT: &'static str = "tool calls";

    async fn insert(db: &Db, rows: &[Self]) -> Result<u64> {
        insert_batch(db, rows).await
    }
}

/// The newest `limit` tool calls, newest first; only those of `request_id` when given.
pub async fn recent(db: &Db, limit: i64, request_id: Option<&str>) -> Result<Vec<ToolCallRow>> {
    let rows = sqlx::query(
        "SELECT request_id, started_at_ms, caller, key_name, server, tool, duration_ms, ok, \
                error \
         FROM tool_calls WHERE (CAST($1 AS TEXT) IS NULL OR request_id = $1) \
         ORDER BY id DESC LIMIT $2",
    )
    .bind(request_id)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ToolCallRow {
                request_id: req(text(r, "request_id")?, "request_id")?,
                started_at_ms: req(int(r, "started_at_ms")?, "started_at_ms")?,
                caller: req(text(r, "caller")?, "caller")?,
                key_name: text(r, "key_name")?,
                server: text(r, "server")?,
                tool: req(text(r, "tool")?, "tool")?,
                duration_ms: float(r, "duration_ms")?.unwrap_or(0.0),
                ok: flag(r, "ok")?.unwrap_or(false),
                error: text(r, "error")?,
            })
        })
        .collect()
}

/// One row of `v_tool_stats`: a tool's calls over the last 24 hours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolStatsRow {
    pub server: Option<String>,
    pub tool: String,
    pub calls_24h: i64,
    pub errors_24h: i64,
    /// Distinct callers (agents, gateway routes).
    pub callers_24h: i64,
    pub avg_duration_ms_24h: Option<f64>,
    pub max_duration_ms_24h: Option<f64>,
    pub last_call_at_ms: Option<i64>,
}

/// Every tool called in the last 24 hours, the busiest first, then the most failing.
pub async fn stats(db: &Db) -> Result<Vec<ToolStatsRow>> {
    let rows = sqlx::query(
        "SELECT server, tool, calls_24h, errors_24h, callers_24h, avg_duration_ms_24h, \
                max_duration_ms_24h, last_call_at_ms \
         FROM v_tool_stats ORDER BY calls_24h DESC, errors_24h DESC, tool, COALESCE(server, '')",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ToolStatsRow {
                server: text(r, "server")?,
                tool: req(text(r, "tool")?, "tool")?,
                calls_24h: int(r, "calls_24h")?.unwrap_or(0),
                errors_24h: int(r, "errors_24h")?.unwrap_or(0),
                callers_24h: int(r, "callers_24h")?.unwrap_or(0),
                avg_duration_ms_24h: float(r, "avg_duration_ms_24h")?,
                max_duration_ms_24h: float(r, "max_duration_ms_24h")?,
                last_call_at_ms: int(r, "last_call_at_ms")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_cut_at_the_limit_on_a_character_boundary() {
        let row = ToolCallRow {
            request_id: "r".into(),
            started_at_ms: 0,
            caller: "agent:a".into(),
            key_name: None,
            server: None,
            tool: "t".into(),
            duration_ms: 1.0,
            ok: false,
            error: None,
        };
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        let cut = row.with_error(&long).error.unwrap_or_default();
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS);
    }
}
