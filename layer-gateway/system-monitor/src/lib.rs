//! The homelab-llm system monitor. It has no truth of its own: it writes health checks into
//! the system-docs DB ([`probe`]) and shows SQL views over it — the registry joined with the
//! checks and the gateway's request log — as a dashboard ([`page`]), a JSON API ([`api`]) and
//! Prometheus gauges ([`metrics`]). Status changes go to webhooks ([`alerts`]). Each complete
//! hour is folded into hourly rollups, which keeps the views fast, and raw rows past the
//! retention are deleted, which keeps the DB small ([`rollup_loop`]).
//!
//! Start reading at [`serve_on`].

pub mod alerts;
pub mod api;
mod config;
mod error;
pub mod mcp;
pub mod metrics;
pub mod page;
pub mod probe;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use service_kit::routes::Routes;

pub use config::Config;
pub use error::Error;
pub use state::AppState;

/// The least retention: the views read the raw rows of the last hour and of the first,
/// partial hour of the 24 h window.
pub const MIN_RETENTION: Duration = Duration::from_secs(25 * 3600);

/// The monitor's routes and their table, around its MCP endpoint (see [`mcp`]).
pub fn routes(mcp: mcp_kit::Endpoint) -> Routes<Arc<AppState>> {
    Routes::new()
        .get("/", page::dashboard, "The dashboard page (read-only)")
        .get(
            "/api/status",
            api::status,
            "Every service's state, from the system-docs DB's views (`?format=text`: one sentence to be read aloud)",
        )
        .get(
            "/api/services/{name}",
            api::service,
            "One service: state, checks, recent errors",
        )
        .get(
            "/api/handles",
            api::handles,
            "Traffic, latency and tokens per routing handle",
        )
        .get(
            "/api/handles/{handle}",
            api::handle,
            "One handle's traffic and its callers (keys, Open WebUI users) over 24 h",
        )
        .get(
            "/api/models",
            api::models,
            "Registered models and where they are served",
        )
        .get("/api/hosts", api::hosts, "Hosts and their services")
        .get(
            "/api/errors",
            api::errors,
            "Recent errors across the stack (requests, probes, tool calls)",
        )
        .get(
            "/api/tools",
            api::tools,
            "Tool calls per tool over 24 h and the newest calls (`?request_id=` one request's)",
        )
        .service("/mcp", mcp, &mcp_kit::ENDPOINT_METHODS)
        .get("/metrics", metrics::metrics, "Prometheus metrics")
        .health(
            |state: Arc<AppState>| async move { state.db.ping().await.map_err(|e| e.to_string()) },
        )
}

/// The monitor's router, on `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let db = state.db.clone();
    let opts = mcp_kit::HttpOptions {
        host_headers: state.config.mcp_host_headers.clone(),
        body_limit: state.config.common.body_limit,
        cancel: state.mcp_cancel.clone(),
        ..mcp_kit::HttpOptions::default()
    };
    let mcp = mcp_kit::endpoint(move || mcp::MonitorTools::new(db.clone()), &opts);
    routes(mcp).into_router().with_state(state)
}

/// Runs the monitor until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = service_kit::server::bind(&config.bind).await?;
    serve_on(listener, config, shutdown).await
}

/// Runs the monitor on a bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let db = docsdb::Db::open(&config.db).await?;
    serve_with_db(listener, config, db, shutdown).await
}

/// As [`serve_on`], on a DB connection the caller opened (and the monitor closes).
pub async fn serve_with_db(
    listener: tokio::net::TcpListener,
    config: Config,
    db: docsdb::Db,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if config.retention < MIN_RETENTION {
        return Err(Error::BadConfig(format!(
            "--retention {:?} is shorter than the least, 25h",
            config.retention
        )));
    }
    let fail_threshold = config.fail_threshold.max(1);
    let interval_ms = u64::try_from(config.probe_interval.as_millis()).unwrap_or(u64::MAX);
    docsdb::monitor::write_settings(&db, fail_threshold, interval_ms).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let state = Arc::new(AppState::new(config, db, tx)?);
    baseline(&state).await;

    // Alerts run until shutdown and then deliver what is queued; probes and rollups stop.
    state.tasks.spawn(alerts::run(state.clone(), rx));
    state
        .tasks
        .spawn_loop("rollups", rollup_loop(state.clone()));
    if !state.config.no_probe {
        state.tasks.spawn_loop("probes", probe::run(state.clone()));
    }
    let body_limit = state.config.common.body_limit;
    let drain = state.config.common.drain_timeout;
    let router = service_kit::server::with_common_layers(app(state.clone()), body_limit);
    let mcp_cancel = state.mcp_cancel.clone();
    let shutdown = async move {
        shutdown.await;
        mcp_cancel.cancel();
    };
    let plan = service_kit::server::ShutdownPlan::new(shutdown, drain);
    let served = service_kit::server::serve(listener, router, plan).await;
    // Probes in progress finish, alerts queued or being retried are delivered (bounded by
    // the drain time), then the DB closes.
    state.tasks.shutdown(drain).await;
    state.db.close().await;
    served?;
    Ok(())
}

/// Seeds each service's last status from the DB, so a restart does not re-send alerts for
/// changes already told. A status that is only `unknown` because nobody probed for a while
/// is seeded with what the last probes said.
async fn baseline(state: &AppState) {
    let rows = match docsdb::health::statuses(&state.db).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the services' last status");
            return;
        }
    };
    let Ok(mut last) = state.last_status.lock() else {
        return;
    };
    for r in rows {
        let status = if r.stale {
            match r.last_ok {
                Some(true) => "up".to_owned(),
                Some(false) if r.failures_in_row >= r.fail_threshold => "down".to_owned(),
                Some(false) => "degraded".to_owned(),
                None => r.status,
            }
        } else {
            r.status
        };
        last.insert(r.service, status);
    }
}

/// Folds complete hours into the rollups and deletes rows older than the retention, now and
/// every interval.
pub async fn rollup_loop(state: Arc<AppState>) {
    let retention_ms = i64::try_from(state.config.retention.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(state.config.rollup_interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = docsdb::now_ms();
        match docsdb::monitor::rollup(&state.db, now, now.saturating_sub(retention_ms)).await {
            Ok(r) if r != docsdb::monitor::RollupReport::default() => {
                state.metrics.rollup_rows.fetch_add(
                    r.health_rows + r.request_rows,
                    std::sync::atomic::Ordering::Relaxed,
                );
                tracing::info!(
                    health_rows = r.health_rows,
                    request_rows = r.request_rows,
                    health_pruned = r.health_pruned,
                    request_pruned = r.request_pruned,
                    "folded hours into the rollups"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rollup failed"),
        }
    }
}

service_kit::service!(
    Config,
    "system-monitor",
    Error,
    common = common,
    routes = routes(mcp_kit::placeholder()).table().to_vec()
);
