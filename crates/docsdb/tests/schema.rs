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
