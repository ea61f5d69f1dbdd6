//! The one error type of this crate, turned into OpenAI error JSON at the edge.

use axum::response::{IntoResponse, Response};
use contract::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    /// A rejection the shared body guard already shaped (413, 415, 400).
    #[error("{}", .0.error.message)]
    Api(ApiError),
    #[error("no model `{0}` is registered on this host")]
    UnknownModel(String),
    #[error("model {model} needs {need} bytes, more than the memory budget of {budget} bytes")]
    TooBig {
        model: String,
        need: u64,
        budget: u64,
    },
    #[error(
        "the memory budget is full: {model} needs {need} bytes, {free} are free, and every running model is busy"
    )]
    BudgetBusy { model: String, need: u64, free: u64 },
    #[error("could not start the engine for {model}: {message}")]
    Spawn { model: String, message: String },
    #[error("the engine for {model} did not become ready within {after:?}{detail}")]
    NotReady {
        model: String,
        after: std::time::Duration,
        detail: String,
    },
    #[error("the engine for {model} failed: {message}")]
    Upstream { model: String, message: String },
    #[error("bad --command template `{0}`: {1}")]
    Template(String, String),
    #[error(transparent)]
    Db(#[from] docsdb::Error),
    #[error(transparent)]
    Service(#[from] service_kit::Error),
}

impl Error {
    pub fn to_api(&self) -> ApiError {
        match self {
            Error::BadRequest(m) => ApiError::bad_request(m.clone()),
            Error::Api(a) => a.clone(),
            Error::UnknownModel(m) => ApiError::model_not_found(m),
            Error::TooBig { .. } => ApiError::bad_request(self.to_string()),
            Error::BudgetBusy { .. } | Error::Spawn { .. } | Error::NotReady { .. } => {
                ApiError::service_unavailable(self.to_string())
            }
            Error::Upstream { .. } => ApiError::bad_gateway(self.to_string()),
            Error::Template(..) | Error::Db(_) | Error::Service(_) => {
                ApiError::internal(self.to_string())
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.to_api().into_response()
    }
}
