//! The homelab-llm gateway: the single entry point for model traffic.
//!
//! A request's `model` names a **handle**; the handle's targets (endpoint + upstream model)
//! are tried in the order its strategy gives ([`routing`]), skipping targets whose circuit
//! breaker is open, retrying and falling back only while nothing has reached the client
//! ([`proxy`]). The body goes upstream byte for byte except `model` and unset defaults
//! ([`rewrite`]); SSE streams are relayed chunk by chunk. Keys and limits ([`auth`],
//! [`limits`]) are checked against an in-memory table ([`table`]) that reloads when the
//! system-docs DB changes. Every request becomes one `request_log` row, written in batches
//! off the request path; `/metrics` exposes the rest ([`metrics`]). A backend that is
//! loading its model, or still working through its queue, is waited for rather than given up
//! on ([`patience`]); Open WebUI's background tasks go to it with a background priority
//! ([`priority`]). Plain-HTTP upstreams are reached by a lean HTTP/1.1 client ([`h1`]);
//! with the `otlp` feature, requests and their attempts can be exported as traces (`otlp`).
//!
//! Start reading at [`app`] and [`proxy::forward`].

pub mod anthropic;
pub mod auth;
pub mod cache;
mod config;
mod error;
pub mod h1;
pub mod limits;
pub mod mcp;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod patience;
pub mod priority;
pub mod proxy;
pub mod responses;
pub mod rewrite;
pub mod routes;
pub mod routing;
pub mod searxng;
pub mod state;
pub mod table;
pub mod upload;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use service_kit::routes::Routes;

pub use config::Config;
pub use error::Error;
pub use state::AppState;

/// The gateway's routes and their table, around its MCP endpoint (see [`mcp`]).
pub fn routes(mcp: mcp_kit::Endpoint) -> Routes<Arc<AppState>> {
    use routes::{admin, messages, models, openai, responses, search};
    let api = Routes::new()
        .post(
            "/chat/completions",
            openai::chat,
            "OpenAI chat completions, routed by the handle in `model` (streamed or not)",
        )
        .post(
            "/messages",
            messages::messages,
            "Anthropic Messages for any handle (`x-api-key` or Bearer; streamed as Anthropic's events), translated to chat completions",
        )
        .post(
            "/messages/count_tokens",
            messages::count_tokens,
            "Anthropic's token count of a Messages request, as the handle's model counts it",
        )
        .post(
            "/responses",
            responses::create,
            "The OpenAI Responses API for any handle (function tools, streaming events; `store` and `previous_response_id`), translated to chat completions",
        )
        .get(
            "/responses/{id}",
            responses::retrieve,
            "A response stored with `store: true`, for the key that stored it",
        )
        .delete(
            "/responses/{id}",
            responses::delete,
            "Forget a stored response (the key that stored it)",
        )
        .post(
            "/completions",
            openai::completions,
            "OpenAI text completions, routed by handle",
        )
        .post(
            "/embeddings",
            openai::embeddings,
            "OpenAI embeddings, routed by handle",
        )
        .post(
            "/audio/transcriptions",
            openai::transcriptions,
            "Speech to text: a multipart form routed by its `model`, streamed to the target (up to --max-upload)",
        )
        .post(
            "/audio/translations",
            openai::translations,
            "Speech to English text: a multipart form routed by its `model`, streamed to the target",
        )
        .post(
            "/audio/speech",
            openai::speech,
            "Text to speech: the audio streamed back as the target sends it",
        )
        .post(
            "/images/generations",
            openai::images,
            "Image generation, routed by handle",
        )
        .post(
            "/rerank",
            openai::rerank,
            "Reranking in the Cohere/Jina shape (as llama.cpp and vLLM serve it), routed by handle",
        )
        .get(
            "/models",
            models::list,
            "The handles this key may use, as OpenAI models",
        )
        .get(
            "/models/{id}",
            models::get,
            "One handle, as an OpenAI model",
        )
        .post(
            "/search",
            search::default_tool,
            "Web search through the default search tool",
        )
        .post(
            "/search/openwebui",
            search::open_webui,
            "Web search in the shape of Open WebUI's external engine (bare array of link/title/snippet)",
        )
        .post(
            "/search/{tool}",
            search::named_tool,
            "Web search through a named search tool",
        );
    Routes::new()
        .merge(api.under_v1_and_root())
        .service("/mcp", mcp, &mcp_kit::ENDPOINT_METHODS)
        .post(
            "/admin/reload",
            admin::reload,
            "Re-read the handle and key tables now (master key)",
        )
        .get("/metrics", admin::metrics, "Prometheus metrics")
        .health(admin::ready)
}

