//! `GET /v1/models` and `GET /v1/models/{id}`: the handles the caller's key may use.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use contract::models::{Model, ModelList};

use crate::state::AppState;
use crate::table::Handle;

fn entry(h: &Handle) -> Model {
    let mut m = Model::new(h.name.to_string(), h.created, "homelab");
    if let Some(d) = &h.description {
        m.extra.insert("description".into(), d.clone().into());
    }
    m
}

pub async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let caller = match super::caller(&state, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let table = state.table.load();
    let data = table
        .handle_names()
        .into_iter()
        .filter(|n| caller.allows(n))
        .filter_map(|n| table.handles.get(n))
        .map(|h| entry(h))
        .collect();
    axum::Json(ModelList::new(data)).into_response()
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match super::caller(&state, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let table = state.table.load();
    match table.handles.get(&id) {
        Some(h) if caller.allows(&id) => axum::Json(entry(h)).into_response(),
        _ => crate::Error::UnknownHandle(id).into_response(),
    }
}
