//! The gateway's shared state: the routing table (swapped whole on reload), live target
//! state, limits, the request-log writer, metrics and the HTTP clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use docsdb::Db;
use docsdb::request_log::{RequestLogRow, RequestLogWriter, WriterConfig};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::limits::Limiter;
use crate::metrics::{Metrics, ScrapeExtras};
use crate::routing::TargetState;
use crate::routing::breaker::BreakerConfig;
use crate::table::{self, Snapshot, Timeouts};

/// Shared by every request.
pub struct AppState {
    pub config: Config,
    pub db: Db,
    pub table: ArcSwap<Snapshot>,
    targets: Mutex<HashMap<String, Arc<TargetState>>>,
    pub limiter: Limiter,
    /// Tokens used per key id, for budgets.
    spent: Mutex<HashMap<i64, u64>>,
    pub log: RequestLogWriter,
    /// Ids of stored responses still being written (see [`AppState::stored`]).
    pub storing: Mutex<std::collections::HashSet<String>>,
    /// Rows of the tool calls made through `/mcp`.
    pub tool_log: docsdb::tool_calls::ToolCallWriter,
    /// Cancelled on shutdown: open `/mcp` event streams end so the drain can finish.
    pub mcp_cancel: tokio_util::sync::CancellationToken,
    pub metrics: Metrics,
    /// Answers of handles with a cache TTL.
    pub cache: crate::cache::ResponseCache,
    /// Which target served each recent conversation.
    pub affinity: crate::routing::affinity::Affinity,
    clients: Mutex<HashMap<u128, reqwest::Client>>,
    /// Where traces go, when `--otlp-endpoint` is set.
    #[cfg(feature = "otlp")]
    pub otlp: Option<crate::otlp::Exporter>,
    /// Keep-alive connections to plain-HTTP upstreams (the lean client's).
    pub h1: Arc<crate::h1::Pool>,
    /// SHA-256 of the master key, if one is configured.
    pub master_hash: Option<String>,
    pub concurrency: Arc<Semaphore>,
    loaded: AtomicBool,
    /// The background tasks (the table reloader); ended on shutdown.
    pub tasks: service_kit::tasks::Tasks,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("bind", &self.config.bind)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens the DB (migrating it), loads the table and starts the request-log writer.
    pub async fn new(config: Config) -> Result<Arc<Self>, crate::Error> {
        let db = Db::open(&config.db).await?;
        let log = RequestLogWriter::spawn(
            db.clone(),
            WriterConfig {
                capacity: config.log_queue,
                batch_size: config.log_batch,
                ..WriterConfig::default()
            },
        );
        let tool_log =
            docsdb::tool_calls::ToolCallWriter::spawn(db.clone(), WriterConfig::default());
        let cache_max = usize::try_from(config.cache_max_bytes).unwrap_or(usize::MAX);
        let affinity = crate::routing::affinity::Affinity::new(
            config.prefix_affinity_conversations,
            config.prefix_affinity_ttl,
        );
        let h1 = Arc::new(crate::h1::Pool::new(
            config.upstream_idle_connections,
            config.upstream_idle_timeout,
        ));
        #[cfg(feature = "otlp")]
        let otlp = config.otlp_endpoint.as_ref().map(|endpoint| {
            tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
            crate::otlp::Exporter::spawn(
                &crate::otlp::Settings {
                    endpoint: endpoint.clone(),
                    queue: config.otlp_queue,
                    batch: config.otlp_batch,
                },
                env!("CARGO_PKG_VERSION"),
            )
        });
        let state = Arc::new(AppState {
            #[cfg(feature = "otlp")]
            otlp,
            master_hash: config.master_key.as_deref().map(docsdb::keys::hash_key),
            concurrency: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
            config,
            db,
            table: ArcSwap::from_pointee(Snapshot::default()),
            targets: Mutex::new(HashMap::new()),
            limiter: Limiter::default(),
            h1,
            spent: Mutex::new(HashMap::new()),
            log,
            storing: Mutex::new(std::collections::HashSet::new()),
            tool_log,
            mcp_cancel: tokio_util::sync::CancellationToken::new(),
            metrics: Metrics::default(),
            cache: crate::cache::ResponseCache::new(cache_max),
            affinity,
            clients: Mutex::new(HashMap::new()),
            loaded: AtomicBool::new(false),
            tasks: service_kit::tasks::Tasks::new(),
        });
        state.reload(true).await?;
        Ok(state)
    }

