//! Opening the DB: URL handling, SQLite pragmas, the pool, migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Executor};

use crate::error::{Error, Result};

/// The default DB URL: a SQLite file under `./var/`, created on first use.
pub const DEFAULT_DB_URL: &str = "sqlite://./var/system-docs.db";

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_VECTOR_MIGRATIONS: Migrator = sqlx::migrate!("./migrations-vectors/sqlite");
static POSTGRES_VECTOR_MIGRATIONS: Migrator = sqlx::migrate!("./migrations-vectors/postgres");

/// Which schema a database holds: the system-docs DB, or the vector store's own database
/// ([`crate::vectors`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    SystemDocs,
    Vectors,
}

/// Which dialect a [`Db`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Whether a statement that binds an `Option<f64>` may be cached. Not on Postgres: sqlx's
    /// Any driver declares a NULL double as a `float4` parameter, and a cached statement
    /// prepared that way refuses the next real double ("incorrect binary data format").
    /// Such statements are prepared afresh each time there.
    pub fn caches_nullable_floats(self) -> bool {
        self == Backend::Sqlite
    }
}

/// Appends `rows` placeholder tuples of `cols` each (`(?, ?), (?, ?)` or `($1, $2), ($3, $4)`)
/// for a multi-row `INSERT ... VALUES`. SQLite gets anonymous `?` placeholders: with numbered
/// ones, looking up each parameter's name walks a list as long as the statement's parameters,
/// which makes binding quadratic. sqlx's QueryBuilder writes `?` for the Any driver, which
/// Postgres does not accept.
pub(crate) fn push_values(sql: &mut String, rows: usize, cols: usize, backend: Backend) {
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(r * cols + c + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
}

/// A query of the Any driver, as [`insert_rows`] hands it to its binder.
pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Writes `rows` in one transaction with multi-row `INSERT`s: `head` (`INSERT INTO t (a, b)
/// VALUES `) and `per_statement` rows of `cols` placeholders each, `bind` binding one row's
/// values in column order. Either all are written or none; how many were.
pub(crate) async fn insert_rows<R>(
    db: &Db,
    head: &str,
    cols: usize,
    per_statement: usize,
    rows: &[R],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q R) -> AnyQuery<'q>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut tx = db.pool().begin().await?;
    let mut written = 0;
    for chunk in rows.chunks(per_statement.max(1)) {
        let mut sql = String::from(head);
        push_values(&mut sql, chunk.len(), cols, db.backend());
        let mut q = sqlx::query(&sql).persistent(db.backend().caches_nullable_floats());
        for r in chunk {
            q = bind(q, r);
        }
        written += q.execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(written)
}

/// Pool and timeout settings. Every limit is explicit.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Connections in the pool (SQLite in memory always uses one).
    pub max_connections: u32,
    /// How long to wait for a free connection.
    pub acquire_timeout: Duration,
    /// How long SQLite waits on a locked database before failing (`PRAGMA busy_timeout`).
    pub busy_timeout: Duration,
    /// SQLite: a commit is on disk when it returns, also across a power cut
    /// (`synchronous = FULL`); otherwise it survives a crash of the process, not of the machine.
    pub durable: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(5),
            durable: false,
        }
    }
}

