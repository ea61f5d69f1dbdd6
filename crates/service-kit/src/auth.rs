//! What every service that takes a key reads from a request, and the one rule for when a key
//! is required: beyond loopback.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// SHA-256 of a key: services keep and compare this fixed-size digest, which does not leak
/// the key's length, rather than the key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether a bind address is loopback only (a service listening elsewhere wants a key).
pub fn is_loopback_bind(bind: &str) -> bool {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => bind.starts_with("localhost:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            AUTHORIZATION,
            "Bearer  sk-1 ".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(bearer(&h), Some("sk-1"));
        h.insert(
            AUTHORIZATION,
            "Basic abc".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn loopback_binds() {
        assert!(is_loopback_bind("127.0.0.1:4000"));
        assert!(is_loopback_bind("[::1]:4000"));
        assert!(is_loopback_bind("localhost:4000"));
        assert!(!is_loopback_bind("0.0.0.0:4000"));
        assert!(!is_loopback_bind("192.168.1.5:4000"));
    }
}
