//! The vector store's database: collections, their payload indexes and points.
//!
//! It is a database of its own, opened with [`open`] (schema [`Schema::Vectors`], SQLite with
//! `synchronous = FULL` so that an answered write is on disk). The vector-db service keeps
//! the vectors in memory for search and writes every change here first; at start it loads
//! everything back with [`collections`] and [`points`].
//!
//! Vectors are stored as little-endian `f32` bytes ([`encode`], [`decode`]); payloads as
//! JSON text; point ids as text (a hyphenated lower-case UUID or an unsigned integer).

use futures_util::TryStreamExt;
use sqlx::Row;

use crate::db::{Db, DbOptions, Schema, push_values};
use crate::error::{Error, Result};

/// A collection as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCollection {
    pub name: String,
    pub dim: usize,
    pub distance: String,
    /// The settings it was created with (JSON), echoed by the API.
    pub config: serde_json::Value,
    /// Payload indexes: field and schema (JSON), in field order.
    pub indexes: Vec<(String, serde_json::Value)>,
    pub created_at_ms: i64,
}

/// A point to write or as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub id: String,
    pub vector: Vec<f32>,
    /// A JSON object, as text.
    pub payload: String,
}

/// Rows per multi-row `INSERT` (5 parameters each; well under SQLite's 32766).
const ROWS_PER_INSERT: usize = 500;

/// Opens (creating a SQLite file if missing) and migrates the vector store's database.
pub async fn open(url: &str) -> Result<Db> {
    let opts = DbOptions {
        durable: true,
        ..DbOptions::default()
    };
    let db = Db::connect_with(url, &opts).await?;
    db.migrate_schema(Schema::Vectors).await?;
    Ok(db)
}

/// `f32`s as little-endian bytes.
pub fn encode(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes as `f32`s; `None` when the length is not a multiple of 4.
pub fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Every collection with its indexes, by name.
pub async fn collections(db: &Db) -> Result<Vec<StoredCollection>> {
    let rows = sqlx::query(
        "SELECT name, dim, distance, config, created_at_ms FROM vector_collections ORDER BY name",
    )
    .fetch_all(db.pool())
    .await?;
    let index_rows = sqlx::query(
        "SELECT collection, field, schema FROM vector_payload_indexes ORDER BY collection, field",
    )
    .fetch_all(db.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get("name")?;
        let indexes = index_rows
            .iter()
            .filter(|i| i.try_get::<String, _>("collection").ok().as_deref() == Some(&name))
            .map(|i| {
                Ok((
                    i.try_get("field")?,
                    json(&i.try_get::<String, _>("schema")?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(StoredCollection {
            dim: usize::try_from(r.try_get::<i32, _>("dim")?).unwrap_or(0),
            distance: r.try_get("distance")?,
            config: json(&r.try_get::<String, _>("config")?)?,
            created_at_ms: r.try_get("created_at_ms")?,
            indexes,
            name,
        });
    }
    Ok(out)
}

fn json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("stored JSON: {e}")))
}

/// Calls `each` with every point of `collection`, streamed (not collected first).
pub async fn points(db: &Db, collection: &str, mut each: impl FnMut(StoredPoint)) -> Result<()> {
    let mut rows =
        sqlx::query("SELECT id, vector, payload FROM vector_points WHERE collection = $1")
            .bind(collection)
            .fetch(db.pool());
    while let Some(r) = rows.try_next().await? {
        let id: String = r.try_get("id")?;
        let bytes: Vec<u8> = r.try_get("vector")?;
        let vector = decode(&bytes).ok_or_else(|| {
            Error::Corrupt(format!("point `{id}` of `{collection}`: vector bytes"))
        })?;
        each(StoredPoint {
            id,
            vector,
            payload: r.try_get("payload")?,
        });
    }
    Ok(())
}

/// Creates a collection; `false` when one of that name exists (nothing is changed then).
pub async fn create_collection(db: &Db, c: &StoredCollection) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO vector_collections (name, dim, distance, config, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&c.name)
    .bind(i32::try_from(c.dim).unwrap_or(i32::MAX))
    .bind(&c.distance)
    .bind(c.config.to_string())
    .bind(c.created_at_ms)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a collection with its points and indexes; `false` when there was none.
pub async fn delete_collection(db: &Db, name: &str) -> Result<bool> {
    let mut tx = db.pool().begin().await?;
    // Explicit, in one transaction, rather than left to the foreign keys' cascade (which a
    // SQLite connection applies only with `PRAGMA foreign_keys` on).
    for table in ["vector_points", "vector_payload_indexes"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE collection = $1"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    let done = sqlx::query("DELETE FROM vector_collections WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Creates or replaces a payload index.
pub async fn set_index(
    db: &Db,
    collection: &str,
    field: &str,
    schema: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO vector_payload_indexes (collection, field, schema) VALUES ($1, $2, $3) \
         ON CONFLICT (collection, field) DO UPDATE SET schema = excluded.schema",
    )
    .bind(collection)
    .bind(field)
    .bind(schema.to_string())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Removes a payload index.
pub async fn drop_index(db: &Db, collection: &str, field: &str) -> Result<()> {
    sqlx::query("DELETE FROM vector_payload_indexes WHERE collection = $1 AND field = $2")
        .bind(collection)
        .bind(field)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Inserts or replaces `points` in one transaction: all of them or none.
pub async fn upsert_points(db: &Db, collection: &str, points: &[StoredPoint]) -> Result<()> {
    let now = crate::now_ms();
    let mut tx = db.pool().begin().await?;
    for chunk in points.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO vector_points (collection, id, vector, payload, updated_at_ms) VALUES ",
        );
        push_values(&mut sql, chunk.len(), 5, db.backend());
        sql.push_str(
            " ON CONFLICT (collection, id) DO UPDATE SET vector = excluded.vector, \
             payload = excluded.payload, updated_at_ms = excluded.updated_at_ms",
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            q = q
                .bind(collection)
                .bind(&p.id)
                .bind(encode(&p.vector))
                .bind(&p.payload)
                .bind(now);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Replaces the payloads of existing points (`id`, JSON text), in one transaction.
pub async fn set_payloads(db: &Db, collection: &str, payloads: &[(String, String)]) -> Result<()> {
    let now = crate::now_ms();
    let mut tx = db.pool().begin().await?;
    for (id, payload) in payloads {
        sqlx::query(
            "UPDATE vector_points SET payload = $1, updated_at_ms = $2 \
             WHERE collection = $3 AND id = $4",
        )
        .bind(payload)
        .bind(now)
        .bind(collection)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes points by id in one transaction.
pub async fn delete_points(db: &Db, collection: &str, ids: &[String]) -> Result<()> {
    let mut tx = db.pool().begin().await?;
    for chunk in ids.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from("DELETE FROM vector_points WHERE collection = $1 AND id IN (");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(i + 2).to_string());
        }
        sql.push(')');
        let mut q = sqlx::query(&sql).bind(collection);
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_as_bytes() {
        let v = vec![0.0, -1.5, f32::MIN_POSITIVE, 3.25];
        assert_eq!(decode(&encode(&v)), Some(v));
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}
