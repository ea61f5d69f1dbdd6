//! `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` (and without `/v1`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;

use crate::error::Error;
use crate::proxy::{self, Route};
use crate::state::AppState;

pub async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, Route::Chat, req).await
}

pub async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, Route::Completions, req).await
}

pub async fn embeddings(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, Route::Embeddings, req).await
}

async fn handle(state: Arc<AppState>, route: Route, req: Request) -> Response {
    let request_id = service_kit::request_id::of(&req);
    let caller = match super::caller(&state, req.headers()) {
        Ok(c) => c,
        Err(e) => return proxy::reject(&state, route, request_id, None, req.headers(), e),
    };
    if !service_kit::body::is_json(req.headers()) {
        let e = Error::BadRequest(
            "the request body must be JSON, sent with `Content-Type: application/json`".into(),
        );
        return proxy::reject(&state, route, request_id, Some(caller), req.headers(), e);
    }
    let headers = req.headers().clone();
    let body = match service_kit::body::read_bytes(req).await {
        Ok(b) => b,
        Err(api) => {
            return proxy::reject_api(&state, route, request_id, Some(caller), &headers, api);
        }
    };
    proxy::forward(state, route, caller, request_id, &headers, body).await
}
