//! The two migration dialects define the same tables, columns (with matching type classes)
//! and views (with the same columns in the same order).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use sqlx::Row;

/// table or view name → (is_view, [(column, type class)])
type Schema = BTreeMap<String, (bool, Vec<(String, String)>)>;

fn class(t: &str) -> String {
    match t.to_ascii_lowercase().as_str() {
        "integer" | "bigint" | "boolean" => "int".into(),
        "text" => "text".into(),
        "real" | "double precision" => "real".into(),
        other => other.into(),
    }
}

async fn sqlite_schema(db: &docsdb::Db) -> Schema {
    let mut out = Schema::new();
    let objects = sqlx::query(
        "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    for o in objects {
        let name: String = o.get("name");
        let is_view = o.get::<String, _>("type") == "view";
        let cols = sqlx::query("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
            .bind(&name)
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c.get::<String, _>("name"),
                    class(&c.get::<String, _>("type")),
                )
            })
            .collect();
        out.insert(name, (is_view, cols));
    }
    out
}

async fn postgres_schema(db: &docsdb::Db) -> Schema {
    let mut out = Schema::new();
    let objects = sqlx::query(
        "SELECT CAST(table_name AS TEXT) AS name, CAST(table_type AS TEXT) AS kind \
         FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    for o in objects {
        let name: String = o.get("name");
        let is_view = o.get::<String, _>("kind") == "VIEW";
        let cols = sqlx::query(
            "SELECT CAST(column_name AS TEXT) AS name, CAST(data_type AS TEXT) AS type \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&name)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.get::<String, _>("name"),
                class(&c.get::<String, _>("type")),
            )
        })
        .collect();
        out.insert(name, (is_view, cols));
    }
    out
}

#[tokio::test]
async fn dialects_define_the_same_schema() {
    let lite = common::sqlite().await;
    let Some(pg) = common::postgres().await else {
        return;
    };
    let a = sqlite_schema(&lite.db).await;
    let b = postgres_schema(&pg.db).await;

    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(names_a, names_b, "the same tables and views");
    for expected in [
        "hosts",
        "services",
        "docs",
        "endpoints",
        "models",
        "handles",
        "handle_targets",
        "api_keys",
        "health_checks",
        "request_log",
        "v_service_status",
        "v_service_uptime",
        "v_handle_stats",
        "v_model_inventory",
        "v_recent_errors",
    ] {
        assert!(a.contains_key(expected), "{expected} is defined");
    }
    for (name, (view_a, cols_a)) in &a {
        let (view_b, cols_b) = &b[name];
        assert_eq!(
            view_a, view_b,
            "{name} is a view in both or a table in both"
        );
        if *view_a {
            // Expression columns of SQLite views have no declared type: compare names.
            let na: Vec<_> = cols_a.iter().map(|c| &c.0).collect();
            let nb: Vec<_> = cols_b.iter().map(|c| &c.0).collect();
            assert_eq!(na, nb, "view {name} has the same columns");
        } else {
            assert_eq!(
                cols_a, cols_b,
                "table {name} has the same columns and type classes"
            );
        }
    }
    lite.cleanup().await;
    pg.cleanup().await;
}

/// A registry written before migration 0010 (which rebuilds `endpoints` and
/// `handle_targets` in SQLite to widen a CHECK) comes through it whole: the same rows, the
/// same references, foreign keys still enforced, and the monitor's view that counts targets.
#[tokio::test]
async fn the_endpoint_rebuild_keeps_a_populated_registry() {
    use std::borrow::Cow;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db", dir.path().display());
    let db = docsdb::Db::connect(&url).await.unwrap();
    let mut before = sqlx::migrate!("./migrations/sqlite");
    let all = before.migrations.to_vec();
    assert!(all.len() >= 10);
    before.migrations = Cow::Owned(all[..9].to_vec());
    before.run(db.pool()).await.unwrap();
    for sql in [
        "INSERT INTO endpoints (id, name, base_url, api, auth_env, created_at_ms, updated_at_ms) \
         VALUES (7, 'mini', 'http://mini:8000/v1', 'ovms', 'MINI_KEY', 1, 2)",
        "INSERT INTO handles (id, name, strategy, created_at_ms, updated_at_ms) \
         VALUES (3, 'chat', 'priority', 1, 1)",
        "INSERT INTO handle_targets (id, handle_id, position, endpoint_id, upstream_model, \
         params, max_tools_bytes, over_tools) VALUES (5, 3, 0, 7, 'qwen', '{\"top_k\":20}', 4000, 'refuse')",
    ] {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    db.migrate().await.unwrap();

    let row = sqlx::query(
        "SELECT e.name, e.api, e.auth_env, e.offers, t.upstream_model, t.params, \
         t.max_tools_bytes, t.over_tools FROM handle_targets t JOIN endpoints e ON e.id = t.endpoint_id",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("name"), "mini");
    assert_eq!(row.get::<String, _>("api"), "ovms");
    assert_eq!(row.get::<String, _>("auth_env"), "MINI_KEY");
    assert_eq!(row.get::<Option<String>, _>("offers"), None);
    assert_eq!(row.get::<String, _>("params"), "{\"top_k\":20}");
    assert_eq!(row.get::<i64, _>("max_tools_bytes"), 4000);
    assert_eq!(row.get::<String, _>("over_tools"), "refuse");
    // The reference holds: an endpoint in use cannot go.
    assert!(
        sqlx::query("DELETE FROM endpoints WHERE id = 7")
            .execute(db.pool())
            .await
            .is_err()
    );
    let broken = sqlx::query("SELECT * FROM pragma_foreign_key_check")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert!(broken.is_empty());
    // The new flavour is accepted; an unknown one still is not.
    sqlx::query(
        "INSERT INTO endpoints (name, base_url, api, created_at_ms, updated_at_ms) \
         VALUES ('claude', 'https://api.anthropic.com/v1', 'anthropic', 1, 1)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    assert!(
        sqlx::query(
            "INSERT INTO endpoints (name, base_url, api, created_at_ms, updated_at_ms) \
             VALUES ('x', 'http://x/v1', 'nope', 1, 1)",
        )
        .execute(db.pool())
        .await
        .is_err()
    );
    let stats = sqlx::query("SELECT handle, targets FROM v_handle_stats")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(stats.get::<i64, _>("targets"), 1);
    db.close().await;
}
