//! Memories: what they are (a text, who it belongs to, when, its history) and what can be
//! done with them. Each memory is one point in the vector store: the vector of its text, and
//! a payload holding the text (`data`), its SHA-256 (`hash`), the scope (`user_id`,
//! `agent_id`, `run_id`), `role`/`actor_id` when it came from a message, the caller's
//! `metadata`, the times, and its `history`.
//!
//! Writes go one at a time (one lock), so two near-duplicates sent at once still end as one
//! memory.

use contract::qdrant::{DeletePoints, FieldCondition, Filter, PointId, Record};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::upstream::{Upstreams, point};

/// Who memories belong to; at least one part is set for every write and search.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Scope {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
}

impl Scope {
    fn parts(&self) -> [(&'static str, Option<&String>); 3] {
        [
            ("user_id", self.user_id.as_ref()),
            ("agent_id", self.agent_id.as_ref()),
            ("run_id", self.run_id.as_ref()),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.parts().iter().all(|(_, v)| v.is_none())
    }

    /// Refuses an empty scope (and empty ids), as mem0 does.
    pub fn required(&self) -> Result<(), Error> {
        if self
            .parts()
            .iter()
            .any(|(_, v)| v.is_some_and(|s| s.is_empty()))
        {
            return Err(Error::BadRequest(
                "user_id, agent_id and run_id must not be empty strings".into(),
            ));
        }
        if self.is_empty() {
            return Err(Error::BadRequest(
                "At least one identifier (user_id, agent_id, run_id) is required.".into(),
            ));
        }
        Ok(())
    }

    /// The filter that keeps this scope's memories.
    pub fn filter(&self) -> Filter {
        Filter {
            must: self
                .parts()
                .iter()
                .filter_map(|(k, v)| v.map(|v| FieldCondition::equals(k, v.clone())))
                .collect(),
            ..Default::default()
        }
    }

    /// Whether a stored payload belongs to this scope (every part given matches).
    pub fn holds(&self, payload: &Map<String, Value>) -> bool {
        self.parts()
            .iter()
            .all(|(k, v)| v.is_none_or(|v| payload.get(*k).and_then(Value::as_str) == Some(v)))
    }
}

/// A memory as the API shows it (mem0's `MemoryItem`).
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub id: String,
    pub memory: String,
    pub hash: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

fn text(p: &Map<String, Value>, k: &str) -> Option<String> {
    p.get(k).and_then(Value::as_str).map(str::to_owned)
}

impl Item {
    fn from_payload(id: &PointId, p: &Map<String, Value>, score: Option<f32>) -> Item {
        Item {
            id: id.key(),
            memory: text(p, "data").unwrap_or_default(),
            hash: text(p, "hash").unwrap_or_default(),
            created_at: text(p, "created_at"),
            updated_at: text(p, "updated_at"),
            user_id: text(p, "user_id"),
            agent_id: text(p, "agent_id"),
            run_id: text(p, "run_id"),
            role: text(p, "role"),
            actor_id: text(p, "actor_id"),
            metadata: p
                .get("metadata")
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty())
                .cloned(),
            score,
        }
    }
}

/// What an add did to one memory (mem0's events).
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub id: String,
    pub memory: String,
    /// `ADD`, `UPDATE` (a near-duplicate was replaced), or `NONE` (already stored as is).
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// One text to remember, with where it came from.
#[derive(Debug, Clone)]
pub struct NewMemory {
    pub text: String,
    pub role: Option<String>,
    pub actor_id: Option<String>,
}

/// The store's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duplicate_threshold: f32,
    pub max_results: usize,
    /// History entries kept per memory (the first and the latest).
    pub max_history: usize,
}

/// The memories, over the vector store and the gateway.
#[derive(Debug)]
pub struct Memories {
    pub up: Upstreams,
    settings: Settings,
    writes: tokio::sync::Mutex<()>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn history_entry(
    memory_id: &str,
    old: Option<&str>,
    new: Option<&str>,
    event: &str,
    at: &str,
) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "memory_id": memory_id,
        "old_memory": old,
        "new_memory": new,
        "event": event,
        "created_at": at,
        "updated_at": at,
        "is_deleted": false,
    })
}

impl Memories {
    pub fn new(up: Upstreams, settings: Settings) -> Memories {
        Memories {
            up,
            settings,
            writes: tokio::sync::Mutex::new(()),
        }
    }

    fn cap(&self, limit: Option<usize>, default: usize) -> usize {
        limit.unwrap_or(default).clamp(1, self.settings.max_results)
    }

