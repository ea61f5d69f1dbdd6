//! The vector store's one error type, answered in Qdrant's error shape at the edge:
//! `{"status":{"error":"…"},"time":…}` with Qdrant's status codes and texts, which clients
//! parse (Open WebUI re-indexes a user's memories on the dimension error).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use contract::qdrant::{ErrorResponse, ErrorStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Request errors.
    #[error("Not found: Collection `{0}` doesn't exist!")]
    NoCollection(String),
    #[error("Not found: No point with id {0} found")]
    NoPoint(String),
    #[error("Wrong input: Collection `{0}` already exists!")]
    CollectionExists(String),
    #[error(
        "Wrong input: Vector dimension error: expected dim: {expected}, got {got} (vectors from another embedding model do not fit this collection)"
    )]
    Dimension { expected: usize, got: usize },
    #[error("Wrong input: {0}")]
    BadInput(String),
    #[error("Format error in JSON body: {0}")]
    Json(String),
    #[error("Payload error: the body is larger than the limit of {0} bytes (--body-limit)")]
    TooLarge(u64),
    #[error("Must provide an API key or an Authorization bearer token")]
    MissingKey,
    #[error("Invalid API key or JWT")]
    InvalidKey,
    #[error("Service internal error: {0}")]
    Db(#[from] docsdb::Error),
    #[error("Service internal error: {0}")]
    Internal(String),

    // Start-up errors.
    #[error(
        "refusing to listen on {0} without an API key; set HOMELAB_VECTOR_DB_API_KEY or pass --allow-unauthenticated"
    )]
    UnsafeBind(String),
    #[error("{0}")]
    Service(#[from] service_kit::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoCollection(_) | Error::NoPoint(_) => StatusCode::NOT_FOUND,
            Error::CollectionExists(_) => StatusCode::CONFLICT,
            Error::Dimension { .. } | Error::BadInput(_) | Error::Json(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::MissingKey | Error::InvalidKey => StatusCode::UNAUTHORIZED,
            Error::Db(_) | Error::Internal(_) | Error::UnsafeBind(_) | Error::Service(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorResponse {
            status: ErrorStatus {
                error: self.to_string(),
            },
            time: 0.0,
        };
        (status, axum::Json(body)).into_response()
    }
}
