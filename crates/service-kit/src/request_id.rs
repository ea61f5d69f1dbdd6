//! `x-request-id`: taken from the client when it is sane, generated otherwise, stored in the
//! request's extensions as [`RequestId`], returned on the response, and recorded on a
//! `request` tracing span around the whole request.
//!
//! A client id is kept only if it is 1–128 visible ASCII characters: an id goes into logs,
//! upstream headers and the request log, so an unbounded or binary one is replaced.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied id we keep.
pub const MAX_LEN: usize = 128;

/// The request's id, in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id the edge ([`crate::edge`]) settled on for `req` (a fresh one if it did not run).
pub fn of(req: &Request) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(generate)
}

/// As [`of`], taking the id out of the request's extensions rather than copying it.
pub fn take(req: &mut Request) -> String {
    req.extensions_mut()
        .remove::<RequestId>()
        .map(|r| r.0)
        .unwrap_or_else(generate)
}

/// The request's id: the client's `x-request-id` when it is sane, else a fresh one; and the
/// header value that carries it.
pub fn settle(headers: &HeaderMap) -> (String, HeaderValue) {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && let Ok(s) = v.to_str()
        && is_valid(s)
    {
        return (s.to_owned(), v.clone());
    }
    let id = generate();
    // A generated id is 32 hex digits, always a valid header value.
    let value = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("invalid"));
    (id, value)
}

/// A fresh id: a UUIDv7, so ids sort by time. Its random bits come from a fast thread-local
/// generator (seeded from the OS once per thread), not a system call per request: an id
/// names a request, it guards nothing.
pub fn generate() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random: [u8; 10] = std::array::from_fn(|_| fastrand::u8(..));
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .simple()
        .encode_lower(&mut text)
        .to_owned()
}

/// Whether a client-supplied id is acceptable.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert!(is_valid("abc-123_XYZ"));
        assert!(!is_valid(""));
        assert!(!is_valid("has space"));
        assert!(!is_valid(&"x".repeat(MAX_LEN + 1)));
        assert!(is_valid(&generate()));
        assert_ne!(generate(), generate());
    }

    #[test]
    fn generated_ids_are_uuid_v7_in_time_order() {
        let ids: Vec<String> = (0..1000).map(|_| generate()).collect();
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).unwrap_or_default();
            assert_eq!(u.get_version_num(), 7, "{id}");
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        // Ordered by their millisecond, whatever their random bits.
        assert!(ids.windows(2).all(|w| w[0][..12] <= w[1][..12]));
    }
}
