//! The wire contract of homelab-llm.
//!
//! Every service speaks OpenAI-compatible HTTP; the types for that surface live here and only
//! here, so that a field added for one service is understood by all of them.
//!
//! Two rules shape every request type:
//! - **Nothing a client sent is lost.** Each object keeps the fields we do not model in a
//!   flattened `extra` map, so parse → serialise gives back every field (a proxy must never
//!   drop what a client sent). Fields are kept in the order they arrived.
//! - **Optional means optional.** Modelled optional fields are skipped when absent.
//!
//! Modules: [`units`] (sizes and durations in flags and files), [`chat`] (chat completions and streamed chunks), [`completions`] (legacy
//! completions), [`embeddings`], [`models`], [`usage`], [`error`] (the error envelope),
//! [`sse`] (an incremental server-sent-events decoder and encoder), [`search`] (`/v1/search`)
//! and [`engine`] (priority, queue, timings and loading: what our engines add).

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod models;
pub mod openwebui;
pub mod optillm;
pub mod qdrant;
pub mod search;
pub mod sse;
pub mod units;
pub mod usage;

mod serde_util;

pub use error::{ApiError, ErrorBody};
pub use serde_util::OneOrMany;
pub use usage::Usage;

/// A JSON object holding the fields a type does not model, in arrival order.
pub type Extra = serde_json::Map<String, serde_json::Value>;
