//! The monitor's one error type, turned into OpenAI-style error JSON at the edge.

use axum::response::{IntoResponse, Response};
use contract::ApiError;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no service `{0}`")]
    UnknownService(String),
    #[error("no handle `{0}`")]
    UnknownHandle(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    BadConfig(String),
    #[error("{0}")]
    Db(#[from] docsdb::Error),
    #[error("{0}")]
    Service(#[from] service_kit::Error),
}

impl Error {
    /// The wire form.
    pub fn to_api(&self) -> ApiError {
        match self {
            Error::UnknownService(name) => ApiError::not_found(format!("no service `{name}`")),
            Error::UnknownHandle(name) => ApiError::not_found(format!("no handle `{name}`")),
            Error::BadRequest(m) | Error::BadConfig(m) => ApiError::bad_request(m.clone()),
            Error::Db(e) => ApiError::service_unavailable(format!("system-docs DB: {e}")),
            Error::Service(e) => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Db(e) = &self {
            tracing::warn!(error = %e, "DB read failed");
        }
        self.to_api().into_response()
    }
}