    fn push_history(&self, payload: &mut Map<String, Value>, entry: Value) {
        let mut h = payload
            .get("history")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        h.push(entry);
        let keep = self.settings.max_history.max(2);
        if h.len() > keep {
            // The first entry (the memory's birth) and the latest ones.
            let tail = h.split_off(h.len() - (keep - 1));
            h.truncate(1);
            h.extend(tail);
        }
        payload.insert("history".into(), Value::Array(h));
    }

    /// Stores `texts` for `scope`: a near-duplicate of a memory of the same scope updates it,
    /// the same text again changes nothing, anything else is a new memory.
    pub async fn add(
        &self,
        texts: Vec<NewMemory>,
        scope: &Scope,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Vec<Change>, Error> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let strings: Vec<String> = texts.iter().map(|t| t.text.clone()).collect();
        let vectors = self.up.embed(&strings).await?;
        let _one_writer = self.writes.lock().await;
        self.up
            .ensure_collection(vectors.first().map_or(0, Vec::len))
            .await?;
        let mut changes = Vec::with_capacity(texts.len());
        for (new, vector) in texts.into_iter().zip(vectors) {
            let nearest = self
                .up
                .query(
                    vector.clone(),
                    scope.filter(),
                    1,
                    Some(self.settings.duplicate_threshold),
                )
                .await?;
            let at = now();
            let change = match nearest.into_iter().next() {
                Some(hit) => {
                    let mut payload = hit.payload.unwrap_or_default();
                    let old = text(&payload, "data").unwrap_or_default();
                    let id = hit.id.key();
                    if old == new.text && metadata.is_none() {
                        Change {
                            id,
                            memory: old,
                            event: "NONE",
                            previous_memory: None,
                            role: new.role,
                        }
                    } else {
                        payload.insert("data".into(), json!(new.text));
                        payload.insert("hash".into(), json!(digest(&new.text)));
                        payload.insert("updated_at".into(), json!(at));
                        if let Some(m) = &metadata {
                            let merged = payload.entry("metadata").or_insert_with(|| json!({}));
                            if let Some(obj) = merged.as_object_mut() {
                                obj.extend(m.clone());
                            }
                        }
                        self.push_history(
                            &mut payload,
                            history_entry(&id, Some(&old), Some(&new.text), "UPDATE", &at),
                        );
                        self.up.upsert(vec![point(hit.id, vector, payload)]).await?;
                        Change {
                            id,
                            memory: new.text,
                            event: "UPDATE",
                            previous_memory: Some(old),
                            role: new.role,
                        }
                    }
                }
                None => {
                    let id = uuid::Uuid::new_v4().to_string();
                    let mut payload = Map::new();
                    payload.insert("data".into(), json!(new.text));
                    payload.insert("hash".into(), json!(digest(&new.text)));
                    for (k, v) in scope.parts() {
                        if let Some(v) = v {
                            payload.insert(k.into(), json!(v));
                        }
                    }
                    if let Some(r) = &new.role {
                        payload.insert("role".into(), json!(r));
                    }
                    if let Some(a) = &new.actor_id {
                        payload.insert("actor_id".into(), json!(a));
                    }
                    payload.insert(
                        "metadata".into(),
                        Value::Object(metadata.clone().unwrap_or_default()),
                    );
                    payload.insert("created_at".into(), json!(at));
                    payload.insert("updated_at".into(), json!(at));
                    self.push_history(
                        &mut payload,
                        history_entry(&id, None, Some(&new.text), "ADD", &at),
                    );
                    let pid = PointId::Uuid(id.clone());
                    self.up.upsert(vec![point(pid, vector, payload)]).await?;
                    Change {
                        id,
                        memory: new.text,
                        event: "ADD",
                        previous_memory: None,
                        role: new.role,
                    }
                }
            };
            changes.push(change);
        }
        Ok(changes)
    }

    /// The memories of `scope` (every memory for an empty scope), oldest first.
    pub async fn list(&self, scope: &Scope, limit: Option<usize>) -> Result<Vec<Item>, Error> {
        let limit = self.cap(limit, self.settings.max_results);
        let filter = (!scope.is_empty()).then(|| scope.filter());
        let mut items = Vec::new();
        let mut offset = None;
        loop {
            let page = self
                .up
                .scroll(filter.clone(), offset, limit.min(256))
                .await?;
            items.extend(page.points.iter().map(|r| {
                Item::from_payload(&r.id, r.payload.as_ref().unwrap_or(&Map::new()), None)
            }));
            offset = page.next_page_offset;
            if offset.is_none() || items.len() >= limit {
                break;
            }
        }
        items.truncate(limit);
        items.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(items)
    }

