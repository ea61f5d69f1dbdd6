//! The system-docs DB: the single source of truth of homelab-llm.
//!
//! It says what exists (hosts, services, endpoints, models, routing handles, API keys) and
//! records what happened (health checks, the request log). One schema in two dialects:
//! `migrations/sqlite` (the default, a file under `./var/`) and `migrations/postgres` (the
//! scale-out path), used through sqlx's `Any` driver so every query here is written once.
//!
//! - [`Db`]: connect (SQLite in WAL mode with a busy timeout), migrate, ping.
//! - [`spec`]: the declarative registry types that every import format turns into.
//! - [`formats`]: `handles.jsonl`, `system.yaml` and LiteLLM `config.yaml`, detected by content.
//! - [`apply`]: writes a [`spec::SystemSpec`] in one transaction, idempotently, with a report.
//! - [`read`]: loads the registry back (for export and listing).
//! - [`register`]: what a service finds on its machine (host, model files) registered.
//! - [`residency`]: which models are loaded now, and by which service.
//! - [`keys`]: virtual API keys, stored as SHA-256 hashes.
//! - [`request_log`]: the batched insert path for request-log rows.
//! - [`responses`]: the gateway's stored Responses API answers, for `previous_response_id`.
//! - [`tool_calls`]: one row per MCP tool call (agents, the gateway's tool endpoint).
//! - [`writer`]: the bounded queue both write through, so that no request waits on the DB.
//! - [`health`]: health-check rows.
//! - [`monitor`]: the monitor's settings, views and hourly rollups (folded as each hour ends).
//! - [`vectors`]: the vector store's own database (collections, payload indexes, points),
//!   a separate file or Postgres schema with migrations of its own (`migrations-vectors/`).
//!
//! Times are Unix epoch milliseconds in `*_at_ms` columns, the same number in both dialects.

pub mod apply;
mod db;
mod error;
pub mod formats;
pub mod health;
pub mod keys;
pub mod monitor;
pub mod read;
pub mod register;
pub mod request_log;
pub mod residency;
pub mod responses;
mod rollup;
pub mod spec;
pub mod tool_calls;
pub mod vectors;
pub mod writer;
mod yaml_lines;

pub use db::{Backend, DEFAULT_DB_URL, Db, DbOptions, Schema};
pub use error::{Error, InputError, Result};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
