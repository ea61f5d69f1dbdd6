//! `vector-db`: the homelab's vector store, speaking the part of Qdrant's REST API that
//! Open WebUI (`VECTOR_DB=qdrant`) and other Qdrant clients use.
//!
//! Collections hold one unnamed cosine vector per point and a JSON payload. Every point is
//! kept in memory ([`collection`]) for an exact scan with SIMD dot products ([`simd`]),
//! narrowed by payload indexes where a filter allows ([`filter`]); every change is written
//! to the database first ([`store`], storage in `docsdb::vectors`), so an answered write is
//! on disk and a restart loses nothing. Answers and errors have Qdrant's shapes
//! ([`routes`], [`error`]).
//!
//! Start reading at [`routes()`] and [`store::Store`].

pub mod collection;
mod config;
mod error;
pub mod filter;
pub mod hnsw;
pub mod payload;
pub mod routes;
pub mod simd;
pub mod store;
pub mod vectors;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use service_kit::auth::{KeyCheck, check_key, digest, open_without_key, request_key};
use service_kit::routes::Routes;

pub use config::{Config, DEFAULT_DB_URL};
pub use error::Error;

/// Has glibc's allocator give every block of 256 KiB or more its own mapping, returned to
/// the system when freed, for the whole process: call it first thing in `main`, before any
/// thread starts (a no-op on other C libraries).
///
/// glibc raises that threshold to the size of the largest block freed so far (up to 32 MiB):
/// after the first multi-megabyte upsert body is freed, every later body, parsed batch and
/// statement buffer is carved from the heaps, between the small payloads that stay, and the
/// holes they leave are never given back. Measured over HTTP with 100,000 × 384 points in
/// batches of 1,000: 230 MB resident with the moving threshold, 198 MB with it fixed (the
/// vectors alone are 146.5 MB). The standalone service calls this; inside `homelab up` the
/// inference engine shares the process, and its per-step tensors are better served by the
/// moving threshold, so `up` does not.
pub fn keep_large_buffers_off_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = 256 * 1024;
        // SAFETY: mallopt only sets a parameter of the allocator; it is called before the
        // runtime starts any thread. It fails only for a parameter glibc does not know,
        // which this one is not, and then nothing changes.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: store::Store,
    /// SHA-256 of the API key, compared instead of the key.
    key_digest: Option<[u8; 32]>,
}

/// The routes and their table.
pub fn routes() -> Routes<Arc<AppState>> {
    use routes as r;
    Routes::new()
        .get(
            "/",
            r::root,
            "Name and version (`qdrant - vector search engine`, 1.18.0)",
        )
        .get("/collections", r::list, "Collection names")
        .get(
            "/collections/{c}",
            r::info,
            "A collection: vector size, settings, payload indexes, point count",
        )
        .put(
            "/collections/{c}",
            r::create,
            "Create a collection (one unnamed Cosine vector)",
        )
        .delete(
            "/collections/{c}",
            r::delete,
            "Delete a collection and its points",
        )
        .get(
            "/collections/{c}/exists",
            r::exists,
            "Whether a collection exists",
        )
        .put(
            "/collections/{c}/index",
            r::create_index,
            "Create a payload index on a field",
        )
        .delete(
            "/collections/{c}/index/{field}",
            r::delete_index,
            "Drop a payload index",
        )
        .put(
            "/collections/{c}/points",
            r::upsert,
            "Upsert points (a list or a batch); on disk when answered",
        )
        .post("/collections/{c}/points", r::retrieve, "Points by id")
        .get(
            "/collections/{c}/points/{id}",
            r::point,
            "One point by id, with its vector",
        )
        .post(
            "/collections/{c}/points/query",
            r::query,
            "Nearest points to a vector or a stored point, filtered",
        )
        .post(
            "/collections/{c}/points/search",
            r::search,
            "Nearest points to a vector (the older search route)",
        )
        .post(
            "/collections/{c}/points/scroll",
            r::scroll,
            "Points in id order, filtered, page by page",
        )
        .post(
            "/collections/{c}/points/count",
            r::count,
            "How many points pass a filter",
        )
        .post(
            "/collections/{c}/points/delete",
            r::delete_points,
            "Delete points by id or by filter",
        )
        .post(
            "/collections/{c}/points/payload",
            r::set_payload,
            "Set payload keys of points by id or filter",
        )
        .put(
            "/collections/{c}/points/payload",
            r::overwrite_payload,
            "Replace the payload of points by id or filter",
        )
        .get(
            "/healthz",
            r::healthz,
            "Qdrant's liveness probe (no key needed)",
        )
        .get(
            "/livez",
            r::healthz,
            "Qdrant's liveness probe (no key needed)",
        )
        .get(
            "/readyz",
            r::healthz,
            "Qdrant's readiness probe (no key needed)",
        )
        .get(
            "/metrics",
            r::metrics,
            "Prometheus metrics: collections, points, vector bytes",
        )
        .health(|state: Arc<AppState>| async move {
            state.store.db().ping().await.map_err(|e| e.to_string())
        })
}

/// The router on `state`, keys checked.
pub fn app(state: Arc<AppState>) -> Router {
    routes()
        .into_router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ))
        .with_state(state)
}

/// Health probes need no key; everything else needs `api-key` or a bearer token when one is
/// set.
async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(want) = &state.key_digest else {
        return next.run(req).await;
    };
    if matches!(
        req.uri().path(),
        "/health" | "/health/ready" | "/healthz" | "/livez" | "/readyz"
    ) {
        return next.run(req).await;
    }
    match check_key(want, request_key(req.headers(), &["api-key"])) {
        KeyCheck::Missing => Error::MissingKey.into_response(),
        KeyCheck::Invalid => Error::InvalidKey.into_response(),
        KeyCheck::Valid => next.run(req).await,
    }
}

/// Without an API key, only loopback unless `--allow-unauthenticated`.
pub fn check_bind(config: &Config) -> Result<(), Error> {
    if open_without_key(
        &config.bind,
        config.api_key.is_some(),
        config.allow_unauthenticated,
    ) {
        return Err(Error::UnsafeBind(config.bind.clone()));
    }
    Ok(())
}

/// Runs the store until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    check_bind(&config)?;
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the store on a bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let db = docsdb::vectors::open(&config.db).await?;
    let limits = store::Limits {
        max_limit: config.max_limit,
        max_batch: config.max_batch,
        max_dim: config.max_dim,
        max_collections: config.max_collections,
        max_payload_bytes: config.max_payload_bytes,
        approximate_above: config.approximate_above,
    };
    let store = store::Store::load(db, limits).await?;
    store.build_graphs_in_background();
    let body_limit = config.common.body_limit;
    let drain = config.common.drain_timeout;
    let state = Arc::new(AppState {
        key_digest: config.api_key.as_deref().map(digest),
        config,
        store,
    });
    let router = service_kit::server::with_common_layers(app(state.clone()), body_limit);
    let plan = service_kit::server::ShutdownPlan::new(shutdown, drain);
    let served = service_kit::server::serve(listener, router, plan).await;
    state.store.db().close().await;
    served?;
    Ok(())
}

service_kit::service!(
    Config,
    "vector-db",
    Error,
    common = common,
    routes = routes().table().to_vec(),
    check = check_bind
);
