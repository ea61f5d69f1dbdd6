//! `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/audio/speech`,
//! `/v1/images/generations`, `/v1/rerank` (and without `/v1`): JSON bodies routed by
//! `model`; and the audio uploads, `/v1/audio/transcriptions` and `/translations`, whose
//! forms are streamed through ([`crate::upload`]).

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

pub async fn speech(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, Route::Speech, req).await
}

pub async fn images(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, Route::Images, req).await
}

pub async fn rerank(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, Route::Rerank, req).await
}

pub async fn transcriptions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    upload(state, Route::Transcriptions, req).await
}

pub async fn translations(State(state): State<Arc<AppState>>, req: Request) -> Response {
    upload(state, Route::Translations, req).await
}

/// An audio form: read up to its `model`, then streamed to the target.
async fn upload(state: Arc<AppState>, route: Route, mut req: Request) -> Response {
    let request_id = service_kit::request_id::take(&mut req);
    let caller = match super::caller(&state, req.headers()) {
        Ok(c) => c,
        Err(e) => return proxy::reject(&state, route, request_id, None, req.headers(), e),
    };
    let headers = req.headers().clone();
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (max, memory) = (state.config.max_upload, state.config.upload_memory);
    match crate::upload::read_head(req.into_body(), &content_type, max, memory).await {
        Ok(form) => {
            let payload = proxy::Payload::Upload(Box::new(form));
            proxy::forward(state, route, caller, request_id, &headers, payload).await
        }
        Err(e) => proxy::reject(&state, route, request_id, Some(caller), &headers, e),
    }
}

async fn handle(state: Arc<AppState>, route: Route, mut req: Request) -> Response {
    let request_id = service_kit::request_id::take(&mut req);
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
    let payload = proxy::Payload::Json(body);
    proxy::forward(state, route, caller, request_id, &headers, payload).await
}
