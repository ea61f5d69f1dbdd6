//! A point's payload as the collection holds it in memory: its top-level keys and values in
//! one boxed slice, in the order given.
//!
//! A JSON map (an insertion-ordered hash map) spends about 500 bytes on a one-key payload —
//! spare capacity, a hash table, the map's own header — which, beside a 384-dimension vector
//! of 1,536 bytes, is a third again. Payloads have few top-level keys and are read by key
//! (filters, indexes) or whole (answers), so a slice searched in order holds the same for a
//! fraction: nothing for an empty payload, one allocation of the entries otherwise. Nested
//! objects stay JSON maps.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload(Box<[(Box<str>, Value)]>);

impl Payload {
    /// The value of a top-level key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| &**k == key).map(|(_, v)| v)
    }

    /// Keys and values, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// Back to a JSON map (to answer with, or to merge into).
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect()
    }
}

impl From<Map<String, Value>> for Payload {
    fn from(map: Map<String, Value>) -> Payload {
        Payload(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v))
                .collect(),
        )
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_order_and_reads_by_key() {
        let map = json!({"z": 1, "a": {"b": [1, 2]}, "m": "x"});
        let Value::Object(map) = map else {
            panic!("an object")
        };
        let p = Payload::from(map.clone());
        assert_eq!(p.get("a"), Some(&json!({"b": [1, 2]})));
        assert_eq!(p.get("nope"), None);
        assert_eq!(
            p.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["z", "a", "m"]
        );
        assert_eq!(p.to_map(), map);
        assert_eq!(
            serde_json::to_string(&p).unwrap_or_default(),
            r#"{"z":1,"a":{"b":[1,2]},"m":"x"}"#
        );
        assert_eq!(Payload::from(Map::new()), Payload::default());
    }
}
