//! The routing table: handles, targets, keys and search tools, loaded from the system-docs
//! DB into an immutable [`Snapshot`] that requests read without locks and that reloads swap
//! whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use docsdb::keys::KeyInfo;
use docsdb::spec::{Api, Offer, OverTools, Strategy};
use docsdb::{Db, read};
use serde_json::{Map, Value};

/// Time limits of one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

/// One place a handle's requests can go.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `endpoint/upstream-model`: identifies the target's live state across reloads.
    pub key: Arc<str>,
    pub endpoint: String,
    /// `endpoint` as the `x-homelab-target` answer header, built once at load.
    pub endpoint_header: Option<HeaderValue>,
    pub base_url: String,
    /// `base_url` joined to each upstream path the gateway calls, parsed once at load (a
    /// URL parsed per request was a measurable share of the gateway's CPU).
    pub urls: Vec<(&'static str, reqwest::Url)>,
    /// A plain-HTTP upstream's origin, for the lean client; none: the general client.
    pub origin: Option<Arc<crate::h1::Origin>>,
    pub api: Api,
    /// The APIs its endpoint serves (the endpoint's `offers`, else its flavour's).
    pub offers: Vec<Offer>,
    /// The key from `auth_env`, read when the table was loaded: `Bearer <key>` for the
    /// `Authorization` header, the bare key for an Anthropic endpoint's `x-api-key`.
    pub auth: Option<HeaderValue>,
    pub upstream_model: String,
    pub priority: i64,
    pub weight: i64,
    pub timeouts: Timeouts,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub params: Option<Map<String, Value>>,
    /// The largest `tools` (bytes of JSON) this target is sent, and what happens above it.
    pub max_tools_bytes: Option<usize>,
    pub over_tools: OverTools,
    /// Its context window in tokens: the target's `context_length`, else the models
    /// registry's for its upstream model (the largest, if hosts disagree); none: unknown.
    pub context_length: Option<u64>,
}

impl Target {
    /// The upstream URL for `path` (one of [`crate::proxy::UPSTREAM_PATHS`]).
    pub fn url(&self, path: &str) -> Option<reqwest::Url> {
        self.urls
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, u)| u.clone())
    }
}

/// `base_url` joined to every upstream path, parsed.
fn upstream_urls(base_url: &str) -> Result<Vec<(&'static str, reqwest::Url)>, String> {
    crate::proxy::UPSTREAM_PATHS
        .iter()
        .map(|p| {
            reqwest::Url::parse(&format!("{base_url}{p}"))
                .map(|u| (*p, u))
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// A routing handle.
#[derive(Debug, Clone, PartialEq)]
pub struct Handle {
    pub name: Arc<str>,
    pub description: Option<String>,
    pub strategy: Strategy,
    /// Seconds since the epoch, for `/v1/models`.
    pub created: i64,
    pub targets: Vec<Arc<Target>>,
    /// Where a prompt that fits none of the targets goes (another handle's name).
    pub context_fallback: Option<String>,
    /// How long deterministic answers are kept in the response cache; none: not cached.
    pub cache_ttl: Option<Duration>,
}

/// A SearXNG instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchTool {
    pub name: String,
    pub base_url: String,
    pub auth: Option<HeaderValue>,
}

/// An MCP tool server (an endpoint of api `mcp`), for the gateway's `/mcp`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolServer {
    /// The endpoint's name.
    pub name: String,
    /// Its tools' prefix (`web_fetch` for `web-fetch`).
    pub prefix: String,
    /// Its MCP endpoint (`http://127.0.0.1:3101/mcp`).
    pub url: String,
    /// Its bearer token, from the endpoint's `auth_env`.
    pub key: Option<String>,
}

/// Everything routing needs, as of one load.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub handles: HashMap<String, Arc<Handle>>,
    /// Live keys by the SHA-256 of their secret.
    pub keys: HashMap<String, Arc<KeyInfo>>,
    /// Search tools; the first is the default of `POST /v1/search`.
    pub search: Vec<SearchTool>,
    /// MCP tool servers, by name.
    pub tool_servers: Vec<ToolServer>,
    /// What the DB looked like (see [`fingerprint`]).
    pub fingerprint: Vec<i64>,
}

