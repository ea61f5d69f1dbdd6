//! The response cache: answers to identical deterministic requests, kept in memory.
//!
//! Opt-in per handle (`cache_ttl_ms`). A request is cacheable when it is not streamed and its
//! answer does not depend on sampling: embeddings, or a chat/completion with `temperature: 0`
//! or a `seed`. The key is the route, the handle and the client's body byte for byte; a hit
//! compares the whole body, so two requests share an answer only when they are identical.
//! Only 200 answers are kept, each for its handle's TTL; the whole cache holds at most
//! `--cache-max-bytes` (keys and answers), dropping the least recently used first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;
use docsdb::request_log::UsageSource;

use crate::table::Target;

/// Says whether an answer came from the cache (`hit`) or was asked for and kept (`miss`).
pub const HEADER: &str = "x-cache";

/// What identifies a cached answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub route: &'static str,
    pub handle: Arc<str>,
    pub body: Bytes,
}

impl Key {
    fn bytes(&self) -> usize {
        self.body.len() + self.handle.len()
    }
}

/// A kept answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    pub content_encoding: Option<HeaderValue>,
    /// The target that answered.
    pub target: Arc<Target>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub usage_source: Option<UsageSource>,
    pub stored: Instant,
}

/// Bookkeeping per entry beyond the key and body (headers, the map's slots): so that many
/// tiny answers cannot exceed the bound unnoticed.
const ENTRY_OVERHEAD: usize = 256;

struct Entry {
    answer: Answer,
    expires: Instant,
    /// Position in the use order.
    used: u64,
    size: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Use order: least recently used first.
    order: BTreeMap<u64, Key>,
    next: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.order.remove(&e.used);
            self.bytes -= e.size;
        }
    }
}

/// Counts, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: usize,
    pub bytes: usize,
}

/// The cache. Cheap to share: one lock, held for map operations only.
pub struct ResponseCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

