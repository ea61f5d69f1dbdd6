//! The gateway's one error type, turned into OpenAI error JSON at the edge.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use contract::ApiError;

/// Why no target of a handle could answer, as the client is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    /// Down, refusing, or answering errors.
    Failing,
    /// Did not answer in time, and did not say it was busy.
    TimedOut,
    /// Still loading its model after the loading wait.
    Loading,
    /// Busy: its queue was full (`timed_out` false) or the request waited in it past the
    /// deadline. `queue` describes the queue when the backend reported it.
    Busy {
        queue: Option<String>,
        timed_out: bool,
    },
}

/// What can go wrong with a request (or at start-up).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing API key")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("the master key is required")]
    MasterKeyRequired,
    /// Unknown handle, or one the key may not use: the same answer, so a key cannot probe.
    #[error("unknown handle `{0}`")]
    UnknownHandle(String),
    #[error("{what} limit of {limit} per minute reached")]
    RateLimited {
        what: &'static str,
        limit: i64,
        retry_after_s: u64,
    },
    #[error("token budget of {budget} spent")]
    BudgetSpent { budget: i64 },
    #[error("{0}")]
    BadRequest(String),
    /// Every target failed; the reasons are in the log under the request id.
    #[error("all targets of `{handle}` failed ({attempts} attempts)")]
    AllTargetsFailed {
        handle: String,
        attempts: u32,
        why: Unavailable,
    },
    /// The request's tool definitions are larger than every target of the handle takes.
    #[error("tools of {bytes} bytes exceed what `{handle}` takes ({limits})")]
    ToolsTooLarge {
        handle: String,
        bytes: usize,
        /// Each refusing target and its limit, e.g. "studio-afm/base: 4000 bytes".
        limits: String,
    },
    /// The prompt fits no target of the handle (nor of its context fallbacks).
    #[error("the prompt does not fit the context window of any target of `{handle}`: {detail}")]
    ContextExceeded {
        handle: String,
        /// What was tried: each target's window and the estimate, or a backend's words.
        detail: String,
    },
    /// No target of the handle serves the request's API (the endpoints' `offers`).
    #[error("`{handle}` does not offer {api} (it offers {offers})")]
    NotOffered {
        handle: String,
        api: &'static str,
        /// What its targets offer, e.g. "chat, completions, embeddings".
        offers: String,
    },
    /// An upload over `--max-upload`.
    #[error("the upload is larger than the gateway's limit of {0} bytes (--max-upload)")]
    UploadTooLarge(u64),
    /// A part of an upload could not be held in a temporary file.
    #[error("an upload could not be held: {0}")]
    Spool(String),
    #[error("no search tool `{0}`")]
    UnknownSearchTool(String),
    /// A response the caller cannot read back: never stored, expired, or another key's.
    #[error(
        "no stored response `{0}` (responses are kept when created with `store: true`, for --responses-retention)"
    )]
    UnknownResponse(String),
    #[error("search failed: {0}")]
    Search(String),
    #[error("the gateway is at its concurrency limit")]
    Overloaded,
    #[error("{0}")]
    Db(#[from] docsdb::Error),
    #[error(
        "refusing to listen on {0} without a master key; set HOMELAB_MASTER_KEY or pass --allow-unauthenticated"
    )]
    UnsafeBind(String),
    #[error("{0}")]
    Service(#[from] service_kit::Error),
}

