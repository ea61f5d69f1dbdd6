//! Virtual API keys. The secret is shown once, at creation; the DB keeps its SHA-256 hash
//! (a key is 256 random bits, so a fast hash is enough: there is nothing to brute-force) and
//! a short prefix so an operator can tell keys apart.

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::Db;
use crate::error::{Error, InputError, Result};
use crate::read::{int, req, text};

/// Every key starts with this, so secret scanners and people recognise it.
pub const KEY_PREFIX: &str = "sk-hl-";

/// What a new key may do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewKey {
    pub name: String,
    /// `None`: every handle.
    pub allowed_handles: Option<Vec<String>>,
    /// On the gateway's MCP endpoint: tool servers (`web-fetch`) or tools
    /// (`web-fetch/fetch`) the key may use; `None`: every tool.
    pub allowed_tools: Option<Vec<String>>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    /// Total tokens (prompt + completion) the key may use.
    pub token_budget: Option<i64>,
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyInfo {
    pub id: i64,
    pub name: String,
    /// The first characters of the secret, e.g. `sk-hl-Ab3d`.
    pub key_prefix: String,
    pub allowed_handles: Option<Vec<String>>,
    /// Tool servers or `server/tool`s; `None`: every tool.
    pub allowed_tools: Option<Vec<String>>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub token_budget: Option<i64>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl KeyInfo {
    /// Whether the key may use `handle`.
    pub fn allows(&self, handle: &str) -> bool {
        self.allowed_handles
            .as_ref()
            .is_none_or(|hs| hs.iter().any(|h| h == handle))
    }

    /// Whether the key may use tool server `server` at all.
    pub fn allows_server(&self, server: &str) -> bool {
        self.allowed_tools.as_ref().is_none_or(|ts| {
            ts.iter()
                .any(|t| t == server || t.split_once('/').is_some_and(|(s, _)| s == server))
        })
    }

    /// Whether the key may call `tool` of tool server `server`.
    pub fn allows_tool(&self, server: &str, tool: &str) -> bool {
        self.allowed_tools.as_ref().is_none_or(|ts| {
            ts.iter().any(|t| {
                t == server
                    || t.split_once('/')
                        .is_some_and(|(s, n)| s == server && n == tool)
            })
        })
    }
}

/// A stored JSON list of names.
fn names(r: &AnyRow, column: &str) -> Result<Option<Vec<String>>> {
    match text(r, column)? {
        Some(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| Error::Conflict(format!("stored {column}: {e}"))),
        None => Ok(None),
    }
}

/// The SHA-256 of a secret, in hex, as stored.
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Conflict(format!("no randomness for a new key: {e}")))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn row_to_info(r: &AnyRow) -> Result<KeyInfo> {
    Ok(KeyInfo {
        id: r.try_get("id")?,
        name: req(text(r, "name")?, "name")?,
        key_prefix: req(text(r, "key_prefix")?, "key_prefix")?,
        allowed_handles: names(r, "allowed_handles")?,
        allowed_tools: names(r, "allowed_tools")?,
        rpm: int(r, "rpm")?,
        tpm: int(r, "tpm")?,
        token_budget: int(r, "token_budget")?,
        created_at_ms: req(int(r, "created_at_ms")?, "created_at_ms")?,
        revoked_at_ms: int(r, "revoked_at_ms")?,
    })
}

const COLUMNS: &str = "id, name, key_prefix, allowed_handles, allowed_tools, rpm, tpm, \
     token_budget, created_at_ms, revoked_at_ms";

/// Creates a key and returns it with its secret, which is not stored anywhere.
pub async fn create(db: &Db, new: &NewKey) -> Result<(KeyInfo, String)> {
    let bad = |field: &str, msg: String| Error::Input(InputError::new(msg).field(field));
    if new.name.trim().is_empty() {
        return Err(bad("name", "a key needs a name".into()));
    }
    for (field, v) in [("rpm", new.rpm), ("tpm", new.tpm)] {
        if v.is_some_and(|v| v <= 0) {
            return Err(bad(field, format!("--{field} must be greater than 0")));
        }
    }
    if new.token_budget.is_some_and(|v| v < 0) {
        return Err(bad("budget", "--budget must not be negative".into()));
    }
    let mut tx = db.begin_write().await?;
    if let Some(handles) = &new.allowed_handles {
        for h in handles {
            let found = sqlx::query("SELECT id FROM handles WHERE name = $1")
                .bind(h)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(bad("handles", format!("handle `{h}` does not exist")));
            }
        }
    }
    let live = sqlx::query("SELECT id FROM api_keys WHERE name = $1 AND revoked_at_ms IS NULL")
        .bind(&new.name)
        .fetch_optional(&mut *tx)
        .await?;
    if live.is_some() {
        return Err(Error::Conflict(format!(
            "a key named `{}` exists; revoke it first or choose another name",
            new.name
        )));
    }
    let secret = new_secret()?;
    if let Some(tools) = &new.allowed_tools
        && let Some(t) = tools.iter().find(|t| {
            t.trim().is_empty() || t.split('/').any(str::is_empty) || t.matches('/').count() > 1
        })
    {
        return Err(bad(
            "tools",
            format!("`{t}` is not a tool server (`web-fetch`) or a tool (`web-fetch/fetch`)"),
        ));
    }
    let as_json = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|h| serde_json::to_string(h).unwrap_or_else(|_| "[]".into()))
    };
    let row = sqlx::query(&format!(
        "INSERT INTO api_keys (name, key_hash, key_prefix, allowed_handles, allowed_tools, rpm, \
         tpm, token_budget, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING {COLUMNS}"
    ))
    .bind(&new.name)
    .bind(hash_key(&secret))
    .bind(&secret[..KEY_PREFIX.len() + 4])
    .bind(as_json(&new.allowed_handles))
    .bind(as_json(&new.allowed_tools))
    .bind(new.rpm)
    .bind(new.tpm)
    .bind(new.token_budget)
    .bind(crate::now_ms())
    .fetch_one(&mut *tx)
    .await?;
    let info = row_to_info(&row)?;
    tx.commit().await?;
    Ok((info, secret))
}

/// Every key, live and revoked, newest first.
pub async fn list(db: &Db) -> Result<Vec<KeyInfo>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_keys ORDER BY created_at_ms DESC, id DESC"
    ))
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(row_to_info).collect()
}

/// Live keys only: what the gateway loads.
pub async fn live(db: &Db) -> Result<Vec<(String, KeyInfo)>> {
    let rows = sqlx::query(&format!(
        "SELECT key_hash, {COLUMNS} FROM api_keys WHERE revoked_at_ms IS NULL ORDER BY id"
    ))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((req(text(r, "key_hash")?, "key_hash")?, row_to_info(r)?)))
        .collect()
}

/// The live key with this secret, if any.
pub async fn find_by_secret(db: &Db, secret: &str) -> Result<Option<KeyInfo>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at_ms IS NULL"
    ))
    .bind(hash_key(secret))
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(row_to_info).transpose()
}

/// Revokes the live key named `name`. The row stays, for the request log's sake.
pub async fn revoke(db: &Db, name: &str) -> Result<KeyInfo> {
    let row = sqlx::query(&format!(
        "UPDATE api_keys SET revoked_at_ms = $1 WHERE name = $2 AND revoked_at_ms IS NULL \
         RETURNING {COLUMNS}"
    ))
    .bind(crate::now_ms())
    .bind(name)
    .fetch_optional(db.pool())
    .await?;
    match row {
        Some(r) => row_to_info(&r),
        None => Err(Error::NotFound {
            kind: "live key",
            name: name.to_owned(),
        }),
    }
}