/// A connection pool to the system-docs DB.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl Db {
    /// Opens the DB at `url` with default options. A SQLite file (and its folder) is created
    /// if missing. Does not migrate: call [`Db::migrate`].
    pub async fn connect(url: &str) -> Result<Db> {
        Self::connect_with(url, &DbOptions::default()).await
    }

    /// Opens the DB at `url`.
    pub async fn connect_with(url: &str, opts: &DbOptions) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let shown = redact(url);
        let (backend, url_for_sqlx, in_memory) = normalise(url)?;
        if backend == Backend::Sqlite && !in_memory {
            create_private_file(&url_for_sqlx).map_err(|e| Error::Connect {
                url: shown.clone(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let connect_opts = AnyConnectOptions::from_str(&url_for_sqlx)
            .map_err(|source| Error::Connect {
                url: shown.clone(),
                source,
            })?
            .disable_statement_logging();
        // One direct connection first: the pool would retry a refused connection until its
        // acquire timeout and then report only "timed out"; this surfaces the real reason
        // (refused, unknown host, bad password) at once.
        let probe = tokio::time::timeout(
            opts.acquire_timeout,
            AnyConnection::connect_with(&connect_opts),
        )
        .await
        .map_err(|_| Error::Connect {
            url: shown.clone(),
            source: sqlx::Error::PoolTimedOut,
        })?
        .map_err(|source| Error::Connect {
            url: shown.clone(),
            source,
        })?;
        let _ = probe.close().await;
        let busy_ms = opts.busy_timeout.as_millis();
        let synchronous = if opts.durable { "FULL" } else { "NORMAL" };
        let max = if in_memory {
            1
        } else {
            opts.max_connections.max(1)
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(opts.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers (the monitor) run beside the writer (the gateway's
                        // request log); NORMAL sync is safe with WAL and much faster.
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {busy_ms};"
                            )
                            .as_str(),
                        )
                        .await?;
                    } else {
                        // Every query here is short. Postgres JIT-compiles a query whose
                        // estimated cost passes `jit_above_cost`, and the monitor's status view
                        // (correlated counts over the health checks) is estimated high: on a
                        // week of probes, compiling took 300 ms of a 1 ms query.
                        conn.execute("SET jit = off").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect_opts)
            .await
            .map_err(|source| Error::Connect {
                url: shown.clone(),
                source,
            })?;
        Ok(Db {
            pool,
            backend,
            url: shown,
        })
    }

    /// Applies the system-docs migrations of this dialect that have not run yet.
    pub async fn migrate(&self) -> Result<()> {
        self.migrate_schema(Schema::SystemDocs).await
    }

    /// Applies the migrations of `schema` in this dialect that have not run yet.
    pub async fn migrate_schema(&self, schema: Schema) -> Result<()> {
        let migrator = match (schema, self.backend) {
            (Schema::SystemDocs, Backend::Sqlite) => &SQLITE_MIGRATIONS,
            (Schema::SystemDocs, Backend::Postgres) => &POSTGRES_MIGRATIONS,
            (Schema::Vectors, Backend::Sqlite) => &SQLITE_VECTOR_MIGRATIONS,
            (Schema::Vectors, Backend::Postgres) => &POSTGRES_VECTOR_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Opens and migrates: what every service does at start.
    pub async fn open(url: &str) -> Result<Db> {
        let db = Self::connect(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The schema version the DB is at (the newest migration applied), if any.
    pub async fn schema_version(&self) -> Result<Option<i64>> {
        use sqlx::Row;
        let row = sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("v")?)
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that will write after reading. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so it waits its turn under the busy timeout; a deferred one
    /// would fail with "database is locked" when another writer (a running stack's request
    /// log, its monitor) committed between its first read and its first write.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The dialect.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL with any password replaced by `***`, safe to print.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes the pool, waiting for connections to return.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Splits off the backend and, for a SQLite file, asks sqlx to create it if missing.
fn normalise(url: &str) -> Result<(Backend, String, bool)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned(), false));
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(Error::BadUrl(redact(url)));
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let in_memory = path.is_empty() || path == ":memory:";
    let mut out = format!("sqlite://{path}");
    match query {
        Some(q) if q.contains("mode=") => out = format!("{out}?{q}"),
        Some(q) => out = format!("{out}?{q}&mode=rwc"),
        None if in_memory => {}
        None => out.push_str("?mode=rwc"),
    }
    Ok((Backend::Sqlite, out, in_memory))
}

/// Creates the folder of a SQLite file (so that a fresh `./var/` works) and, if the file is
/// missing, the file itself, readable by its owner only: it holds the request log (user
/// names and e-mails), stored responses, documents. SQLite gives its `-wal` and `-shm`
/// files the database file's permissions. A file that exists keeps its permissions; one
/// that others may read is reported.
fn create_private_file(sqlite_url: &str) -> std::io::Result<()> {
    let path = sqlite_url.trim_start_matches("sqlite://");
    let path = std::path::Path::new(path.split_once('?').map_or(path, |(p, _)| p));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    if !sqlite_url.contains("mode=rwc") {
        return Ok(());
    }
    let mut create = std::fs::OpenOptions::new();
    create.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
    match create.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(path);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} may be read by other users (mode {:o}): `chmod 600` it",
            path.display(),
            m.permissions().mode() & 0o777
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &std::path::Path) {}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_are_created_on_first_use() {
        let (b, u, mem) = normalise("sqlite://./var/x.db").unwrap();
        assert_eq!(
            (b, u.as_str(), mem),
            (Backend::Sqlite, "sqlite://./var/x.db?mode=rwc", false)
        );
        let (_, u, mem) = normalise("sqlite::memory:").unwrap();
        assert_eq!((u.as_str(), mem), ("sqlite://:memory:", true));
        let (_, u, _) = normalise("sqlite:///abs/x.db?mode=ro").unwrap();
        assert_eq!(u, "sqlite:///abs/x.db?mode=ro");
        assert!(normalise("mysql://x").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://./var/x.db"), "sqlite://./var/x.db");
    }
}
