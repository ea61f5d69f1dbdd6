//! `POST /v1/search` and `POST /v1/search/{tool}`: web search in LiteLLM's (Perplexity's)
//! shape, answered from a SearXNG instance registered as an endpoint of api `searxng`.
//!
//! SearXNG returns about 20 results a page whatever is asked, so results are trimmed to
//! `max_results`, and further pages are fetched when more are wanted. Domain filters become
//! `site:` terms (and are enforced on the results too, since not every engine honours them).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use contract::search::{SearchRequest, SearchResponse, SearchResult};
use docsdb::request_log::RequestLogRow;
use serde::Deserialize;

use crate::error::Error;
use crate::state::AppState;
use crate::table::SearchTool;

/// The most results one request may ask for.
pub const MAX_RESULTS: u32 = 100;
/// Results when the request does not say.
pub const DEFAULT_RESULTS: u32 = 10;
/// SearXNG pages fetched per query at most.
const MAX_PAGES: u32 = 6;

pub async fn default_tool(State(state): State<Arc<AppState>>, req: Request) -> Response {
    run(state, None, req).await
}

pub async fn named_tool(
    State(state): State<Arc<AppState>>,
    Path(tool): Path<String>,
    req: Request,
) -> Response {
    run(state, Some(tool), req).await
}

async fn run(state: Arc<AppState>, tool: Option<String>, req: Request) -> Response {
    let started = Instant::now();
    let started_ms = docsdb::now_ms();
    let request_id = super::request_id(&req);
    let result = search(&state, tool.as_deref(), req).await;
    let (status, error, tool_name, key) = match &result {
        Ok((_, t, k)) => (200, None, Some(t.clone()), k.clone()),
        Err((e, k)) => (
            e.to_api().status,
            Some(e.kind().to_owned()),
            tool.clone(),
            k.clone(),
        ),
    };
    state.log(RequestLogRow {
        request_id,
        started_at_ms: started_ms,
        key_name: key,
        route: "search".into(),
        handle: tool_name.clone(),
        target: tool_name,
        upstream_model: None,
        status,
        error_type: error,
        attempts: 1,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        ttft_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        streamed: false,
        generation_ms: None,
    });
    match result {
        Ok((r, _, _)) => axum::Json(r).into_response(),
        Err((e, _)) => e.into_response(),
    }
}

type Failure = (Error, Option<String>);

async fn search(
    state: &Arc<AppState>,
    tool: Option<&str>,
    req: Request,
) -> Result<(SearchResponse, String, Option<String>), Failure> {
    let caller = super::caller(state, req.headers()).map_err(|e| (e, None))?;
    let key = caller.log_name();
    let fail = |e: Error| (e, key.clone());
    crate::proxy::admit_key(state, &caller).map_err(fail)?;
    if !service_kit::body::is_json(req.headers()) {
        return Err(fail(Error::BadRequest(
            "the request body must be JSON".into(),
        )));
    }
    let body = service_kit::body::read_bytes(req)
        .await
        .map_err(|api| fail(Error::BadRequest(api.error.message)))?;
    let sr: SearchRequest = service_kit::body::parse_json(&body)
        .map_err(|api| fail(Error::BadRequest(api.error.message)))?;
    let table = state.table.load();
    let t = match tool {
        Some(name) => table.search.iter().find(|t| t.name == name),
        None => table.search.first(),
    }
    .cloned()
    .ok_or_else(|| {
        fail(Error::UnknownSearchTool(
            tool.unwrap_or("(default)").to_owned(),
        ))
    })?;
    let max = sr.max_results.unwrap_or(DEFAULT_RESULTS);
    if max == 0 || max > MAX_RESULTS {
        return Err(fail(Error::BadRequest(format!(
            "max_results must be between 1 and {MAX_RESULTS}"
        ))));
    }
    let queries = sr.query.as_slice();
    if queries.is_empty() || queries.iter().any(|q| q.trim().is_empty()) {
        return Err(fail(Error::BadRequest("query must not be empty".into())));
    }
    let mut results = Vec::new();
    for q in queries {
        let found = searxng(state, &t, q, &sr, max as usize)
            .await
            .map_err(|e| {
                tracing::warn!(tool = %t.name, error = %e, "search failed");
                fail(Error::Search(e))
            })?;
        results.extend(found);
    }
    Ok((SearchResponse::new(results), t.name.clone(), key))
}

#[derive(Deserialize)]
struct SxPage {
    #[serde(default)]
    results: Vec<SxResult>,
}

