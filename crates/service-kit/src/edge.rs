//! What every request goes through before routing, as one service around the whole router:
//! its `x-request-id` ([`crate::request_id`]) and the body limit ([`crate::body`]).
//!
//! One service wrapped once around the router, rather than a middleware layer per route: a
//! layer on an axum router wraps every route, so each request paid for cloning and boxing
//! each layer's service and future; here a request costs one boxed future.
//!
//! A body whose `Content-Length` is over the limit is refused here, unread; a body with a
//! declared length within the limit is passed as it is (the server reads no more than the
//! length declares); only a body without one (chunked) is capped while it is read.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use contract::ApiError;
use http_body_util::Limited;
use tracing::Instrument;

use crate::body::{BodyLimit, BodyLimits};
use crate::request_id::{self, RequestId, X_REQUEST_ID};

/// A request the edge refused before any handler saw it.
#[derive(Debug)]
pub struct Refusal<'a> {
    pub path: &'a str,
    pub request_id: &'a str,
    pub status: StatusCode,
}

/// Told of each [`Refusal`] (a service that logs every request logs these too).
pub type OnRefusal = Arc<dyn Fn(&Refusal<'_>) + Send + Sync>;

/// The router with the request id and body limit applied to every request.
#[derive(Clone)]
pub struct Edge {
    inner: Router,
    limits: BodyLimits,
    on_refusal: Option<OnRefusal>,
}

impl Edge {
    pub fn new(inner: Router, limits: BodyLimits, on_refusal: Option<OnRefusal>) -> Self {
        Edge {
            inner,
            limits,
            on_refusal,
        }
    }
}

impl tower::Service<Request> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let (id, value) = request_id::settle(req.headers());
        // Downstream code (and the upstream request) sees the id we settled on.
        req.headers_mut()
            .insert(X_REQUEST_ID.clone(), value.clone());
        let max = self.limits.of(req.uri().path());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            if let Some(hook) = &self.on_refusal {
                hook(&Refusal {
                    path: req.uri().path(),
                    request_id: &id,
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                });
            }
            let mut res = ApiError::payload_too_large(max).into_response();
            res.headers_mut().insert(X_REQUEST_ID.clone(), value);
            return Box::pin(std::future::ready(Ok(res)));
        }
        if declared.is_none() {
            req.extensions_mut().insert(BodyLimit(max));
            let (parts, body) = req.into_parts();
            let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
            req = Request::from_parts(parts, axum::body::Body::new(limited));
        }
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %req.method(),
            path = %req.uri().path(),
        );
        req.extensions_mut().insert(RequestId(id));
        let answer = tower::Service::call(&mut self.inner.clone(), req);
        Box::pin(
            async move {
                let Ok(mut res) = answer.await;
                res.headers_mut().insert(X_REQUEST_ID.clone(), value);
                Ok(res)
            }
            .instrument(span),
        )
    }
}
