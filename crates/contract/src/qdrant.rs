//! The subset of Qdrant's REST API that the vector store speaks (and its own clients, such
//! as the memory service, send): request bodies, filters, point ids and the answer envelope.
//!
//! Shapes follow Qdrant 1.18's OpenAPI schema; where Qdrant accepts several spellings (a
//! condition list or one condition, a plain vector or `{"": vector}`), so do these types.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The version `GET /` reports; qdrant-client warns when its own minor version is more than
/// one away.
pub const VERSION: &str = "1.18.0";
/// The title `GET /` reports.
pub const TITLE: &str = "qdrant - vector search engine";

/// A point id: an unsigned integer or a UUID (kept hyphenated and in lower case). Integers
/// order before UUIDs, as in Qdrant's scroll.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum PointId {
    Num(u64),
    Uuid(String),
}

impl PointId {
    /// A UUID in any of its usual spellings (hyphenated or not, any case), normalised.
    pub fn uuid(text: &str) -> Option<PointId> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let hyphens_ok = text.len() == 32
            || (text.len() == 36
                && text
                    .char_indices()
                    .all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23)));
        if hex.len() != 32 || !hyphens_ok || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let h = hex.to_ascii_lowercase();
        Some(PointId::Uuid(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )))
    }

    /// The id as stored: the integer's digits, or the hyphenated UUID.
    pub fn key(&self) -> String {
        match self {
            PointId::Num(n) => n.to_string(),
            PointId::Uuid(u) => u.clone(),
        }
    }

    /// Back from [`PointId::key`].
    pub fn from_key(key: &str) -> Option<PointId> {
        match key.parse::<u64>() {
            Ok(n) => Some(PointId::Num(n)),
            Err(_) => PointId::uuid(key),
        }
    }
}

impl<'de> Deserialize<'de> for PointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n.as_u64().map(PointId::Num).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "point id {n} is not an unsigned integer or a UUID"
                ))
            }),
            Value::String(s) => PointId::uuid(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "Unable to parse UUID: {s}; a point id is an unsigned integer or a UUID"
                ))
            }),
            other => Err(serde::de::Error::custom(format!(
                "point id {other} is not an unsigned integer or a UUID"
            ))),
        }
    }
}

/// Accepts one item or a list.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match Option::<OneOrMany<T>>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::Many(v)) => v,
        Some(OneOrMany::One(t)) => vec![t],
    })
}

/// A filter: every `must`, at least one `should` (when there are any), no `must_not`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub must: Vec<Condition>,
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub should: Vec<Condition>,
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub must_not: Vec<Condition>,
    /// At least this many of `should` (`{"conditions":[…],"min_count":n}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_should: Option<MinShould>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinShould {
    pub conditions: Vec<Condition>,
    pub min_count: usize,
}