/// The gateway's router, on `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let opts = mcp_kit::HttpOptions {
        host_headers: state.config.mcp_host_headers.clone(),
        body_limit: state.config.common.body_limit,
        cancel: state.mcp_cancel.clone(),
        ..mcp_kit::HttpOptions::default()
    };
    let tools = state.clone();
    let mcp = mcp_kit::endpoint(move || mcp::GatewayTools::new(tools.clone()), &opts).layer(
        axum::middleware::from_fn_with_state(state.clone(), mcp::authenticate),
    );
    routes(mcp).into_router().with_state(state)
}

/// Checks the bind address against the key setting: without a master key, only loopback
/// unless `--allow-unauthenticated`.
pub fn check_bind(config: &Config) -> Result<(), Error> {
    if service_kit::auth::open_without_key(
        &config.bind,
        config.master_key.is_some(),
        config.allow_unauthenticated,
    ) {
        return Err(Error::UnsafeBind(config.bind.clone()));
    }
    Ok(())
}

/// The shared body limit, and `--max-upload` for the audio uploads (streamed, not held).
fn body_limits(config: &Config) -> service_kit::body::BodyLimits {
    let upload = config.max_upload;
    service_kit::body::BodyLimits {
        default: config.common.body_limit,
        paths: std::sync::Arc::new([
            ("/v1/audio/transcriptions", upload),
            ("/v1/audio/translations", upload),
            ("/audio/transcriptions", upload),
            ("/audio/translations", upload),
        ]),
    }
}

/// Runs the gateway until `shutdown` resolves, then drains requests and flushes the log.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    check_bind(&config)?;
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the gateway on a bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let state = AppState::new(config).await?;
    serve_state(listener, state, shutdown).await
}

/// As [`serve_on`], with a state the caller keeps (tests read its metrics and log).
pub async fn serve_state(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    state.spawn_reloader();
    let drain = state.config.common.drain_timeout;
    let logs = state.clone();
    let router = service_kit::server::with_edge(
        app(state.clone()),
        body_limits(&state.config),
        Some(Arc::new(move |refused| proxy::log_refusal(&logs, refused))),
    );
    let flush = state.clone();
    let cancel = state.mcp_cancel.clone();
    let shutdown = async move {
        shutdown.await;
        // Open `/mcp` event streams end, so that the drain can finish.
        cancel.cancel();
    };
    let plan = service_kit::server::ShutdownPlan::new(shutdown, drain).on_shutdown(
        service_kit::server::flush_hook(move || async move {
            flush
                .tasks
                .shutdown(std::time::Duration::from_secs(5))
                .await;
            flush.log.close().await;
            #[cfg(feature = "otlp")]
            if let Some(e) = &flush.otlp {
                e.flush(std::time::Duration::from_secs(5)).await;
            }
            flush.tool_log.close().await;
            tracing::info!("request log and tool calls flushed");
        }),
    );
    service_kit::server::serve(listener, router, plan).await?;
    Ok(())
}

service_kit::service!(
    Config,
    "gateway",
    Error,
    common = common,
    routes = routes(mcp_kit::placeholder()).table().to_vec(),
    check = check_bind
);