    /// The memories of `scope` nearest in meaning to `query`, best first.
    pub async fn search(
        &self,
        query: &str,
        scope: &Scope,
        metadata: &Map<String, Value>,
        limit: Option<usize>,
        threshold: Option<f32>,
    ) -> Result<Vec<Item>, Error> {
        let vector = self
            .up
            .embed(&[query.to_owned()])
            .await?
            .pop()
            .unwrap_or_default();
        let mut filter = scope.filter();
        for (k, v) in metadata {
            filter
                .must
                .push(FieldCondition::equals(&format!("metadata.{k}"), v.clone()));
        }
        let limit = self.cap(limit, 100);
        let hits = self.up.query(vector, filter, limit, threshold).await?;
        Ok(hits
            .iter()
            .map(|h| {
                Item::from_payload(
                    &h.id,
                    h.payload.as_ref().unwrap_or(&Map::new()),
                    Some(h.score),
                )
            })
            .collect())
    }

    async fn record(&self, id: &str, scope: &Scope) -> Result<Record, Error> {
        let missing = || Error::NotFound(id.to_owned());
        let pid = PointId::uuid(id).ok_or_else(missing)?;
        let r = self.up.get(&pid).await?.ok_or_else(missing)?;
        if !scope.holds(r.payload.as_ref().unwrap_or(&Map::new())) {
            return Err(missing());
        }
        Ok(r)
    }

    /// One memory (of `scope`, when one is given).
    pub async fn get(&self, id: &str, scope: &Scope) -> Result<Item, Error> {
        let r = self.record(id, scope).await?;
        Ok(Item::from_payload(
            &r.id,
            r.payload.as_ref().unwrap_or(&Map::new()),
            None,
        ))
    }

    /// A memory's history, oldest first.
    pub async fn history(&self, id: &str, scope: &Scope) -> Result<Vec<Value>, Error> {
        let r = self.record(id, scope).await?;
        Ok(r.payload
            .as_ref()
            .and_then(|p| p.get("history"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Changes a memory's text (re-embedded) and/or merges into its metadata.
    pub async fn update(
        &self,
        id: &str,
        scope: &Scope,
        new_text: Option<String>,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Item, Error> {
        let vector = match &new_text {
            Some(t) => Some(self.up.embed(std::slice::from_ref(t)).await?.remove(0)),
            None => None,
        };
        let _one_writer = self.writes.lock().await;
        let r = self.record(id, scope).await?;
        let mut payload = r.payload.unwrap_or_default();
        let at = now();
        if let Some(t) = &new_text {
            let old = text(&payload, "data").unwrap_or_default();
            payload.insert("data".into(), json!(t));
            payload.insert("hash".into(), json!(digest(t)));
            self.push_history(
                &mut payload,
                history_entry(id, Some(&old), Some(t), "UPDATE", &at),
            );
        }
        if let Some(m) = metadata {
            let merged = payload.entry("metadata").or_insert_with(|| json!({}));
            if let Some(obj) = merged.as_object_mut() {
                obj.extend(m);
            }
        }
        payload.insert("updated_at".into(), json!(at));
        let vector = match vector.or(r.vector) {
            Some(v) => v,
            None => return Err(Error::vector_db("the stored memory has no vector")),
        };
        self.up
            .upsert(vec![point(r.id.clone(), vector, payload.clone())])
            .await?;
        Ok(Item::from_payload(&r.id, &payload, None))
    }

    /// Deletes one memory and its history.
    pub async fn delete(&self, id: &str, scope: &Scope) -> Result<(), Error> {
        let _one_writer = self.writes.lock().await;
        let r = self.record(id, scope).await?;
        self.up
            .delete(DeletePoints::Ids { points: vec![r.id] })
            .await
    }

    /// Deletes every memory of `scope`; how many there were.
    pub async fn delete_all(&self, scope: &Scope) -> Result<u64, Error> {
        let _one_writer = self.writes.lock().await;
        let n = self.up.count(scope.filter()).await?;
        self.up
            .delete(DeletePoints::Filter {
                filter: scope.filter(),
            })
            .await?;
        Ok(n)
    }

    /// Deletes every memory of everyone (the collection).
    pub async fn reset(&self) -> Result<(), Error> {
        let _one_writer = self.writes.lock().await;
        self.up.drop_collection().await
    }
}
