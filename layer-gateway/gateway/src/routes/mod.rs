//! HTTP routes, thin: authenticate, read the body, call the domain code, answer.

pub mod admin;
pub mod messages;
pub mod models;
pub mod openai;
pub mod responses;
pub mod search;

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::auth::{self, Caller};
use crate::error::Error;
use crate::state::AppState;

/// Authenticates against the current table.
pub fn caller(state: &Arc<AppState>, headers: &HeaderMap) -> Result<Caller, Error> {
    auth::authenticate(headers, state.master_hash.as_deref(), &state.table.load())
}
