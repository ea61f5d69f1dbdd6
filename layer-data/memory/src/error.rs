//! The memory service's one error type, answered at the edge in the shape mem0's server
//! (FastAPI) uses: `{"detail": "…"}` with 400, 401, 404, 413, 422 or 502.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Request errors.
    #[error("{0}")]
    BadRequest(String),
    /// The body is not what the route takes (FastAPI answers 422).
    #[error("{0}")]
    Invalid(String),
    #[error("Memory not found: {0}")]
    NotFound(String),
    #[error("the body is larger than the limit of {0} bytes (--body-limit)")]
    TooLarge(u64),
    #[error("Missing API key: send Authorization: Bearer (or Token) KEY, or X-API-Key")]
    MissingKey,
    #[error("Invalid API key")]
    InvalidKey,
    /// The vector store or the gateway failed or answered something unusable.
    #[error("{what} failed: {message}")]
    Upstream { what: &'static str, message: String },

    // Start-up errors.
    #[error(
        "refusing to listen on {0} without an API key; set HOMELAB_MEMORY_API_KEY or pass --allow-unauthenticated"
    )]
    UnsafeBind(String),
    #[error("{0}")]
    Service(#[from] service_kit::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::MissingKey | Error::InvalidKey => StatusCode::UNAUTHORIZED,
            Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Error::UnsafeBind(_) | Error::Service(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn vector_db(message: impl Into<String>) -> Error {
        Error::Upstream {
            what: "the vector store",
            message: message.into(),
        }
    }

    pub(crate) fn gateway(message: impl Into<String>) -> Error {
        Error::Upstream {
            what: "the gateway",
            message: message.into(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (
            status,
            axum::Json(serde_json::json!({"detail": self.to_string()})),
        )
            .into_response()
    }
}