impl Error {
    /// The wire form.
    pub fn to_api(&self) -> ApiError {
        match self {
            Error::MissingKey => ApiError::invalid_api_key(
                "You didn't provide an API key. Send `Authorization: Bearer <key>`.",
            ),
            Error::InvalidKey => ApiError::invalid_api_key("Incorrect API key provided."),
            Error::MasterKeyRequired => {
                ApiError::invalid_api_key("This endpoint needs the master key.")
            }
            Error::UnknownHandle(h) => ApiError::model_not_found(h),
            Error::RateLimited { .. } => ApiError::rate_limited(self.to_string()),
            Error::BudgetSpent { .. } => {
                ApiError::quota_exceeded(format!("{self}; ask the operator for a new budget"))
            }
            Error::BadRequest(m) => ApiError::bad_request(m.clone()),
            Error::UnknownResponse(_) => ApiError::not_found(self.to_string()),
            Error::AllTargetsFailed { handle, why, .. } => match why {
                Unavailable::Failing => ApiError::service_unavailable(format!(
                    "no backend of `{handle}` is available right now; see the gateway log"
                )),
                Unavailable::TimedOut => ApiError::gateway_timeout(format!(
                    "no backend of `{handle}` answered in time; see the gateway log"
                )),
                Unavailable::Loading => ApiError::service_unavailable(format!(
                    "the model behind `{handle}` is still loading; retry in a moment"
                )),
                Unavailable::Busy { queue, timed_out } => {
                    let load = queue
                        .as_deref()
                        .map_or_else(String::new, |q| format!(" ({q})"));
                    if *timed_out {
                        ApiError::gateway_timeout(format!(
                            "the backend of `{handle}` is busy{load} and did not get to this request in time; retry later"
                        ))
                    } else {
                        ApiError::server_busy(format!(
                            "the backend of `{handle}` is busy{load}; retry shortly"
                        ))
                    }
                }
            },
            Error::ToolsTooLarge {
                handle,
                bytes,
                limits,
            } => {
                let mut e = ApiError::invalid_value(
                    "context_length_exceeded",
                    format!(
                        "the request's tool definitions ({bytes} bytes of `tools`) are more than the backends of `{handle}` can hold (max_tools_bytes: {limits}); send fewer tools, turn tools off for this model, or use another handle"
                    ),
                );
                e.error.param = Some("tools".into());
                e
            }
            Error::ContextExceeded { .. } => {
                let mut e = ApiError::invalid_value(
                    "context_length_exceeded",
                    format!(
                        "{self}; shorten the conversation, or use a handle with a larger context (`context_fallback` in the registry)"
                    ),
                );
                e.error.param = Some("messages".into());
                e
            }
            Error::NotOffered { .. } => {
                let mut e = ApiError::invalid_value(
                    "model_not_supported",
                    format!(
                        "{self}; use a handle whose endpoints offer it (`offers` in the registry)"
                    ),
                );
                e.error.param = Some("model".into());
                e
            }
            Error::UploadTooLarge(max) => ApiError::payload_too_large(*max),
            Error::UnknownSearchTool(t) => {
                ApiError::not_found(format!("no search tool `{t}` is configured"))
            }
            Error::Search(_) => {
                ApiError::bad_gateway("the search backend failed; see the gateway log")
            }
            Error::Overloaded => ApiError::service_unavailable(
                "the gateway is at its concurrency limit; retry shortly",
            ),
            Error::Db(_) | Error::UnsafeBind(_) | Error::Service(_) | Error::Spool(_) => {
                ApiError::internal("internal error; see the gateway log")
            }
        }
    }

    /// The short kind recorded in the request log.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::MissingKey | Error::InvalidKey | Error::MasterKeyRequired => "auth",
            Error::UnknownHandle(_) => "model_not_found",
            Error::RateLimited { .. } => "rate_limited",
            Error::BudgetSpent { .. } => "budget_spent",
            Error::BadRequest(_) => "bad_request",
            Error::AllTargetsFailed { why, .. } => match why {
                Unavailable::Failing => "all_targets_failed",
                Unavailable::TimedOut => "timeout",
                Unavailable::Loading => "loading",
                Unavailable::Busy { .. } => "busy",
            },
            Error::ToolsTooLarge { .. } => "tools_too_large",
            Error::ContextExceeded { .. } => "context_length_exceeded",
            Error::NotOffered { .. } => "not_offered",
            Error::UploadTooLarge(_) => "too_large",
            Error::UnknownSearchTool(_) => "unknown_search_tool",
            Error::UnknownResponse(_) => "unknown_response",
            Error::Search(_) => "search_failed",
            Error::Overloaded => "overloaded",
            Error::Db(_) | Error::UnsafeBind(_) | Error::Service(_) | Error::Spool(_) => "internal",
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut res = self.to_api().into_response();
        if let Error::RateLimited { retry_after_s, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string())
        {
            res.headers_mut().insert("retry-after", v);
        }
        if let Error::AllTargetsFailed {
            why: Unavailable::Busy { .. } | Unavailable::Loading,
            ..
        } = &self
        {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        res
    }
}
