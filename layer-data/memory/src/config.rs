//! The memory service's flags, with environment fallbacks and every limit explicit.

use clap::Parser;
use service_kit::config::CommonArgs;

/// homelab-llm memory: user memory for agents and scripts in the mem0 open-source server's
/// REST shape. Memories are points in vector-db (through its Qdrant API) with embeddings from
/// the gateway's `embed` handle; a near-duplicate of a memory of the same user updates it.
#[derive(Debug, Clone, Parser)]
#[command(name = "memory", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOMELAB_MEMORY_BIND", default_value = "127.0.0.1:4031")]
    pub bind: String,

    /// The API key. With it every route but the health checks needs `Authorization: Bearer`
    /// (or `Token`, or `X-API-Key`, as mem0's clients send it). Set it through the environment.
    #[arg(long, env = "HOMELAB_MEMORY_API_KEY")]
    pub api_key: Option<String>,

    /// Serve without an API key on a non-loopback address (refused otherwise).
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// The vector store (vector-db, or any Qdrant REST server).
    #[arg(
        long,
        env = "HOMELAB_VECTOR_DB_URL",
        default_value = "http://127.0.0.1:4030"
    )]
    pub vector_db: String,

    /// The vector store's API key.
    #[arg(long, env = "HOMELAB_VECTOR_DB_API_KEY")]
    pub vector_db_key: Option<String>,

    /// The collection memories live in (created on first use, with keyword indexes on
    /// `user_id`, `agent_id` and `run_id`).
    #[arg(long, default_value = "memories")]
    pub collection: String,

    /// The OpenAI-compatible API embeddings and fact extraction go through (the gateway).
    #[arg(
        long,
        env = "HOMELAB_GATEWAY_URL",
        default_value = "http://127.0.0.1:4000/v1"
    )]
    pub gateway: String,

    /// The key for the gateway.
    #[arg(long, env = "HOMELAB_GATEWAY_KEY")]
    pub gateway_key: Option<String>,

    /// The model (handle) that makes embeddings.
    #[arg(long, default_value = "embed")]
    pub embed_model: String,

    /// The model (handle) that extracts facts from a conversation when a request sets
    /// `infer: true`.
    #[arg(long, default_value = "default")]
    pub infer_model: String,

    /// A new memory whose cosine similarity to an existing memory of the same user (agent,
    /// run) reaches this updates that memory instead of adding a second one.
    #[arg(long, default_value_t = 0.9)]
    pub duplicate_threshold: f32,

    /// The longest memory text, in characters.
    #[arg(long, default_value_t = 8192)]
    pub max_memory_chars: usize,

    /// The most messages one `POST /memories` may carry.
    #[arg(long, default_value_t = 100)]
    pub max_messages: usize,

    /// The most memories a list or a search returns; a larger `top_k`/`limit` is capped.
    #[arg(long, default_value_t = 1000)]
    pub max_results: usize,

    /// History entries kept per memory (its first and the latest).
    #[arg(long, default_value_t = 100)]
    pub max_history: usize,

    /// How long a call to the vector store or the gateway may take (fact extraction by a
    /// small model on a CPU takes a while).
    #[arg(long, default_value = "120s", value_parser = service_kit::config::duration)]
    pub upstream_timeout: std::time::Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// A configuration for `bind` with every other setting at its default (for `homelab up`
    /// and tests).
    pub fn new(bind: &str, vector_db: &str, gateway: &str) -> Config {
        let mut c = Config::parse_from(["memory"]);
        c.bind = bind.to_owned();
        c.vector_db = vector_db.to_owned();
        c.gateway = gateway.to_owned();
        c.api_key = None;
        c.vector_db_key = None;
        c.gateway_key = None;
        c
    }
}
