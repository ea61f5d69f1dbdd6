//! HTTP routes, thin: authenticate, read the body, call the domain code, answer.

pub mod admin;
pub mod models;
pub mod openai;
pub mod search;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderMap;
use service_kit::request_id::RequestId;

use crate::auth::{self, Caller};
use crate::error::Error;
use crate::state::AppState;

/// The request id the request-id layer settled on.
pub fn request_id(req: &Request) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(service_kit::request_id::generate)
}

/// Authenticates against the current table.
pub fn caller(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Caller, Error> {
    auth::authenticate(headers, state.master_hash.as_deref(), &state.table.load())
}
