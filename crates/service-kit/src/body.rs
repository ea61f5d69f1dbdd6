//! Request bodies: the size limit, and extractors that answer bad bodies in OpenAI shape.
//!
//! [`limit`] rejects a body whose `Content-Length` is over the limit before reading it, and
//! caps bodies without a length (chunked) while they are read, so neither way can make a
//! service buffer more than the limit. [`JsonBody`] and [`RawJson`] turn every way a body can
//! be wrong into an OpenAI error: wrong content type and malformed JSON → 400, too large →
//! 413.

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use contract::ApiError;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

/// The configured limit, in the request extensions (so extractors can name it).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// The limits of one service: `default` for every path, and larger ones for named paths
/// (uploads, which their handlers stream instead of buffering).
#[derive(Debug, Clone)]
pub struct BodyLimits {
    pub default: u64,
    /// Exact request paths and their limits.
    pub paths: std::sync::Arc<[(&'static str, u64)]>,
}

impl BodyLimits {
    /// One limit for every path.
    pub fn new(default: u64) -> Self {
        BodyLimits {
            default,
            paths: std::sync::Arc::new([]),
        }
    }

    /// The limit for `path`.
    pub fn of(&self, path: &str) -> u64 {
        self.paths
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(self.default, |(_, n)| *n)
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(BodyLimits::new(n), body::limit)`.
pub async fn limit(
    axum::extract::State(limits): axum::extract::State<BodyLimits>,
    mut req: Request,
    next: Next,
) -> Response {
    let max = limits.of(req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return ApiError::payload_too_large(max).into_response();
    }
    req.extensions_mut().insert(BodyLimit(max));
    let (parts, body) = req.into_parts();
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    next.run(Request::from_parts(parts, axum::body::Body::new(limited)))
        .await
}

/// Whether reading a body failed because it went over the [`limit`].
pub fn over_limit(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<LengthLimitError>())
        .is_some()
        || e.to_string().contains("length limit exceeded")
}

/// Reads the whole body, mapping an over-long body to 413 and a broken one to 400.
pub async fn read_bytes(req: Request) -> Result<Bytes, ApiError> {
    let max = req.extensions().get::<BodyLimit>().map(|b| b.0);
    match req.into_body().collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if over_limit(&e) {
                Err(ApiError::payload_too_large(max.unwrap_or(0)))
            } else {
                Err(ApiError::bad_request(format!(
                    "could not read the request body: {e}"
                )))
            }
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, any parameters, or a
/// `+json` suffix type).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "the request body must be JSON, sent with `Content-Type: application/json`",
        ))
    }
}

/// A JSON body parsed into `T`. Rejections are OpenAI errors naming the field at fault.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let bytes = read_bytes(req).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON, naming the path of the field at fault in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut err = ApiError::bad_request(format!("invalid JSON body: {inner}"));
        if path != "." {
            err = err.with_param(path);
        }
        err
    })
}

/// The raw bytes of a body sent as JSON, unparsed. For proxies, which forward the bytes
/// rather than a re-serialised value and parse only what they need.
#[derive(Debug)]
pub struct RawJson(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let bytes = read_bytes(req).await?;
        Ok(RawJson(bytes))
    }
}
