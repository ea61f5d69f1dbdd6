//! Which models are loaded now (`model_residency`): the inference services say when a model
//! enters and leaves memory, so `v_model_inventory` and `v_host_capacity` show what is loaded
//! and how much memory is left on each host, beside what is registered.

use crate::db::Db;
use crate::error::Result;

/// Records that `service` loaded `model_id` of `host`, taking `memory_bytes`. `false` when no
/// such model is registered on that host (nothing is written).
pub async fn mark_loaded(
    db: &Db,
    host: &str,
    model_id: &str,
    service: &str,
    memory_bytes: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO model_residency (model_row_id, service, loaded_at_ms, memory_bytes) \
         SELECT m.id, $1, $2, $3 FROM models m JOIN hosts h ON h.id = m.host_id \
         WHERE m.model_id = $4 AND h.name = $5 \
         ON CONFLICT (model_row_id) DO UPDATE SET service = excluded.service, \
             loaded_at_ms = excluded.loaded_at_ms, memory_bytes = excluded.memory_bytes",
    )
    .bind(service)
    .bind(crate::now_ms())
    .bind(memory_bytes)
    .bind(model_id)
    .bind(host)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Records that `model_id` of `host` left memory.
pub async fn mark_unloaded(db: &Db, host: &str, model_id: &str) -> Result<()> {
    sqlx::query(
        "DELETE FROM model_residency WHERE model_row_id IN \
         (SELECT m.id FROM models m JOIN hosts h ON h.id = m.host_id \
          WHERE m.model_id = $1 AND h.name = $2)",
    )
    .bind(model_id)
    .bind(host)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Forgets everything `service` had loaded on `host` (at its start, after a crash, and at
/// its stop); how many rows went.
pub async fn clear_service(db: &Db, host: &str, service: &str) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM model_residency WHERE service = $1 AND model_row_id IN \
         (SELECT m.id FROM models m JOIN hosts h ON h.id = m.host_id WHERE h.name = $2)",
    )
    .bind(service)
    .bind(host)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}
