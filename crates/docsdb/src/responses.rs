//! Stored responses of the gateway's Responses API (`store: true`), for
//! `previous_response_id`: [`put`] writes one and trims the table to its bounds, [`get`]
//! reads one back and [`delete`] removes one, for the key that stored it.

use sqlx::Row;

use crate::db::Db;
use crate::error::Result;

/// One stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The key that stored it (`None` when the gateway has no keys).
    pub key_name: Option<String>,
    pub model: String,
    /// The conversation's items as JSON (input, then the response's output).
    pub items: String,
    /// The response object as JSON.
    pub response: String,
}

/// Writes `r`, then deletes responses past their expiry and all but the newest `keep`.
/// How many were deleted.
pub async fn put(db: &Db, r: &StoredResponse, keep: u64) -> Result<u64> {
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO responses (id, created_at_ms, expires_at_ms, key_name, model, items, response) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&r.id)
    .bind(r.created_at_ms)
    .bind(r.expires_at_ms)
    .bind(&r.key_name)
    .bind(&r.model)
    .bind(&r.items)
    .bind(&r.response)
    .execute(&mut *tx)
    .await?;
    let mut deleted = sqlx::query("DELETE FROM responses WHERE expires_at_ms <= $1")
        .bind(r.created_at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    deleted += sqlx::query(
        "DELETE FROM responses WHERE created_at_ms < \
         (SELECT created_at_ms FROM responses ORDER BY created_at_ms DESC LIMIT 1 OFFSET $1)",
    )
    .bind(i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// The response `id` as stored by `key_name`, unless it expired before `now_ms`.
pub async fn get(
    db: &Db,
    id: &str,
    key_name: Option<&str>,
    now_ms: i64,
) -> Result<Option<StoredResponse>> {
    let row = sqlx::query(
        "SELECT id, created_at_ms, expires_at_ms, key_name, model, items, response FROM responses \
         WHERE id = $1 AND expires_at_ms > $2",
    )
    .bind(id)
    .bind(now_ms)
    .fetch_optional(db.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    let stored = StoredResponse {
        id: r.try_get("id")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        key_name: r.try_get("key_name")?,
        model: r.try_get("model")?,
        items: r.try_get("items")?,
        response: r.try_get("response")?,
    };
    // Another key's response is as good as missing.
    Ok((stored.key_name.as_deref() == key_name).then_some(stored))
}

/// Deletes the response `id` stored by `key_name`; whether there was one.
pub async fn delete(db: &Db, id: &str, key_name: Option<&str>) -> Result<bool> {
    let done = match key_name {
        Some(k) => {
            sqlx::query("DELETE FROM responses WHERE id = $1 AND key_name = $2")
                .bind(id)
                .bind(k)
                .execute(db.pool())
                .await?
        }
        None => {
            sqlx::query("DELETE FROM responses WHERE id = $1 AND key_name IS NULL")
                .bind(id)
                .execute(db.pool())
                .await?
        }
    };
    Ok(done.rows_affected() > 0)
}