#[derive(Deserialize)]
struct SxResult {
    #[serde(default)]
    url: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default, rename = "publishedDate")]
    published: Option<String>,
}

/// `site:` terms from a domain filter: includes joined with OR, excludes negated.
pub fn query_with_domains(q: &str, domains: &[String]) -> String {
    let (exclude, include): (Vec<&String>, Vec<&String>) =
        domains.iter().partition(|d| d.starts_with('-'));
    let mut out = q.trim().to_owned();
    match include.len() {
        0 => {}
        1 => out.push_str(&format!(" site:{}", include[0])),
        _ => {
            let terms: Vec<String> = include.iter().map(|d| format!("site:{d}")).collect();
            out.push_str(&format!(" ({})", terms.join(" OR ")));
        }
    }
    for d in exclude {
        out.push_str(&format!(" -site:{}", d.trim_start_matches('-')));
    }
    out
}

fn domain_ok(url: &str, domains: &[String]) -> bool {
    let Some(host) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    else {
        return false;
    };
    let matches = |d: &str| {
        let d = d.to_ascii_lowercase();
        host == d || host.ends_with(&format!(".{d}"))
    };
    let includes: Vec<&String> = domains.iter().filter(|d| !d.starts_with('-')).collect();
    (includes.is_empty() || includes.iter().any(|d| matches(d)))
        && !domains
            .iter()
            .filter_map(|d| d.strip_prefix('-'))
            .any(matches)
}

async fn searxng(
    state: &AppState,
    tool: &SearchTool,
    q: &str,
    sr: &SearchRequest,
    max: usize,
) -> Result<Vec<SearchResult>, String> {
    let domains = sr.search_domain_filter.clone().unwrap_or_default();
    let query = query_with_domains(q, &domains);
    let client = state.client(state.config.connect_timeout);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + state.config.search_timeout;
    for page in 1..=MAX_PAGES {
        let mut params: Vec<(&str, String)> = vec![
            ("q", query.clone()),
            ("format", "json".into()),
            ("pageno", page.to_string()),
        ];
        if let Some(l) = &sr.language {
            params.push(("language", l.clone()));
        }
        if let Some(t) = &sr.time_range {
            params.push(("time_range", t.clone()));
        }
        let mut req = client
            .get(format!("{}/search", tool.base_url))
            .query(&params);
        if let Some(a) = &tool.auth {
            req = req.header(axum::http::header::AUTHORIZATION, a.clone());
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let res = tokio::time::timeout(left, req.send())
            .await
            .map_err(|_| "SearXNG did not answer in time".to_owned())?
            .map_err(|e| format!("SearXNG request failed: {e}"))?;
        if !res.status().is_success() {
            return Err(format!(
                "SearXNG answered {} (is the JSON format enabled in its settings.yml?)",
                res.status()
            ));
        }
        let page_data: SxPage = tokio::time::timeout(left, res.json())
            .await
            .map_err(|_| "SearXNG did not answer in time".to_owned())?
            .map_err(|e| format!("SearXNG sent something that is not its JSON format: {e}"))?;
        let got = page_data.results.len();
        for r in page_data.results {
            if r.url.is_empty() || !domain_ok(&r.url, &domains) || !seen.insert(r.url.clone()) {
                continue;
            }
            out.push(SearchResult {
                title: r.title,
                url: r.url,
                snippet: r.content.unwrap_or_default(),
                date: r.published.filter(|d| !d.is_empty()),
                last_updated: None,
                extra: Default::default(),
            });
            if out.len() >= max {
                return Ok(out);
            }
        }
        if got == 0 {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_terms() {
        assert_eq!(query_with_domains("rust", &[]), "rust");
        assert_eq!(
            query_with_domains("rust", &["docs.rs".into()]),
            "rust site:docs.rs"
        );
        assert_eq!(
            query_with_domains("rust", &["a.org".into(), "b.org".into(), "-c.org".into()]),
            "rust (site:a.org OR site:b.org) -site:c.org"
        );
    }

    #[test]
    fn domain_filtering() {
        let d = vec!["example.org".to_owned(), "-bad.example.org".to_owned()];
        assert!(domain_ok("https://example.org/x", &d));
        assert!(domain_ok("https://www.example.org/x", &d));
        assert!(!domain_ok("https://bad.example.org/x", &d));
        assert!(!domain_ok("https://notexample.org/x", &d));
        assert!(domain_ok("https://anything.net/", &[]));
    }
}
