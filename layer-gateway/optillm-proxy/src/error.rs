//! The proxy's one error type, answered in OpenAI's error shape (not OptiLLM's bare
//! `{"error": "…"}` with a 500 for everything).

use axum::response::{IntoResponse, Response};
use contract::ApiError;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Request errors.
    #[error("{0}")]
    BadRequest(String),
    /// Approaches this proxy does not run, and why.
    #[error("{0}")]
    NotRun(String),
    #[error("You didn't provide an API key. Send `Authorization: Bearer <key>`.")]
    MissingKey,
    #[error("Incorrect API key provided.")]
    InvalidKey,
    #[error(
        "this request came from this proxy (through the gateway, back here): refused instead of looping"
    )]
    Loop,
    /// The backend answered with an error of its own.
    #[error("the backend refused: {status}")]
    BackendRefused { status: u16, body: Value },
    /// The request's budget ran out before any answer came back.
    #[error("the request's budget ran out ({}) before any answer came back", .0.as_str())]
    Budget(crate::backend::Spent),
    /// A tool (web-fetch, for `readurls`) could not be used.
    #[error("{0}")]
    Tool(String),
    /// The backend could not be reached or answered nonsense.
    #[error("{0}")]
    Backend(String),

    // Start-up errors.
    #[error(
        "refusing to listen on {0} without an API key; set OPTILLM_API_KEY or pass --allow-unauthenticated"
    )]
    UnsafeBind(String),
    #[error("{0}")]
    Service(#[from] service_kit::Error),
}

impl Error {
    pub fn to_api(&self) -> ApiError {
        match self {
            Error::BadRequest(m) => ApiError::bad_request(m.clone()),
            Error::NotRun(m) => {
                ApiError::invalid_value("unsupported_value", m.clone()).with_param("model")
            }
            Error::MissingKey | Error::InvalidKey => ApiError::invalid_api_key(self.to_string()),
            Error::Loop => ApiError::new(
                508,
                "invalid_request_error",
                Some("loop_detected"),
                self.to_string(),
            ),
            Error::BackendRefused { status, body } => {
                // The backend's own error, passed on with its status.
                serde_json::from_value::<ApiError>(body.clone())
                    .map(|mut e| {
                        e.status = *status;
                        e
                    })
                    .unwrap_or_else(|_| {
                        ApiError::bad_gateway(format!("the backend answered {status}"))
                    })
            }
            Error::Backend(m) | Error::Tool(m) => ApiError::bad_gateway(m.clone()),
            Error::Budget(_) => ApiError::new(
                504,
                "server_error",
                Some("budget_exhausted"),
                self.to_string(),
            ),
            Error::UnsafeBind(_) | Error::Service(_) => ApiError::internal(self.to_string()),
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
