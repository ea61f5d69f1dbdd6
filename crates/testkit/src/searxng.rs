//! A SearXNG double: `GET /search?q=...&format=json&pageno=N` answers SearXNG's JSON shape
//! with 20 results a page (whatever was asked), as SearXNG does, and `format=html` (or no
//! format) with 403, as SearXNG does when JSON is not enabled. `site:DOMAIN` terms restrict
//! results to that domain, as the engines behind SearXNG do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// Results per page, as SearXNG returns.
pub const PAGE: usize = 20;

/// The query-string pairs of each request received.
type QueryLog = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A running SearXNG double.
#[derive(Clone)]
pub struct MockSearxng {
    pub addr: SocketAddr,
    queries: QueryLog,
    /// Total results available for any query.
    total: usize,
}

impl MockSearxng {
    /// Starts a double that has `total` results for every query.
    pub async fn start(total: usize) -> Self {
        let queries = Arc::new(Mutex::new(Vec::new()));
        let state = (queries.clone(), total);
        let app = Router::new()
            .route("/search", get(search))
            .with_state(state);
        let addr = crate::spawn(app).await;
        MockSearxng {
            addr,
            queries,
            total,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The query-string pairs of every request, in order.
    pub fn requests(&self) -> Vec<Vec<(String, String)>> {
        self.queries.lock().unwrap().clone()
    }

    /// How many results it has for any query.
    pub fn total(&self) -> usize {
        self.total
    }
}

type Shared = (QueryLog, usize);

async fn search(
    State((log, total)): State<Shared>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    log.lock().unwrap().push(q.clone());
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    if get("format").as_deref() != Some("json") {
        return (StatusCode::FORBIDDEN, "403 Forbidden").into_response();
    }
    let query = get("q").unwrap_or_default();
    let page: usize = get("pageno")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let site = query
        .split_whitespace()
        .find_map(|t| t.strip_prefix("site:"))
        .map(str::to_owned);
    let start = (page - 1) * PAGE;
    let results: Vec<Value> = (start..total.min(start + PAGE))
        .map(|i| {
            let host = site.clone().unwrap_or_else(|| format!("site{}.example.org", i % 5));
            json!({
                "url": format!("https://{host}/result/{i}"),
                "title": format!("Result {i} for {query}"),
                "content": format!("Snippet {i} about {query}."),
                "engine": "duckduckgo",
                "engines": ["duckduckgo", "brave"],
                "parsed_url": ["https", host, format!("/result/{i}"), "", "", ""],
                "score": 1.0 / (i as f64 + 1.0),
                "category": "general",
                "positions": [i + 1],
                "publishedDate": if i % 2 == 0 { json!("2025-06-01T00:00:00") } else { Value::Null },
                "template": "default.html",
            })
        })
        .collect();
    axum::Json(json!({
        "query": query,
        "number_of_results": total,
        "results": results,
        "answers": [], "corrections": [], "infoboxes": [], "suggestions": [], "unresponsive_engines": []
    }))
    .into_response()
}
