//! The crate's one error type, answered in OpenAI's error shape by `serve`.

use axum::response::{IntoResponse, Response};
use contract::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An agent file that cannot be used: the file, the field, why.
    #[error("{file}: {}{reason}", if .field.is_empty() { String::new() } else { format!("{}: ", .field) })]
    Agent {
        file: String,
        field: String,
        reason: String,
    },
    /// An MCP server that cannot be started or reached, or broke the protocol.
    #[error("MCP server {server}: {reason}")]
    Server { server: String, reason: String },
    /// The model's endpoint could not be reached, refused, or answered nonsense.
    #[error("{0}")]
    Backend(String),
    /// The model's endpoint answered with an error status.
    #[error("the model's endpoint answered {status}: {message}")]
    BackendRefused { status: u16, message: String },

    // Request errors of `serve`.
    #[error("{0}")]
    BadRequest(String),
    #[error("The model `{0}` does not exist: GET /v1/models lists the agents.")]
    UnknownAgent(String),
    #[error("You didn't provide an API key. Send `Authorization: Bearer <key>`.")]
    MissingKey,
    #[error("Incorrect API key provided.")]
    InvalidKey,

    // Start-up errors.
    #[error(
        "refusing to listen on {0} without an API key; set TINY_AGENTS_API_KEY or pass --allow-unauthenticated"
    )]
    UnsafeBind(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Service(#[from] service_kit::Error),
}

impl Error {
    pub fn to_api(&self) -> ApiError {
        match self {
            Error::BadRequest(m) => ApiError::bad_request(m.clone()),
            Error::UnknownAgent(_) => ApiError::new(
                404,
                "invalid_request_error",
                Some("model_not_found"),
                self.to_string(),
            )
            .with_param("model"),
            Error::MissingKey | Error::InvalidKey => ApiError::invalid_api_key(self.to_string()),
            Error::BackendRefused { status, .. } if *status < 500 && *status != 408 => {
                ApiError::new(*status, "invalid_request_error", None, self.to_string())
            }
            Error::Backend(_) | Error::BackendRefused { .. } | Error::Server { .. } => {
                ApiError::bad_gateway(self.to_string())
            }
            Error::Agent { .. }
            | Error::UnsafeBind(_)
            | Error::Usage(_)
            | Error::Io(_)
            | Error::Service(_) => ApiError::internal(self.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let api = self.to_api();
        if api.status >= 500 {
            tracing::warn!(error = %self, "request failed");
        }
        api.into_response()
    }
}
