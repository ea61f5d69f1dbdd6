//! Request bodies: the size limit, and extractors that answer bad bodies in OpenAI shape.
//!
//! The edge ([`crate::edge`]) rejects a body whose `Content-Length` is over the limit before
//! reading it, and caps bodies without a length (chunked) while they are read, so neither way
//! can make a service buffer more than the limit. [`JsonBody`] and [`RawJson`] turn every way a body can
//! be wrong into an OpenAI error: wrong content type and malformed JSON → 400, too large →
//! 413.

use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use contract::ApiError;
use http_body_util::{BodyExt, LengthLimitError};
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

/// Whether reading a body failed because it went over the limit ([`crate::edge`]).
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
    let mime = ct.split(';').next().unwrap_or("").trim().as_bytes();
    let ends_with = |suffix: &[u8]| {
        mime.len() >= suffix.len() && mime[mime.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    mime.eq_ignore_ascii_case(b"application/json")
        || (mime.len() >= 12
            && mime[..12].eq_ignore_ascii_case(b"application/")
            && ends_with(b"+json"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(ct: &str) -> bool {
        let mut h = HeaderMap::new();
        if let Ok(v) = ct.parse() {
            h.insert(CONTENT_TYPE, v);
        }
        is_json(&h)
    }

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;x=1",
            "application/vnd.api+json",
            "APPLICATION/PROBLEM+JSON",
        ] {
            assert!(typed(yes), "{yes}");
        }
        for no in [
            "",
            "text/plain",
            "application/jsonx",
            "text/x+json",
            "application/",
            "+json",
        ] {
            assert!(!typed(no), "{no}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
