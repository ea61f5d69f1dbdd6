//! Test databases: a SQLite file in a temp folder, and a fresh schema on a real Postgres.
//!
//! Postgres comes from `HOMELAB_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Outside CI an unreachable server skips the Postgres half with a note; with `CI=true` it
//! fails the test, so CI never passes without running against Postgres.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::sync::atomic::{AtomicU32, Ordering};

use docsdb::Db;
use sqlx::Connection;

pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct TestDb {
    pub db: Db,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    /// Drops the Postgres schema (SQLite's folder goes with the value).
    pub async fn cleanup(self) {
        self.db.close().await;
        if let Some((base, schema)) = &self.pg_schema {
            let mut c = sqlx::PgConnection::connect(base).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/var/system-docs.db", dir.path().display());
    let db = Db::open(&url).await.unwrap();
    TestDb {
        db,
        url,
        _dir: Some(dir),
        pg_schema: None,
    }
}

pub fn pg_base_url() -> String {
    std::env::var("HOMELAB_TEST_PG").unwrap_or_else(|_| DEFAULT_PG.to_owned())
}

/// A migrated DB in a schema of its own, or `None` when Postgres is unreachable outside CI.
pub async fn postgres() -> Option<TestDb> {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = pg_base_url();
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true but Postgres at {base} is unreachable: {e}");
            }
            eprintln!("note: Postgres at {base} unreachable ({e}); skipping the Postgres half");
            return None;
        }
    };
    let schema = format!(
        "homelab_t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        docsdb::now_ms() % 1_000_000
    );
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let db = Db::open(&url).await.unwrap();
    Some(TestDb {
        db,
        url,
        _dir: None,
        pg_schema: Some((base, schema)),
    })
}

/// Runs `$test(db: Db)` once on SQLite and once on Postgres.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    let t = $crate::common::sqlite().await;
                    super::$name(t.db.clone()).await;
                    t.cleanup().await;
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(t) = $crate::common::postgres().await {
                        super::$name(t.db.clone()).await;
                        t.cleanup().await;
                    }
                }
            }
        )+
    };
}
