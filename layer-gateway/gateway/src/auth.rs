//! Who is calling: the master key, a virtual key, or nobody (only when no master key is
//! configured).

use std::sync::Arc;

use axum::http::HeaderMap;
use docsdb::keys::{KeyInfo, hash_key};

use crate::error::Error;
use crate::table::Snapshot;

/// The caller of one request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No master key is configured and the request carried no known key.
    Anonymous,
    Master,
    Key(Arc<KeyInfo>),
}

impl Caller {
    /// The name recorded in the request log.
    pub fn log_name(&self) -> Option<String> {
        match self {
            Caller::Anonymous => None,
            Caller::Master => Some("master".into()),
            Caller::Key(k) => Some(k.name.clone()),
        }
    }

    /// Whether the caller may use `handle`.
    pub fn allows(&self, handle: &str) -> bool {
        match self {
            Caller::Anonymous | Caller::Master => true,
            Caller::Key(k) => k.allows(handle),
        }
    }
}

pub use service_kit::auth::{bearer, is_loopback_bind};

/// Identifies the caller. With a master key configured (`master_hash`), a key is required.
pub fn authenticate(
    headers: &HeaderMap,
    master_hash: Option<&str>,
    table: &Snapshot,
) -> Result<Caller, Error> {
    let token = bearer(headers);
    let hash = token.map(hash_key);
    if let (Some(master), Some(h)) = (master_hash, hash.as_deref())
        && master == h
    {
        return Ok(Caller::Master);
    }
    if let Some(key) = hash.as_deref().and_then(|h| table.keys.get(h)) {
        return Ok(Caller::Key(key.clone()));
    }
    match (master_hash, token) {
        (None, _) => Ok(Caller::Anonymous),
        (Some(_), None) => Err(Error::MissingKey),
        (Some(_), Some(_)) => Err(Error::InvalidKey),
    }
}
