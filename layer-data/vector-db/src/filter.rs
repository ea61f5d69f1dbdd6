//! Qdrant's filter semantics over a point's id and JSON payload.
//!
//! A key is a dotted path into the payload (`metadata.file_id`; `tags[]` walks an array);
//! an array at the end of a path matches when any of its elements does, as in Qdrant.

use contract::qdrant::{Condition, FieldCondition, Filter, Match, PointId, Range};
use serde_json::Value;

use crate::payload::Payload;

/// Whether the point passes `filter`.
pub fn matches(filter: &Filter, id: &PointId, payload: &Payload) -> bool {
    filter.must.iter().all(|c| condition(c, id, payload))
        && (filter.should.is_empty() || filter.should.iter().any(|c| condition(c, id, payload)))
        && !filter.must_not.iter().any(|c| condition(c, id, payload))
        && filter.min_should.as_ref().is_none_or(|m| {
            m.conditions
                .iter()
                .filter(|c| condition(c, id, payload))
                .count()
                >= m.min_count
        })
}

fn condition(c: &Condition, id: &PointId, payload: &Payload) -> bool {
    match c {
        Condition::Field(f) => field(f, payload),
        Condition::HasId(h) => h.has_id.contains(id),
        Condition::IsEmpty(e) => values(payload, &e.is_empty.key).iter().all(|v| v.is_null()),
        Condition::IsNull(n) => {
            let found = values_raw(payload, &n.is_null.key);
            !found.is_empty() && found.iter().all(|v| v.is_null())
        }
        Condition::Nested(f) => matches(f, id, payload),
    }
}

fn field(f: &FieldCondition, payload: &Payload) -> bool {
    let found = values(payload, &f.key);
    let matched = match &f.matches {
        None => true,
        Some(Match::Value { value }) => found.iter().any(|v| same(v, value)),
        Some(Match::Any { any }) => found.iter().any(|v| any.iter().any(|w| same(v, w))),
        Some(Match::Except { except }) => !found.iter().any(|v| except.iter().any(|w| same(v, w))),
        Some(Match::Text { text }) => found
            .iter()
            .any(|v| v.as_str().is_some_and(|s| s.contains(text.as_str()))),
    };
    matched
        && f.range
            .as_ref()
            .is_none_or(|r| found.iter().any(|v| in_range(v, r)))
}

/// Equality as Qdrant's keyword, integer and bool matches see it.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn in_range(v: &Value, r: &Range) -> bool {
    let Some(x) = v.as_f64() else {
        return false;
    };
    r.gt.is_none_or(|b| x > b)
        && r.gte.is_none_or(|b| x >= b)
        && r.lt.is_none_or(|b| x < b)
        && r.lte.is_none_or(|b| x <= b)
}

/// The values at `key`, arrays at the end flattened (empty when the path is missing).
pub fn values<'a>(payload: &'a Payload, key: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for v in values_raw(payload, key) {
        match v {
            Value::Array(items) => out.extend(items.iter()),
            other => out.push(other),
        }
    }
    out
}

/// The values at `key` as they are (an array stays one value).
fn values_raw<'a>(payload: &'a Payload, key: &str) -> Vec<&'a Value> {
    let mut parts = key.split('.');
    let Some(first) = parts.next() else {
        return Vec::new();
    };
    let mut current: Vec<&Value> = step(|k| payload.get(k), first);
    for part in parts {
        let mut next = Vec::new();
        for v in current {
            if let Value::Object(m) = v {
                next.extend(step(|k| m.get(k), part));
            }
        }
        current = next;
    }
    current
}

/// One path segment: `name` or `name[]` (each element of the array), looked up with `get`.
fn step<'a>(get: impl Fn(&str) -> Option<&'a Value>, part: &str) -> Vec<&'a Value> {
    match part.strip_suffix("[]") {
        Some(name) => match get(name) {
            Some(Value::Array(items)) => items.iter().collect(),
            _ => Vec::new(),
        },
        None => get(part).into_iter().collect(),
    }
}

/// The keys a payload index stores for a value: its JSON text (so `"1"` and `1` differ).
pub fn index_key(v: &Value) -> Option<String> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// Values that must match for the filter to pass, from a top-level `must` condition on
/// `key`: what an index on `key` can answer. `None` when no such condition exists.
pub fn required_values<'a>(filter: &'a Filter, key: &str) -> Option<Vec<&'a Value>> {
    filter.must.iter().find_map(|c| match c {
        Condition::Field(FieldCondition {
            key: k,
            matches: Some(m),
            ..
        }) if k == key => match m {
            Match::Value { value } => Some(vec![value]),
            Match::Any { any } => Some(any.iter().collect()),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(filter: Value, payload: Value) -> bool {
        let f: Filter = serde_json::from_value(filter).unwrap_or_default();
        let p = Payload::from(payload.as_object().cloned().unwrap_or_default());
        matches(&f, &PointId::Num(1), &p)
    }

    #[test]
    fn open_webui_conditions() {
        let p = json!({"tenant_id":"file-1","metadata":{"file_id":"f","hash":"h","page":3},"text":"hello world"});
        assert!(check(
            json!({"must":[{"key":"tenant_id","match":{"value":"file-1"}}]}),
            p.clone()
        ));
        assert!(!check(
            json!({"must":[{"key":"tenant_id","match":{"value":"file-2"}}]}),
            p.clone()
        ));
        assert!(check(
            json!({"must":[{"key":"metadata.file_id","match":{"any":["g","f"]}}]}),
            p.clone()
        ));
        assert!(check(
            json!({"should":[{"key":"metadata.hash","match":{"value":"x"}},{"key":"metadata.hash","match":{"value":"h"}}]}),
            p.clone()
        ));
        assert!(!check(
            json!({"must_not":[{"key":"metadata.hash","match":{"value":"h"}}]}),
            p.clone()
        ));
        assert!(check(json!({"must":[{"has_id":[1, 2]}]}), p.clone()));
        assert!(!check(json!({"must":[{"has_id":[2]}]}), p.clone()));
        assert!(check(
            json!({"must":[{"key":"metadata.page","range":{"gte":3,"lt":4}}]}),
            p.clone()
        ));
        assert!(check(
            json!({"must":[{"key":"metadata.page","match":{"value":3}}]}),
            p.clone()
        ));
        assert!(!check(
            json!({"must":[{"key":"metadata.page","match":{"value":"3"}}]}),
            p.clone()
        ));
        assert!(check(
            json!({"must":[{"key":"text","match":{"text":"world"}}]}),
            p.clone()
        ));
        assert!(check(
            json!({"must":[{"is_empty":{"key":"metadata.missing"}}]}),
            p.clone()
        ));
        assert!(check(
            json!({"must":[{"must_not":[{"key":"tenant_id","match":{"value":"x"}}]}]}),
            p
        ));
    }

    #[test]
    fn arrays_match_by_element() {
        let p = json!({"tags":["a","b"],"items":[{"k":1},{"k":2}]});
        assert!(check(
            json!({"must":[{"key":"tags","match":{"value":"b"}}]}),
            p.clone()
        ));
        assert!(check(
            json!({"must":[{"key":"items[].k","match":{"value":2}}]}),
            p.clone()
        ));
        assert!(!check(
            json!({"must":[{"key":"tags","match":{"except":["a"]}}]}),
            p
        ));
    }
}
