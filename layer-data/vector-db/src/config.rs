//! The vector store's flags, with environment fallbacks and every limit explicit.

use clap::Parser;
use service_kit::config::CommonArgs;

/// The default database: a SQLite file of its own under `./var/`.
pub const DEFAULT_DB_URL: &str = "sqlite://./var/vectors.db";

/// homelab-llm vector store: the part of Qdrant's REST API that Open WebUI and other
/// clients use (REST only, no gRPC), exact cosine search over vectors held in memory, every
/// write on disk before it is answered.
#[derive(Debug, Clone, Parser)]
#[command(name = "vector-db", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOMELAB_VECTOR_DB_BIND", default_value = "127.0.0.1:4030")]
    pub bind: String,

    /// Where points are stored: a SQLite file, or a Postgres database (or schema) of its own.
    #[arg(long, env = "HOMELAB_VECTOR_DB", default_value = DEFAULT_DB_URL)]
    pub db: String,

    /// The API key. With it every route but the health checks needs the `api-key` header or
    /// `Authorization: Bearer`. Set it through the environment so it does not show in `ps`.
    #[arg(long, env = "HOMELAB_VECTOR_DB_API_KEY")]
    pub api_key: Option<String>,

    /// Serve without an API key on a non-loopback address (refused otherwise).
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// The most points a query, search or scroll returns; a larger `limit` is capped to it.
    #[arg(long, default_value_t = 10_000)]
    pub max_limit: usize,

    /// The most points one upsert may carry.
    #[arg(long, default_value_t = 10_000)]
    pub max_batch: usize,

    /// The largest vector dimension a collection may have.
    #[arg(long, default_value_t = 8192)]
    pub max_dim: usize,

    /// The most collections the store holds.
    #[arg(long, default_value_t = 1000)]
    pub max_collections: usize,

    /// From this many points on, a search without a filter walks an HNSW graph (the
    /// collection's `hnsw_config` m and ef_construct, Qdrant's 16 and 100 by default; m 0: no
    /// graph; recall@10 in docs/PERFORMANCE.md) instead of reading every point;
    /// `"params": {"exact": true}` asks for the exact scan, `"hnsw_ef"` for a wider walk.
    /// 0: always exact.
    #[arg(long, default_value_t = 20_000)]
    pub approximate_above: usize,

    /// The largest payload of one point, in bytes of JSON.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,

    /// Searches scanning more vector values than this (points × dimension) run on the
    /// blocking pool rather than on the request's thread.
    #[arg(long, default_value_t = 1 << 20)]
    pub blocking_scan: usize,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// The defaults, on `bind` with the database at `db` (for code that composes services).
    pub fn new(db: &str, bind: &str) -> Config {
        let mut c = Config::parse_from(["vector-db"]);
        c.db = db.to_owned();
        c.bind = bind.to_owned();
        c
    }
}