impl Snapshot {
    /// Handles sorted by name.
    pub fn handle_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.handles.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// A cheap summary of the registry tables: when it changes, the table is reloaded.
pub async fn fingerprint(db: &Db) -> docsdb::Result<Vec<i64>> {
    read::routing_fingerprint(db).await
}

/// The key in `auth_env`, as a `Bearer` value or bare.
fn credential(auth_env: Option<&str>, what: &str, as_bearer: bool) -> Option<HeaderValue> {
    let name = auth_env?;
    match std::env::var(name) {
        Ok(v) if !v.is_empty() && !as_bearer => HeaderValue::from_str(&v).ok(),
        Ok(v) if !v.is_empty() => HeaderValue::from_str(&format!("Bearer {v}")).ok(),
        _ => {
            tracing::warn!(%what, env = %name, "auth_env is not set; calling without a key");
            None
        }
    }
}

/// Loads the whole table.
pub async fn load(db: &Db, defaults: Timeouts) -> docsdb::Result<Snapshot> {
    let fingerprint = fingerprint(db).await?;
    let mut conn = db.pool().acquire().await.map_err(docsdb::Error::from)?;
    let endpoints: HashMap<String, _> = read::endpoints(&mut conn)
        .await?
        .into_iter()
        .map(|(_, e)| (e.name.clone(), e))
        .collect();
    let created = read::handle_created_at(&mut conn).await?;
    // One lookup (and one warning) per endpoint, not per target: bare for an Anthropic
    // endpoint's `x-api-key` and an MCP server (its client adds `Bearer`), `Bearer <key>`
    // for the rest.
    let auth: HashMap<&str, Option<HeaderValue>> = endpoints
        .values()
        .map(|e| {
            let as_bearer = !matches!(e.api, Api::Anthropic | Api::Mcp);
            (
                e.name.as_str(),
                credential(e.auth_env.as_deref(), &e.name, as_bearer),
            )
        })
        .collect();
    // Context windows by model name, from the models registry.
    let mut contexts: HashMap<String, u64> = HashMap::new();
    for (_, m) in read::models(&mut conn).await? {
        if let Some(c) = m.context_length.filter(|&c| c > 0) {
            let c = c as u64;
            contexts
                .entry(m.model_id)
                .and_modify(|v| *v = (*v).max(c))
                .or_insert(c);
        }
    }
    let mut handles = HashMap::new();
    // Plain-HTTP upstreams go by the lean client unless a proxy is configured for them.
    let lean = crate::h1::usable(|v| std::env::var(v).ok());
    for (_, h) in read::handles(&mut conn, false).await? {
        let mut targets = Vec::with_capacity(h.targets.len());
        for t in &h.targets {
            let Some(e) = t.endpoint.as_ref().and_then(|n| endpoints.get(n)) else {
                continue;
            };
            if matches!(e.api, Api::Searxng | Api::HomeAssistant | Api::Mcp) {
                tracing::warn!(handle = %h.handle, endpoint = %e.name, api = %e.api, "not a model endpoint; target skipped");
                continue;
            }
            let ms = |v: Option<i64>, d: Duration| {
                v.map_or(d, |v| Duration::from_millis(v.max(1) as u64))
            };
            let base_url = e.base_url.trim_end_matches('/').to_owned();
            let urls = match upstream_urls(&base_url) {
                Ok(u) => u,
                Err(err) => {
                    tracing::warn!(handle = %h.handle, endpoint = %e.name, %base_url, %err, "base_url is not a URL; target skipped");
                    continue;
                }
            };
            targets.push(Arc::new(Target {
                key: Arc::from(format!("{}/{}", e.name, t.model)),
                endpoint: e.name.clone(),
                endpoint_header: HeaderValue::from_str(&e.name).ok(),
                base_url,
                origin: lean
                    .then(|| crate::h1::Origin::of(&urls).map(Arc::new))
                    .flatten(),
                urls,
                api: e.api,
                offers: e.serves(),
                auth: auth.get(e.name.as_str()).cloned().flatten(),
                upstream_model: t.model.clone(),
                priority: t.priority,
                weight: t.weight,
                timeouts: Timeouts {
                    connect: ms(t.connect_timeout_ms, defaults.connect),
                    first_byte: ms(t.first_byte_timeout_ms, defaults.first_byte),
                    idle: ms(t.idle_timeout_ms, defaults.idle),
                    total: ms(t.timeout_ms, defaults.total),
                },
                rpm: t.rpm,
                tpm: t.tpm,
                params: t.params.clone(),
                max_tools_bytes: t.max_tools_bytes.map(|b| b.max(0) as usize),
                over_tools: t.over_tools,
                context_length: t
                    .context_length
                    .map(|c| c.max(1) as u64)
                    .or_else(|| contexts.get(&t.model).copied()),
            }));
        }
        let handle = Handle {
            created: created.get(&h.handle).copied().unwrap_or(0) / 1000,
            name: Arc::from(h.handle.as_str()),
            description: h.description,
            strategy: h.strategy,
            targets,
            context_fallback: h.context_fallback,
            cache_ttl: h
                .cache_ttl_ms
                .map(|ms| Duration::from_millis(ms.max(1) as u64)),
        };
        handles.insert(h.handle, Arc::new(handle));
    }
    drop(conn);
    let keys = docsdb::keys::live(db)
        .await?
        .into_iter()
        .map(|(hash, info)| (hash, Arc::new(info)))
        .collect();
    let mut search: Vec<SearchTool> = endpoints
        .values()
        .filter(|e| e.api == Api::Searxng)
        .map(|e| SearchTool {
            name: e.name.clone(),
            base_url: e.base_url.trim_end_matches('/').to_owned(),
            auth: auth.get(e.name.as_str()).cloned().flatten(),
        })
        .collect();
    // The default tool: one named `searxng`, else the first by name.
    search.sort_by_key(|t| (t.name != "searxng", t.name.clone()));
    let mut tool_servers: Vec<ToolServer> = endpoints
        .values()
        .filter(|e| e.api == Api::Mcp)
        .map(|e| ToolServer {
            name: e.name.clone(),
            prefix: crate::mcp::prefix_of(&e.name),
            url: e.base_url.trim_end_matches('/').to_owned(),
            key: auth
                .get(e.name.as_str())
                .and_then(|v| v.as_ref()?.to_str().ok().map(str::to_owned)),
        })
        .collect();
    tool_servers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot {
        handles,
        keys,
        search,
        tool_servers,
        fingerprint,
    })
}
