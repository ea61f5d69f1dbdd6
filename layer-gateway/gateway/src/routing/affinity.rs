//! Prefix affinity: the turns of one conversation go to the target that served the previous
//! one, where the engine still holds the conversation's KV (its prefix cache), instead of
//! wherever the strategy would send them, and being read again from the first token.
//!
//! A conversation is known by a hash of what every turn of it starts with: the handle, the
//! tools and the leading messages (up to the first user message: the system prompt and the
//! question that opened it), or the first 2 KB of a raw prompt. The remembered target is put
//! first when it stands as well as the strategy's first choice (the same priority: a
//! fallback is not promoted) and has fewer than `max_in_flight` requests in flight
//! (saturated, it would make the turn wait longer than reading the prompt elsewhere); when it
//! is down, the breaker and the retries pass over it as over any target, and the target that
//! answers is remembered instead. The memory is bounded (`capacity` conversations, each
//! forgotten after `ttl` without a turn, the oldest first when full).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

/// Bytes of a raw prompt that make its key.
const PROMPT_KEY_BYTES: usize = 2048;

/// What happened to a request's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The remembered target goes first.
    Kept,
    /// It stands lower than the first choice or is saturated: the strategy's order stands.
    Moved,
    /// Nothing remembered (a new conversation): the strategy's order stands.
    New,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Kept => "kept",
            Outcome::Moved => "moved",
            Outcome::New => "new",
        }
    }
}

/// Puts `remembered` (an index into the targets) first in `order` when its priority equals
/// the first choice's and it has fewer than `max_in_flight` requests in flight.
pub fn apply(
    order: &mut Vec<usize>,
    remembered: Option<usize>,
    priority: &[i64],
    in_flight: &[u64],
    max_in_flight: u64,
) -> Outcome {
    let Some(r) = remembered else {
        return Outcome::New;
    };
    let Some(&first) = order.first() else {
        return Outcome::New;
    };
    let Some(at) = order.iter().position(|&i| i == r) else {
        return Outcome::Moved;
    };
    if priority[r] != priority[first] || in_flight[r] >= max_in_flight {
        return Outcome::Moved;
    }
    order.remove(at);
    order.insert(0, r);
    Outcome::Kept
}

#[derive(Deserialize)]
struct Role<'a> {
    #[serde(borrow, default)]
    role: Option<&'a str>,
}

/// The key of the conversation a request belongs to: `handle`, then the body's `tools`,
/// `system`, `instructions` and leading messages up to the first user message (or the
/// first bytes of its `prompt`), each given as raw JSON; `None` when it has neither
/// messages nor a prompt.
pub fn key<'a>(handle: &str, field: impl Fn(&str) -> Option<&'a [u8]>) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    handle.hash(&mut h);
    for name in ["tools", "system", "instructions"] {
        if let Some(v) = field(name) {
            name.hash(&mut h);
            v.hash(&mut h);
        }
    }
    if let Some(messages) = field("messages") {
        let list: Vec<&RawValue> = serde_json::from_slice(messages).ok()?;
        let mut any = false;
        for m in list {
            m.get().hash(&mut h);
            any = true;
            let role: Role<'_> = serde_json::from_str(m.get()).unwrap_or(Role { role: None });
            if role.role == Some("user") {
                break;
            }
        }
        return any.then(|| h.finish());
    }
    let prompt = field("prompt").or_else(|| field("input"))?;
    prompt[..prompt.len().min(PROMPT_KEY_BYTES)].hash(&mut h);
    Some(h.finish())
}

/// Which target served each recent conversation.
#[derive(Debug)]
pub struct Affinity {
    map: Mutex<HashMap<u64, (Arc<str>, Instant)>>,
    capacity: usize,
    ttl: Duration,
}

