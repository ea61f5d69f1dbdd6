//! The checks in front of `/mcp`: the bearer token, the cap on open sessions, and the body's
//! size. (`Host` and `Origin` are checked by the SDK's transport, configured in
//! [`crate::http_app`].)

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use contract::ApiError;
use http::{HeaderValue, Method, header};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use service_kit::auth::{bearer, digest};
use service_kit::body::{BodyLimit, read_bytes};

pub(crate) struct Guard {
    /// SHA-256 of the token: comparing fixed-size digests does not leak the token's length
    /// or a matching prefix through timing.
    pub token_digest: Option<[u8; 32]>,
    pub sessions: Arc<LocalSessionManager>,
    pub max_sessions: usize,
}

pub(crate) async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    if let Some(want) = &guard.token_digest {
        let got = bearer(req.headers()).map(digest);
        if got.as_ref() != Some(want) {
            let mut resp = ApiError::invalid_api_key(
                "this MCP server needs `Authorization: Bearer TOKEN` with its token",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let opens_session =
        req.method() == Method::POST && !req.headers().contains_key("mcp-session-id");
    if opens_session {
        let open = guard.sessions.sessions.read().await.len();
        if open >= guard.max_sessions {
            tracing::warn!(open, max = guard.max_sessions, "refusing a new MCP session");
            return ApiError::service_unavailable(format!(
                "{open} MCP sessions are open, the most this server allows (--max-sessions); \
                 close one (DELETE /mcp) or wait for idle ones to expire"
            ))
            .into_response();
        }
    }
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    // The body is read here, under the edge's limit, so that one over it — sent chunked,
    // with no length to refuse it by — gets 413 rather than the transport's read error.
    let (parts, body) = req.into_parts();
    let limit = parts.extensions.get::<BodyLimit>().copied();
    let mut probe = Request::new(body);
    if let Some(l) = limit {
        probe.extensions_mut().insert(l);
    }
    match read_bytes(probe).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => e.into_response(),
    }
}
