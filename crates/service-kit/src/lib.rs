//! What every homelab-llm service shares, so that each service's own crate holds only its
//! own logic:
//!
//! - [`auth`]: the bearer token of a request, key digests, and whether a bind is loopback.
//! - [`config`]: the flags every service takes (log format, body limit, drain time), with
//!   environment fallbacks, and value parsers for sizes and durations.
//! - [`telemetry`]: `tracing` set-up, text or JSON.
//! - [`health`]: `GET /health` (alive) and `GET /health/ready` (dependencies OK).
//! - [`routes`]: a router built together with the table of its routes (for the spec).
//! - [`edge`]: the request id and the body limit, one service around the whole router.
//! - [`request_id`]: `x-request-id` taken from the client or generated, echoed back, and
//!   put on the request's tracing span.
//! - [`body`]: the body-size limit (413 in OpenAI shape) and JSON body extractors whose
//!   rejections are OpenAI-shaped 400/413 errors.
//! - [`server`]: binding (with `TCP_NODELAY`), the common layers, and graceful shutdown on
//!   SIGTERM/SIGINT that drains in-flight requests and then runs flush hooks.
//! - [`tasks`]: one owner for a service's background tasks (cancel, then wait, bounded).
//! - [`service`]: the one shape of a service crate ([`Service`], implemented by its
//!   `Config`) and [`run`], every service binary's `main`.

pub mod auth;
pub mod body;
pub mod config;
pub mod edge;
mod error;
pub mod health;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod service;
pub mod tasks;
pub mod telemetry;

pub use error::Error;
pub use service::{Service, run, run_with};