/// One condition of a filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Condition {
    Field(FieldCondition),
    HasId(HasId),
    IsEmpty(IsEmpty),
    IsNull(IsNull),
    Nested(Box<Filter>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HasId {
    pub has_id: Vec<PointId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsEmpty {
    pub is_empty: FieldKey,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsNull {
    pub is_null: FieldKey,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldKey {
    pub key: String,
}

/// A condition on a payload field, by dotted path (`metadata.file_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldCondition {
    pub key: String,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<Match>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,
}

/// `{"value": v}`, `{"any": [...]}`, `{"except": [...]}` or `{"text": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Match {
    Value { value: Value },
    Any { any: Vec<Value> },
    Except { except: Vec<Value> },
    Text { text: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<f64>,
}

impl FieldCondition {
    /// `key == value`.
    pub fn equals(key: &str, value: impl Into<Value>) -> Condition {
        Condition::Field(FieldCondition {
            key: key.to_owned(),
            matches: Some(Match::Value {
                value: value.into(),
            }),
            range: None,
        })
    }
}

/// `PUT /collections/{c}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateCollection {
    pub vectors: Value,
    /// Everything else (`hnsw_config`, `on_disk_payload`, …), kept and echoed.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The one (unnamed) vector a collection holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorParams {
    pub size: u64,
    pub distance: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `PUT /collections/{c}/index`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateIndex {
    pub field_name: String,
    #[serde(default)]
    pub field_schema: Option<Value>,
}

/// A vector as a point carries it: a list, or the unnamed vector of a map (`{"": [...]}`).
///
/// Read straight from the JSON (the first token decides), not buffered and retried as an
/// untagged enum would: an upsert of thousands of vectors stays one pass and one `Vec<f32>`
/// per vector.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VectorInput {
    Plain(Vec<f32>),
    Named(Map<String, Value>),
}

impl<'de> Deserialize<'de> for VectorInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = VectorInput;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a vector (a list of numbers) or a map of named vectors")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(65_536));
                while let Some(x) = seq.next_element::<f32>()? {
                    v.push(x);
                }
                Ok(VectorInput::Plain(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                Map::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(VectorInput::Named)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// One point of an upsert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointStruct {
    pub id: PointId,
    pub vector: VectorInput,
    #[serde(default)]
    pub payload: Option<Map<String, Value>>,
}

/// Columns of an upsert: `{"ids": [...], "vectors": [...], "payloads": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub ids: Vec<PointId>,
    pub vectors: Vec<VectorInput>,
    #[serde(default)]
    pub payloads: Option<Vec<Option<Map<String, Value>>>>,
}

/// `PUT /collections/{c}/points`: a list of points or a batch.
///
/// Read in one pass by its key (`points` or `batch`; other keys such as `shard_key` are
/// ignored), so a large upsert is never buffered whole to try each shape in turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Upsert {
    Points { points: Vec<PointStruct> },
    Batch { batch: Batch },
}

impl<'de> Deserialize<'de> for Upsert {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Upsert;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with `points` (a list of points) or `batch`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value = match key.as_str() {
                        "points" => Upsert::Points {
                            points: map.next_value()?,
                        },
                        "batch" => Upsert::Batch {
                            batch: map.next_value()?,
                        },
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if found.is_some() {
                        return Err(serde::de::Error::custom(
                            "an upsert holds either `points` or `batch`, not both",
                        ));
                    }
                    found = Some(value);
                }
                found.ok_or_else(|| serde::de::Error::custom("missing field `points` (or `batch`)"))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// What to return of a payload: all, none, only some keys, or all but some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WithPayload {
    All(bool),
    Include(Vec<String>),
    Fields {
        #[serde(default)]
        include: Option<Vec<String>>,
        #[serde(default)]
        exclude: Option<Vec<String>>,
    },
}

/// What a query looks for: a vector, `{"nearest": vector}`, or the vector of a stored point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueryInput {
    Vector(Vec<f32>),
    Point(PointId),
    Nearest { nearest: NearestInput },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NearestInput {
    Vector(Vec<f32>),
    Point(PointId),
}

/// `POST /collections/{c}/points/query`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QueryRequest {
    #[serde(default)]
    pub query: Option<QueryInput>,
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub with_payload: Option<WithPayload>,
    #[serde(default)]
    pub with_vector: Option<Value>,
    #[serde(default)]
    pub score_threshold: Option<f32>,
    /// The vector name: only the unnamed vector (`""`) exists.
    #[serde(default)]
    pub using: Option<String>,
    /// Stages before the query (hybrid search): not supported; refused when given.
    #[serde(default)]
    pub prefetch: Option<Value>,
    #[serde(default)]
    pub params: Option<Value>,
}

/// `POST /collections/{c}/points/search` (the older search route).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRequest {
    pub vector: VectorInput,
    #[serde(default)]
    pub filter: Option<Filter>,
    pub limit: u64,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub with_payload: Option<WithPayload>,
    #[serde(default)]
    pub with_vector: Option<Value>,
    #[serde(default)]
    pub score_threshold: Option<f32>,
    #[serde(default)]
    pub params: Option<Value>,
}

/// `POST /collections/{c}/points/scroll`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrollRequest {
    #[serde(default)]
    pub offset: Option<PointId>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub with_payload: Option<WithPayload>,
    #[serde(default)]
    pub with_vector: Option<Value>,
}

/// `POST /collections/{c}/points/count`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CountRequest {
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub exact: Option<bool>,
}

/// `POST /collections/{c}/points/delete`: by ids or by filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeletePoints {
    Ids { points: Vec<PointId> },
    Filter { filter: Filter },
}

/// `POST /collections/{c}/points` (retrieve by ids).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrieveRequest {
    pub ids: Vec<PointId>,
    #[serde(default)]
    pub with_payload: Option<WithPayload>,
    #[serde(default)]
    pub with_vector: Option<Value>,
}