impl ResponseCache {
    pub fn new(max_bytes: usize) -> Self {
        ResponseCache {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The answer for `key`, if kept and not expired; a hit counts as a use.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Answer> {
        let mut inner = self.inner.lock().ok()?;
        let expired = inner.map.get(key)?.expires <= now;
        if expired {
            inner.remove(key);
            return None;
        }
        let used = inner.next;
        inner.next += 1;
        let entry = inner.map.get_mut(key)?;
        let old = std::mem::replace(&mut entry.used, used);
        let answer = entry.answer.clone();
        inner.order.remove(&old);
        inner.order.insert(used, key.clone());
        Some(answer)
    }

    /// Keeps `answer` for `ttl`, dropping the least recently used entries over the bound. An
    /// answer larger than a quarter of the whole cache is not kept.
    pub fn put(&self, key: Key, answer: Answer, ttl: Duration) {
        let size = key.bytes() + answer.body.len() + ENTRY_OVERHEAD;
        if size > self.max_bytes / 4 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.remove(&key);
        while inner.bytes + size > self.max_bytes {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes -= e.size;
            }
        }
        let used = inner.next;
        inner.next += 1;
        let expires = answer.stored + ttl;
        inner.order.insert(used, key.clone());
        inner.bytes += size;
        inner.map.insert(
            key,
            Entry {
                answer,
                expires,
                used,
                size,
            },
        );
    }

    pub fn stats(&self) -> Stats {
        self.inner
            .lock()
            .map(|i| Stats {
                entries: i.map.len(),
                bytes: i.bytes,
            })
            .unwrap_or_default()
    }
}

/// Whether a JSON request's answer is deterministic: `temperature` 0 or a `seed`.
pub fn deterministic(temperature: Option<&[u8]>, seed: Option<&[u8]>) -> bool {
    let zero = temperature
        .and_then(|t| serde_json::from_slice::<f64>(t).ok())
        .is_some_and(|t| t == 0.0);
    zero || seed.is_some_and(|s| s != b"null")
}

/// What the client's `Cache-Control` allows: (read the cache, store the answer).
pub fn client_allows(cache_control: Option<&HeaderValue>) -> (bool, bool) {
    let Some(v) = cache_control.and_then(|v| v.to_str().ok()) else {
        return (true, true);
    };
    let has = |d: &str| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(d));
    let no_store = has("no-store");
    (!no_store && !has("no-cache"), !no_store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Arc<Target> {
        Arc::new(Target {
            key: "e/m".into(),
            endpoint: "e".into(),
            endpoint_header: None,
            base_url: "http://127.0.0.1:1".into(),
            urls: Vec::new(),
            origin: None,
            api: docsdb::spec::Api::Openai,
            offers: Vec::new(),
            auth: None,
            upstream_model: "m".into(),
            priority: 0,
            weight: 1,
            timeouts: crate::table::Timeouts {
                connect: Duration::from_secs(1),
                first_byte: Duration::from_secs(1),
                idle: Duration::from_secs(1),
                total: Duration::from_secs(1),
            },
            rpm: None,
            tpm: None,
            params: None,
            max_tools_bytes: None,
            over_tools: Default::default(),
            context_length: None,
        })
    }

    fn key(body: &str) -> Key {
        Key {
            route: "chat",
            handle: "h".into(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn answer(body: &str, at: Instant) -> Answer {
        Answer {
            body: Bytes::from(body.to_owned()),
            content_type: None,
            content_encoding: None,
            target: target(),
            prompt_tokens: Some(3),
            completion_tokens: Some(2),
            usage_source: Some(UsageSource::Backend),
            stored: at,
        }
    }

    #[test]
    fn hit_miss_expiry_and_the_bound() {
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let c = ResponseCache::new(4 * 1024);
        c.put(key("a"), answer("A", now), ttl);
        assert_eq!(
            c.get(&key("a"), now).map(|a| a.body),
            Some(Bytes::from("A"))
        );
        assert!(c.get(&key("a "), now).is_none(), "a different body misses");
        assert!(c.get(&key("a"), now + ttl).is_none(), "expired");
        assert_eq!(c.stats().entries, 0, "an expired entry is dropped when met");

        // Entries of ~756 bytes: five fit in 4 KiB, the sixth evicts the least recently used.
        let big = "x".repeat(500);
        for i in 0..5 {
            c.put(key(&format!("{i}")), answer(&big, now), ttl);
        }
        assert_eq!(c.stats().entries, 5);
        assert!(c.get(&key("0"), now).is_some(), "0 is now the most recent");
        c.put(key("5"), answer(&big, now), ttl);
        assert!(c.stats().bytes <= 4 * 1024);
        assert!(
            c.get(&key("1"), now).is_none(),
            "the least recently used went"
        );
        assert!(c.get(&key("0"), now).is_some());
        assert!(c.get(&key("5"), now).is_some());

        // An answer over a quarter of the cache is not kept.
        c.put(key("huge"), answer(&"y".repeat(2000), now), ttl);
        assert!(c.get(&key("huge"), now).is_none());
    }

    #[test]
    fn determinism_and_cache_control() {
        assert!(deterministic(Some(b"0"), None));
        assert!(deterministic(Some(b"0.0"), None));
        assert!(deterministic(Some(b"0.7"), Some(b"42")));
        assert!(!deterministic(Some(b"0.7"), None));
        assert!(!deterministic(None, Some(b"null")));
        assert!(!deterministic(None, None));
        assert_eq!(client_allows(None), (true, true));
        let v = |s: &'static str| Some(HeaderValue::from_static(s));
        assert_eq!(client_allows(v("no-cache").as_ref()), (false, true));
        assert_eq!(
            client_allows(v("max-age=0, no-store").as_ref()),
            (false, false)
        );
        assert_eq!(client_allows(v("max-age=60").as_ref()), (true, true));
    }
}