impl Affinity {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Affinity {
            map: Mutex::new(HashMap::new()),
            capacity,
            ttl,
        }
    }

    /// Whether it remembers anything at all (capacity 0 turns affinity off).
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The target (key) that served conversation `key`, if recent.
    pub fn get(&self, key: u64, now: Instant) -> Option<Arc<str>> {
        let map = self.map.lock().ok()?;
        map.get(&key)
            .filter(|(_, at)| now.duration_since(*at) < self.ttl)
            .map(|(t, _)| t.clone())
    }

    /// Remembers that `target` served conversation `key`.
    pub fn set(&self, key: u64, target: Arc<str>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.capacity && !map.contains_key(&key) {
            // Forget the expired, then the oldest eighth.
            map.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
            if map.len() >= self.capacity {
                let mut ages: Vec<(Instant, u64)> =
                    map.iter().map(|(k, (_, at))| (*at, *k)).collect();
                ages.sort_unstable();
                for (_, k) in ages.iter().take((self.capacity / 8).max(1)) {
                    map.remove(k);
                }
            }
        }
        map.insert(key, (target, now));
    }

    /// Conversations remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_target_goes_first_unless_it_stands_lower_or_is_saturated() {
        let prio = [0, 0, 1];
        let mut o = vec![1, 0, 2];
        assert_eq!(apply(&mut o, Some(0), &prio, &[0, 0, 0], 4), Outcome::Kept);
        assert_eq!(o, [0, 1, 2]);
        // A fallback (a worse priority) is not promoted.
        let mut o = vec![0, 1, 2];
        assert_eq!(apply(&mut o, Some(2), &prio, &[0, 0, 0], 4), Outcome::Moved);
        assert_eq!(o, [0, 1, 2]);
        // Saturated: the strategy's order stands.
        let mut o = vec![1, 0, 2];
        assert_eq!(apply(&mut o, Some(0), &prio, &[4, 0, 0], 4), Outcome::Moved);
        assert_eq!(o, [1, 0, 2]);
        // Nothing remembered.
        let mut o = vec![1, 0];
        assert_eq!(apply(&mut o, None, &prio, &[0, 0, 0], 4), Outcome::New);
    }

    /// Each member of `v` as raw JSON, as the gateway's body scan gives them.
    fn body(v: serde_json::Value) -> impl Fn(&str) -> Option<&'static [u8]> {
        let members: Vec<(String, &'static [u8])> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, x)| (k.clone(), &*x.to_string().into_bytes().leak()))
            .collect();
        move |name| members.iter().find(|(k, _)| k == name).map(|(_, b)| *b)
    }

    #[test]
    fn every_turn_of_a_conversation_has_its_key_and_another_conversation_another() {
        let sys = serde_json::json!({"role": "system", "content": "Be brief."});
        let q1 = serde_json::json!({"role": "user", "content": "Hi, I am Ann."});
        let turn1 = serde_json::json!({"messages": [sys, q1]});
        let turn3 = serde_json::json!({"messages": [sys, q1,
            {"role": "assistant", "content": "Hello Ann."},
            {"role": "user", "content": "What is my name?"}]});
        let other =
            serde_json::json!({"messages": [sys, {"role": "user", "content": "Hi, I am Bob."}]});
        let k1 = key("local", body(turn1.clone()));
        assert!(k1.is_some());
        assert_eq!(k1, key("local", body(turn3)));
        assert_ne!(k1, key("local", body(other)));
        assert_ne!(
            k1,
            key("remote", body(turn1.clone())),
            "the handle is part of it"
        );
        let mut with_tools = turn1.clone();
        with_tools["tools"] = serde_json::json!([{"type": "function"}]);
        assert_ne!(k1, key("local", body(with_tools)));
        assert_eq!(key("local", body(serde_json::json!({"model": "x"}))), None);
        let p = serde_json::json!({"prompt": "Once upon a time"});
        assert!(key("local", body(p)).is_some());
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_old() {
        let a = Affinity::new(8, Duration::from_secs(60));
        let t0 = Instant::now();
        for k in 0..8u64 {
            a.set(k, Arc::from("x"), t0 + Duration::from_millis(k));
        }
        assert_eq!(a.len(), 8);
        a.set(100, Arc::from("y"), t0 + Duration::from_millis(100));
        assert_eq!(a.len(), 8, "the oldest went");
        assert_eq!(a.get(0, t0), None);
        assert_eq!(
            a.get(100, t0 + Duration::from_secs(1)).as_deref(),
            Some("y")
        );
        assert_eq!(a.get(100, t0 + Duration::from_secs(61)), None, "expired");
        assert!(!Affinity::new(0, Duration::from_secs(1)).enabled());
    }
}