/// `POST /collections/{c}/points/payload` and `PUT …/payload`: set (merge) or overwrite the
/// payload of the points given by id or filter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetPayload {
    pub payload: Map<String, Value>,
    #[serde(default)]
    pub points: Option<Vec<PointId>>,
    #[serde(default)]
    pub filter: Option<Filter>,
}

/// A point with its score, as queries answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredPoint {
    pub id: PointId,
    pub version: u64,
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// A point without a score, as scroll and retrieve answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: PointId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// The envelope of every answer but `GET /`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response<T> {
    pub result: T,
    pub status: String,
    pub time: f64,
}

/// The envelope of an error: `{"status":{"error":"…"},"time":…}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub status: ErrorStatus,
    pub time: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_integers_or_normalised_uuids() {
        let id: PointId = serde_json::from_value(json!(7)).unwrap_or(PointId::Num(0));
        assert_eq!(id, PointId::Num(7));
        let id: PointId = serde_json::from_value(json!("A0B1C2D3E4F5A6B7C8D9E0F1A2B3C4D5"))
            .unwrap_or(PointId::Num(0));
        assert_eq!(
            id,
            PointId::Uuid("a0b1c2d3-e4f5-a6b7-c8d9-e0f1a2b3c4d5".into())
        );
        assert!(serde_json::from_value::<PointId>(json!("not-a-uuid")).is_err());
        assert!(serde_json::from_value::<PointId>(json!(-1)).is_err());
        assert!(PointId::Num(u64::MAX) < PointId::Uuid("0".into()));
        assert_eq!(PointId::from_key("12"), Some(PointId::Num(12)));
    }

    #[test]
    fn open_webui_filters_parse() {
        let f: Filter = serde_json::from_value(json!({"must":[
            {"key":"tenant_id","match":{"value":"file-x"}},
            {"key":"metadata.file_id","match":{"any":["f","g"]}},
            {"has_id":["a0b1c2d3-e4f5-a6b7-c8d9-e0f1a2b3c4d5"]},
        ]}))
        .unwrap_or_default();
        assert_eq!(f.must.len(), 3);
        assert!(matches!(f.must[2], Condition::HasId(_)));
        let one: Filter = serde_json::from_value(json!({"should":{"key":"a","match":{"value":1}}}))
            .unwrap_or_default();
        assert_eq!(one.should.len(), 1);
        assert!(serde_json::from_value::<Filter>(json!({"must":[{"bogus":1}]})).is_err());
    }

    #[test]
    fn upserts_read_in_both_shapes_with_named_errors() {
        let text = r#"{"points":[{"id":1,"vector":[1,0.5],"payload":{"a":1}},{"id":2,"vector":{"":[0,1]}}],"shard_key":null}"#;
        let up: Upsert = serde_json::from_str(text).unwrap_or(Upsert::Points { points: vec![] });
        let Upsert::Points { points } = up else {
            panic!("not points")
        };
        assert_eq!(points[0].vector, VectorInput::Plain(vec![1.0, 0.5]));
        assert!(matches!(&points[1].vector, VectorInput::Named(m) if m.contains_key("")));
        let up: Upsert = serde_json::from_str(r#"{"batch":{"ids":[1,2],"vectors":[[1],[2]]}}"#)
            .unwrap_or(Upsert::Points { points: vec![] });
        assert!(matches!(up, Upsert::Batch { batch } if batch.vectors.len() == 2));
        // Round trip: what the memory service sends reads back the same.
        let sent = Upsert::Points {
            points: vec![PointStruct {
                id: PointId::Num(3),
                vector: VectorInput::Plain(vec![0.25]),
                payload: None,
            }],
        };
        let back: Result<Upsert, _> =
            serde_json::to_string(&sent).and_then(|t| serde_json::from_str(&t));
        assert_eq!(back.ok(), Some(sent));
        let err = |t: &str| {
            let de = &mut serde_json::Deserializer::from_str(t);
            serde_path_to_error::deserialize::<_, Upsert>(de)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("{}").contains("missing field `points`"));
        assert!(err(r#"{"points":[],"batch":{"ids":[],"vectors":[]}}"#).contains("not both"));
        let bad = err(r#"{"points":[{"id":1,"vector":[1,"x"]}]}"#);
        assert!(bad.starts_with("points[0].vector"), "{bad}");
        assert!(
            err(r#"{"points":[{"id":1,"vector":7}]}"#).contains("a vector (a list of numbers)")
        );
    }
}
