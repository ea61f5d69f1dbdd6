//! `POST /v1/search` and `POST /v1/search/{tool}`: web search in LiteLLM's (Perplexity's)
//! shape, answered from a SearXNG instance registered as an endpoint of api `searxng`.
//!
//! SearXNG returns about 20 results a page whatever is asked, so results are trimmed to
//! `max_results`, and further pages are fetched when more are wanted. Domain filters become
//! `site:` terms (and are enforced on the results too, since not every engine honours them).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use contract::search::{OpenWebUiResult, OpenWebUiSearch, SearchRequest, SearchResponse};

use crate::error::Error;
use crate::state::AppState;

/// The most results one request may ask for.
pub const MAX_RESULTS: u32 = 100;
/// Results when the request does not say.
pub const DEFAULT_RESULTS: u32 = 10;

/// The request and answer shape of a search route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// LiteLLM's (Perplexity's): `{query, max_results, …}` → `{"object":"search","results"}`.
    LiteLlm,
    /// Open WebUI's external engine: `{query, count}` → a bare array of
    /// `{link, title, snippet}`.
    OpenWebUi,
}

pub async fn default_tool(State(state): State<Arc<AppState>>, req: Request) -> Response {
    run(state, None, req, Shape::LiteLlm).await
}

pub async fn named_tool(
    State(state): State<Arc<AppState>>,
    Path(tool): Path<String>,
    req: Request,
) -> Response {
    run(state, Some(tool), req, Shape::LiteLlm).await
}

/// `POST /v1/search/openwebui`: the default search tool in the shape of Open WebUI's
/// "external" web search engine (`EXTERNAL_WEB_SEARCH_URL`), authenticated, limited and
/// logged like `/v1/search`. A `count` above [`MAX_RESULTS`] is held to it (Open WebUI would
/// read a refusal as "no results").
pub async fn open_webui(State(state): State<Arc<AppState>>, req: Request) -> Response {
    run(state, None, req, Shape::OpenWebUi).await
}

async fn run(state: Arc<AppState>, tool: Option<String>, req: Request, shape: Shape) -> Response {
    let started = Instant::now();
    let started_ms = docsdb::now_ms();
    let request_id = service_kit::request_id::of(&req);
    let user = crate::auth::end_user(req.headers());
    let result = search(&state, tool.as_deref(), req, shape).await;
    let (status, error, tool_name, key) = match &result {
        Ok((_, t, k)) => (200, None, Some(t.clone()), k.clone()),
        Err((e, k)) => (
            e.to_api().status,
            Some(e.kind().to_owned()),
            tool.clone(),
            k.clone(),
        ),
    };
    crate::proxy::log_search(
        &state,
        crate::proxy::SearchDone {
            request_id,
            started,
            started_ms,
            key,
            tool: tool_name,
            status,
            error,
            user,
        },
    );
    match (result, shape) {
        (Ok((r, _, _)), Shape::LiteLlm) => axum::Json(r).into_response(),
        (Ok((r, _, _)), Shape::OpenWebUi) => axum::Json(
            r.results
                .into_iter()
                .map(OpenWebUiResult::from)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        (Err((e, _)), _) => e.into_response(),
    }
}

type Failure = (Error, Option<String>);

async fn search(
    state: &Arc<AppState>,
    tool: Option<&str>,
    req: Request,
    shape: Shape,
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
    let sr: SearchRequest = match shape {
        Shape::LiteLlm => service_kit::body::parse_json(&body)
            .map_err(|api| fail(Error::BadRequest(api.error.message)))?,
        Shape::OpenWebUi => {
            let ow: OpenWebUiSearch = service_kit::body::parse_json(&body)
                .map_err(|api| fail(Error::BadRequest(api.error.message)))?;
            if ow.count == Some(0) {
                return Err(fail(Error::BadRequest("count must be at least 1".into())));
            }
            let mut sr = SearchRequest::new(ow.query);
            sr.max_results = ow.count.map(|c| c.min(MAX_RESULTS));
            sr
        }
    };
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
        let found = crate::searxng::search(
            &state.client(state.config.connect_timeout),
            &t,
            q,
            &sr,
            max as usize,
            state.config.search_timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(tool = %t.name, error = %e, "search failed");
            fail(Error::Search(e))
        })?;
        results.extend(found);
    }
    Ok((SearchResponse::new(results), t.name.clone(), key))
}
