//! Small serde helpers shared by the wire types.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `Option<Option<T>>` that tells "absent" (outer `None`) from "explicitly `null`"
/// (`Some(None)`), so a `null` a client sent is written back as `null`.
pub(crate) mod nullable {
    use super::*;

    pub(crate) fn deserialize<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }

    pub(crate) fn serialize<T, S>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize,
        S: Serializer,
    {
        match v {
            Some(Some(inner)) => inner.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

/// A value that is either one item or a list of them (`"stop": "x"` or `"stop": ["x","y"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The items as a slice, whichever form was sent.
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(t) => std::slice::from_ref(t),
            OneOrMany::Many(v) => v,
        }
    }
}
