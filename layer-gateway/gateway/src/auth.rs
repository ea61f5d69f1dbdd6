//! Who is calling: the master key, a virtual key, or nobody (only when no master key is
//! configured).

use std::sync::Arc;

use axum::http::HeaderMap;
use docsdb::keys::{KeyInfo, hash_key};
use docsdb::request_log::EndUser;

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

    /// Whether the caller may see tool server `server` on `/mcp`.
    pub fn allows_server(&self, server: &str) -> bool {
        match self {
            Caller::Anonymous | Caller::Master => true,
            Caller::Key(k) => k.allows_server(server),
        }
    }

    /// Whether the caller may call `tool` of tool server `server` on `/mcp`.
    pub fn allows_tool(&self, server: &str, tool: &str) -> bool {
        match self {
            Caller::Anonymous | Caller::Master => true,
            Caller::Key(k) => k.allows_tool(server, tool),
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

/// The end user and chat a client named in Open WebUI's forwarded headers, for the request
/// log (absent or empty headers stay `None`; the name is percent-decoded). Their length is
/// bounded by the server's header limit.
pub fn end_user(headers: &HeaderMap) -> EndUser {
    use contract::openwebui as h;
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    EndUser {
        id: get(h::USER_ID).map(str::to_owned),
        name: get(h::USER_NAME).map(|n| {
            percent_encoding::percent_decode_str(n)
                .decode_utf8_lossy()
                .into_owned()
        }),
        email: get(h::USER_EMAIL).map(str::to_owned),
        role: get(h::USER_ROLE).map(str::to_owned),
        chat_id: get(h::CHAT_ID).map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_webui_user_headers_are_read_and_the_name_decoded() {
        let mut headers = HeaderMap::new();
        headers.insert("X-OpenWebUI-User-Id", "8d1c".parse().unwrap());
        // Open WebUI quotes the name with spaces kept: quote("Zoë Ünïcode", safe=" ").
        headers.insert(
            "X-OpenWebUI-User-Name",
            "Zo%C3%AB %C3%9Cn%C3%AFcode".parse().unwrap(),
        );
        headers.insert("X-OpenWebUI-User-Email", "zoe@example.org".parse().unwrap());
        headers.insert("X-OpenWebUI-User-Role", "admin".parse().unwrap());
        headers.insert("X-OpenWebUI-Chat-Id", " ".parse().unwrap());
        let u = end_user(&headers);
        assert_eq!(u.id.as_deref(), Some("8d1c"));
        assert_eq!(u.name.as_deref(), Some("Zoë Ünïcode"));
        assert_eq!(u.email.as_deref(), Some("zoe@example.org"));
        assert_eq!(u.role.as_deref(), Some("admin"));
        assert_eq!(u.chat_id, None, "a blank header is no chat");
        assert_eq!(end_user(&HeaderMap::new()), EndUser::default());
    }
}