    fn default_timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.config.connect_timeout,
            first_byte: self.config.first_byte_timeout,
            idle: self.config.idle_timeout,
            total: self.config.total_timeout,
        }
    }

    /// Re-reads the table if the registry changed (always with `force`). Returns whether a
    /// new table was installed.
    pub async fn reload(&self, force: bool) -> Result<bool, crate::Error> {
        if !force && table::fingerprint(&self.db).await? == self.table.load().fingerprint {
            return Ok(false);
        }
        let snap = table::load(&self.db, self.default_timeouts()).await?;
        self.load_budgets(&snap).await?;
        tracing::info!(
            handles = snap.handles.len(),
            keys = snap.keys.len(),
            "routing table loaded"
        );
        self.table.store(Arc::new(snap));
        self.loaded.store(true, Ordering::Release);
        Ok(true)
    }

    /// Whether a table has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Reads how many tokens keys with a budget have used (once per key).
    async fn load_budgets(&self, snap: &Snapshot) -> Result<(), crate::Error> {
        for key in snap.keys.values().filter(|k| k.token_budget.is_some()) {
            let known = self
                .spent
                .lock()
                .map(|m| m.contains_key(&key.id))
                .unwrap_or(true);
            if known {
                continue;
            }
            let used =
                docsdb::request_log::tokens_used_by_key(&self.db, &key.name, key.created_at_ms)
                    .await?;
            if let Ok(mut m) = self.spent.lock() {
                m.entry(key.id).or_insert(used);
            }
        }
        Ok(())
    }

    /// Tokens a key has used.
    pub fn spent(&self, key_id: i64) -> u64 {
        self.spent
            .lock()
            .ok()
            .and_then(|m| m.get(&key_id).copied())
            .unwrap_or(0)
    }

    /// Adds tokens to a key's spend.
    pub fn add_spent(&self, key_id: i64, tokens: u64) {
        if let Ok(mut m) = self.spent.lock() {
            *m.entry(key_id).or_default() += tokens;
        }
    }

    /// Re-reads the table every `reload_interval` until shutdown (or the state is dropped).
    pub fn spawn_reloader(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.config.reload_interval.max(Duration::from_millis(50));
        self.tasks.spawn_loop("routing table reloader", async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                if let Err(e) = state.reload(false).await {
                    tracing::warn!(error = %e, "reloading the routing table failed; keeping the old one");
                }
            }
        });
    }

    /// Waits (2 s at most) while the response `id` is still being written, so that a
    /// client that reads, deletes or continues a response right after it was answered finds
    /// it: responses are stored off the request path.
    pub async fn stored(&self, id: &str) {
        for _ in 0..200 {
            let pending = self.storing.lock().map(|s| s.contains(id)).unwrap_or(false);
            if !pending {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The live state of a target.
    pub fn target_state(&self, key: &str) -> Arc<TargetState> {
        let cfg = BreakerConfig {
            failures: self.config.breaker_failures,
            cooldown: self.config.breaker_cooldown,
        };
        let Ok(mut m) = self.targets.lock() else {
            return Arc::new(TargetState::new(cfg));
        };
        // Looked up on every request: no key allocation unless the target is new.
        if let Some(s) = m.get(key) {
            return s.clone();
        }
        m.entry(key.to_owned())
            .or_insert_with(|| Arc::new(TargetState::new(cfg)))
            .clone()
    }

    /// An HTTP client with this connect timeout (clients are shared per timeout value).
    pub fn client(&self, connect: Duration) -> reqwest::Client {
        let build = || {
            reqwest::Client::builder()
                .connect_timeout(connect)
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(1024)
                // Bodies pass through as the upstream encoded them; never decode here.
                .no_gzip()
                .no_brotli()
                .no_deflate()
                .no_zstd()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default()
        };
        match self.clients.lock() {
            Ok(mut m) => m.entry(connect.as_millis()).or_insert_with(build).clone(),
            Err(_) => build(),
        }
    }

    /// Queues a request-log row (never waits).
    pub fn log(&self, row: RequestLogRow) {
        self.log.log(row);
    }

    /// The `/metrics` text.
    pub fn render_metrics(&self) -> String {
        let now = std::time::Instant::now();
        let mut targets: Vec<(String, i64, u64)> = self
            .targets
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, s)| (k.clone(), s.breaker_gauge(now), s.in_flight()))
                    .collect()
            })
            .unwrap_or_default();
        targets.sort();
        let stats = self.log.stats();
        self.metrics.render(&ScrapeExtras {
            log_written: stats.written.load(Ordering::Relaxed),
            log_dropped: stats.dropped.load(Ordering::Relaxed),
            log_failed: stats.failed.load(Ordering::Relaxed),
            targets,
            cache: self.cache.stats(),
            spans: self.span_stats(),
        })
    }

    /// Spans exported, dropped and failed, when traces are exported.
    fn span_stats(&self) -> Option<[u64; 3]> {
        #[cfg(feature = "otlp")]
        if let Some(e) = &self.otlp {
            let s = &e.stats;
            return Some([
                s.exported.load(Ordering::Relaxed),
                s.dropped.load(Ordering::Relaxed),
                s.failed.load(Ordering::Relaxed),
            ]);
        }
        None
    }
}
