//! The OpenAI error envelope: `{"error":{"message","type","param","code"}}`.
//!
//! Every service answers errors in this shape, with the status the constructors below pick.
//! The constructors are the only place where a status is paired with a `type` and `code`, so
//! clients see the same pair for the same failure whichever service produced it.

use serde::{Deserialize, Serialize};

/// The inner object of the envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `rate_limit_exceeded`, ...). OpenAI sends a
    /// string; some servers send a number, which is kept as its decimal text.
    #[serde(default, deserialize_with = "code_as_string")]
    pub code: Option<String>,
}

fn code_as_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// An error as it goes on the wire, with the HTTP status it is sent with.
///
/// The status is not part of the JSON body; it travels beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(skip, default = "default_status")]
    pub status: u16,
    pub error: ErrorBody,
}

fn default_status() -> u16 {
    500
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status, self.error.kind, self.error.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// Any status, type and code; prefer the named constructors.
    pub fn new(status: u16, kind: &str, code: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error: ErrorBody {
                message: message.into(),
                kind: kind.to_owned(),
                param: None,
                code: code.map(str::to_owned),
            },
        }
    }

    /// Names the request parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }

    /// 400: the request is malformed or a parameter is invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", None, message)
    }

    /// 400 with a specific code (`context_length_exceeded`, `unsupported_value`, ...).
    pub fn invalid_value(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", Some(code), message)
    }

    /// 401: no key, or a key we do not know.
    pub fn invalid_api_key(message: impl Into<String>) -> Self {
        Self::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// 403: a valid key that may not do this (for example, use this handle).
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(403, "permission_error", Some("permission_denied"), message)
    }

    /// 404 for an unknown model or handle. The message names only what the client sent.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
    }

    /// 404 for a path or resource other than a model.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "invalid_request_error", Some("not_found"), message)
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            message,
        )
    }

    /// 413: the body is larger than the configured limit.
    pub fn payload_too_large(limit_bytes: u64) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("The request body is larger than the limit of {limit_bytes} bytes."),
        )
    }

    /// 415: the body is not `application/json`.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            415,
            "invalid_request_error",
            Some("unsupported_media_type"),
            message,
        )
    }

    /// 429: a rate, token or concurrency limit was hit. `Retry-After` goes in a header.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        )
    }

    /// 429 when a key's token budget is spent.
    pub fn quota_exceeded(message: impl Into<String>) -> Self {
        Self::new(
            429,
            "insufficient_quota",
            Some("insufficient_quota"),
            message,
        )
    }

    /// 500: a fault of ours.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "server_error", Some("internal_error"), message)
    }

    /// 502: the backend answered with something we could not use.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "server_error", Some("bad_gateway"), message)
    }

    /// 503: no backend can take the request now (all down, loading, or the queue is full).
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", Some("service_unavailable"), message)
    }

    /// 503 when the backend is busy: its queue is full, or the request waited too long.
    /// `Retry-After` goes in a header.
    pub fn server_busy(message: impl Into<String>) -> Self {
        Self::new(503, "server_error", Some("server_busy"), message)
    }

    /// 504: the backend did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(504, "server_error", Some("timeout"), message)
    }

    /// The JSON body, as bytes.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = http::StatusCode::from_u16(self.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut res = (status, self.to_json_bytes()).into_response();
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shape_is_openai() {
        let e = ApiError::model_not_found("nope");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json_bytes()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
        assert!(
            v.get("status").is_none(),
            "status travels as the HTTP status, not in the body"
        );
        assert_eq!(e.status, 404);
    }

    #[test]
    fn statuses_match_their_meaning() {
        let cases = [
            (ApiError::bad_request("x"), 400),
            (ApiError::invalid_api_key("x"), 401),
            (ApiError::permission_denied("x"), 403),
            (ApiError::not_found("x"), 404),
            (ApiError::payload_too_large(10), 413),
            (ApiError::unsupported_media_type("x"), 415),
            (ApiError::rate_limited("x"), 429),
            (ApiError::quota_exceeded("x"), 429),
            (ApiError::internal("x"), 500),
            (ApiError::bad_gateway("x"), 502),
            (ApiError::service_unavailable("x"), 503),
            (ApiError::gateway_timeout("x"), 504),
        ];
        for (e, status) in cases {
            assert_eq!(e.status, status, "{e}");
        }
    }

    #[test]
    fn numeric_codes_from_other_servers_parse() {
        // llama-server answers `{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}`.
        let e: ApiError = serde_json::from_str(
            r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error","param":null}}"#,
        )
        .unwrap();
        assert_eq!(e.error.code.as_deref(), Some("503"));
    }
}
