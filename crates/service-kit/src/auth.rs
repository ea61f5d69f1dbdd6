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

/// Whether a service on `bind` would answer the network without a key, which it refuses to
/// start for unless the operator allowed it on purpose (`--allow-unauthenticated`).
pub fn open_without_key(bind: &str, keyed: bool, allow_unauthenticated: bool) -> bool {
    !keyed && !allow_unauthenticated && !is_loopback_bind(bind)
}

/// The key a request carries: the first of `named` headers that is set (`api-key`,
/// `x-api-key`, as a service's clients send it), else its bearer token.
pub fn request_key<'a>(headers: &'a HeaderMap, named: &[&str]) -> Option<&'a str> {
    named
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .or_else(|| bearer(headers))
}

/// Whether a service with the key digest `want` lets a request with `given` through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Missing,
    Invalid,
    Valid,
}

/// Compares `given` with the digest `want`.
pub fn check_key(want: &[u8; 32], given: Option<&str>) -> KeyCheck {
    match given {
        None => KeyCheck::Missing,
        Some(k) if digest(k) != *want => KeyCheck::Invalid,
        Some(_) => KeyCheck::Valid,
    }
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
    fn keys_from_named_headers_or_bearer_and_the_bind_rule() {
        let mut h = HeaderMap::new();
        assert_eq!(request_key(&h, &["api-key"]), None);
        h.insert(
            AUTHORIZATION,
            "Bearer b".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(request_key(&h, &["api-key"]), Some("b"));
        h.insert("api-key", " a ".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(request_key(&h, &["api-key"]), Some("a"));
        let want = digest("a");
        assert_eq!(check_key(&want, Some("a")), KeyCheck::Valid);
        assert_eq!(check_key(&want, Some("b")), KeyCheck::Invalid);
        assert_eq!(check_key(&want, None), KeyCheck::Missing);
        assert!(open_without_key("0.0.0.0:1", false, false));
        assert!(!open_without_key("0.0.0.0:1", true, false));
        assert!(!open_without_key("0.0.0.0:1", false, true));
        assert!(!open_without_key("127.0.0.1:1", false, false));
    }

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
