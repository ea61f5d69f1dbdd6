//! The collections: in memory for search, every change written to the database first.
//!
//! A write takes its collection's write lock (one writer at a time per collection), commits
//! to the database, then applies the change in memory under a short exclusive lock; so an
//! answered write is on disk, a failed one changed nothing, and searches never see a change
//! the database does not hold. At start everything is loaded back from the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::OwnedMutexGuard;

use contract::qdrant::{CreateCollection, Filter, PointId, VectorParams};
use docsdb::Db;
use docsdb::vectors::{self, StoredCollection, StoredPoint};
use serde_json::{Map, Value};

use crate::collection::{Collection, Step};
use crate::error::Error;
use crate::payload::Payload;
use crate::simd;

/// The limits a request is held to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_limit: usize,
    pub max_batch: usize,
    pub max_dim: usize,
    pub max_collections: usize,
    pub max_payload_bytes: usize,
    /// Collections of this many points search approximately when unfiltered (0: never).
    pub approximate_above: usize,
}

/// One collection: its writer lock and its data.
#[derive(Debug)]
pub struct Entry {
    write: Arc<tokio::sync::Mutex<()>>,
    data: RwLock<Collection>,
}

impl Entry {
    pub fn read(&self) -> RwLockReadGuard<'_, Collection> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn modify(&self) -> RwLockWriteGuard<'_, Collection> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A point ready to store: its id, unit vector and payload.
#[derive(Debug, Clone)]
pub struct NewPoint {
    pub id: PointId,
    pub vector: Vec<f32>,
    pub payload: Map<String, Value>,
}

/// Every collection.
#[derive(Debug)]
pub struct Store {
    db: Db,
    pub limits: Limits,
    collections: RwLock<HashMap<String, Arc<Entry>>>,
    /// Creating and deleting collections, one at a time.
    admin: tokio::sync::Mutex<()>,
}

impl Store {
    /// Loads every collection and point from `db`.
    pub async fn load(db: Db, limits: Limits) -> Result<Store, Error> {
        let mut map = HashMap::new();
        let mut points = 0usize;
        for c in vectors::collections(&db).await? {
            let mut coll = Collection::new(c.dim, c.config.clone());
            for (field, schema) in c.indexes {
                coll.add_index(&field, schema);
            }
            let mut bad = 0usize;
            vectors::points(&db, &c.name, |p| {
                match (
                    PointId::from_key(&p.id),
                    serde_json::from_str::<Map<String, Value>>(&p.payload),
                ) {
                    (Some(id), Ok(payload)) if p.vector.len() == c.dim => {
                        coll.upsert(id, &p.vector, Payload::from(payload));
                    }
                    _ => bad += 1,
                }
            })
            .await?;
            if bad > 0 {
                tracing::warn!(collection = %c.name, points = bad, "stored points that cannot be read were skipped");
            }
            // Built once on everything loaded, in the background (see
            // `build_graphs_in_background`), not at each size on the way.
            coll.set_approximate_above(limits.approximate_above);
            points += coll.len();
            map.insert(
                c.name,
                Arc::new(Entry {
                    write: Arc::new(tokio::sync::Mutex::new(())),
                    data: RwLock::new(coll),
                }),
            );
        }
        tracing::info!(collections = map.len(), points, db = %db.url(), "vector store loaded");
        Ok(Store {
            db,
            limits,
            collections: RwLock::new(map),
            admin: tokio::sync::Mutex::new(()),
        })
    }

    /// Builds the graph of every collection that needs one (after loading), off the write
    /// path: searches are exact meanwhile, writes go on.
    pub fn build_graphs_in_background(&self) {
        for (name, entry) in self.map().iter() {
            build_graph_if_due(name, entry);
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn map(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        self.collections.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Collection names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.map().keys().cloned().collect();
        names.sort();
        names
    }

    pub fn get(&self, name: &str) -> Result<Arc<Entry>, Error> {
        self.map()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoCollection(name.to_owned()))
    }

    /// The collection with its writer lock held; `NoCollection` also when it was deleted
    /// while this waited.
    async fn writer(&self, name: &str) -> Result<(Arc<Entry>, OwnedMutexGuard<()>), Error> {
        let entry = self.get(name)?;
        let guard = entry.write.clone().lock_owned().await;
        match self.map().get(name) {
            Some(now) if Arc::ptr_eq(now, &entry) => Ok((entry, guard)),
            _ => Err(Error::NoCollection(name.to_owned())),
        }
    }

    /// Points and vector bytes held, over every collection.
    pub fn totals(&self) -> (usize, usize) {
        self.map().values().fold((0, 0), |(n, b), e| {
            let c = e.read();
            (n + c.len(), b + c.vector_bytes())
        })
    }

    /// Creates a collection with one unnamed cosine vector.
    pub async fn create(&self, name: &str, req: CreateCollection) -> Result<(), Error> {
        check_name(name)?;
        let params: VectorParams = match serde_json::from_value(req.vectors.clone()) {
            Ok(p) => p,
            Err(_) => {
                return Err(Error::BadInput(
                    "`vectors` must be {\"size\": N, \"distance\": \"Cosine\"}; named and sparse vectors are not supported".into(),
                ));
            }
        };
        if params.distance != "Cosine" {
            return Err(Error::BadInput(format!(
                "distance `{}` is not supported; this store compares vectors by Cosine",
                params.distance
            )));
        }
        let dim = usize::try_from(params.size).unwrap_or(usize::MAX);
        if dim == 0 || dim > self.limits.max_dim {
            return Err(Error::BadInput(format!(
                "vector size {dim} is outside 1..={} (--max-dim)",
                self.limits.max_dim
            )));
        }
        let _admin = self.admin.lock().await;
        if self.map().contains_key(name) {
            return Err(Error::CollectionExists(name.to_owned()));
        }
        if self.map().len() >= self.limits.max_collections {
            return Err(Error::BadInput(format!(
                "the store holds its limit of {} collections (--max-collections)",
                self.limits.max_collections
            )));
        }
        let mut config = req.rest;
        config.insert("vectors".into(), req.vectors);
        let config = Value::Object(config);
        let stored = StoredCollection {
            name: name.to_owned(),
            dim,
            distance: params.distance,
            config: config.clone(),
            indexes: Vec::new(),
            created_at_ms: docsdb::now_ms(),
        };
        if !vectors::create_collection(&self.db, &stored).await? {
            return Err(Error::CollectionExists(name.to_owned()));
        }
        let entry = Arc::new(Entry {
            write: Arc::new(tokio::sync::Mutex::new(())),
            data: RwLock::new({
                let mut c = Collection::new(dim, config);
                c.set_approximate_above(self.limits.approximate_above);
                c
            }),
        });
        self.collections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), entry);
        Ok(())
    }

    /// Deletes a collection and its points; `false` when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, Error> {
        let _admin = self.admin.lock().await;
        let Ok(entry) = self.get(name) else {
            return Ok(false);
        };
        let _writer = entry.write.lock().await;
        let existed = vectors::delete_collection(&self.db, name).await?;
        self.collections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(existed)
    }

    /// Creates (or replaces) a payload index.
    pub async fn create_index(&self, name: &str, field: &str, schema: Value) -> Result<u64, Error> {
        if field.is_empty() {
            return Err(Error::BadInput("`field_name` is empty".into()));
        }
        let (entry, _writer) = self.writer(name).await?;
        vectors::set_index(&self.db, name, field, &schema).await?;
        let mut c = entry.modify();
        c.add_index(field, schema);
        c.operation += 1;
        Ok(c.operation)
    }

    pub async fn delete_index(&self, name: &str, field: &str) -> Result<u64, Error> {
        let (entry, _writer) = self.writer(name).await?;
        vectors::drop_index(&self.db, name, field).await?;
        let mut c = entry.modify();
        c.drop_index(field);
        c.operation += 1;
        Ok(c.operation)
    }

    /// Inserts or replaces points (all or none). Vectors are checked against the collection's
    /// dimension and normalised here.
    pub async fn upsert(&self, name: &str, mut points: Vec<NewPoint>) -> Result<u64, Error> {
        if points.len() > self.limits.max_batch {
            return Err(Error::BadInput(format!(
                "{} points in one request; the limit is {} (--max-batch)",
                points.len(),
                self.limits.max_batch
            )));
        }
        // The last of repeated ids wins, in the database as in memory.
        let mut seen = std::collections::HashSet::new();
        points.reverse();
        points.retain(|p| seen.insert(p.id.clone()));
        points.reverse();
        let dim = self.get(name)?.read().dim;
        let mut stored = Vec::with_capacity(points.len());
        for p in &mut points {
            if p.vector.len() != dim {
                return Err(Error::Dimension {
                    expected: dim,
                    got: p.vector.len(),
                });
            }
            if p.vector.iter().any(|x| !x.is_finite()) {
                return Err(Error::BadInput(format!(
                    "the vector of point {} holds a value that is not a finite number",
                    p.id.key()
                )));
            }
            simd::normalise(&mut p.vector);
            let payload = self.payload_text(&p.id.key(), &p.payload)?;
            stored.push(StoredPoint {
                id: p.id.key(),
                vector: p.vector.clone(),
                payload,
            });
        }
        let (entry, _writer) = self.writer(name).await?;
        let now_dim = entry.read().dim;
        if now_dim != dim {
            // Deleted and created again, with another size, while this waited.
            return Err(Error::Dimension {
                expected: now_dim,
                got: dim,
            });
        }
        vectors::upsert_points(&self.db, name, &stored).await?;
        let operation = {
            let mut c = entry.modify();
            for p in points {
                c.upsert(p.id, &p.vector, Payload::from(p.payload));
            }
            c.operation += 1;
            c.operation
        };
        build_graph_if_due(name, &entry);
        Ok(operation)
    }

    /// Deletes the points with these ids (missing ones are ignored).
    pub async fn delete_ids(&self, name: &str, ids: &[PointId]) -> Result<u64, Error> {
        let (entry, _writer) = self.writer(name).await?;
        self.remove(&entry, name, ids.to_vec()).await
    }

    /// Deletes the points that pass `filter`.
    pub async fn delete_filter(&self, name: &str, filter: &Filter) -> Result<u64, Error> {
        let (entry, _writer) = self.writer(name).await?;
        let ids: Vec<PointId> = {
            let c = entry.read();
            c.filtered(Some(filter))
                .into_iter()
                .map(|s| c.id(s).clone())
                .collect()
        };
        self.remove(&entry, name, ids).await
    }

    /// Removes `ids`; the caller holds the collection's writer lock.
    async fn remove(
        &self,
        entry: &Arc<Entry>,
        name: &str,
        ids: Vec<PointId>,
    ) -> Result<u64, Error> {
        let keys: Vec<String> = ids.iter().map(PointId::key).collect();
        vectors::delete_points(&self.db, name, &keys).await?;
        let operation = {
            let mut c = entry.modify();
            for id in &ids {
                c.remove(id);
            }
            c.operation += 1;
            c.operation
        };
        build_graph_if_due(name, entry);
        Ok(operation)
    }

    /// Sets payload keys (merged into each payload, or replacing it with `overwrite`) of the
    /// points given by ids or filter.
    pub async fn set_payload(
        &self,
        name: &str,
        payload: Map<String, Value>,
        ids: Option<&[PointId]>,
        filter: Option<&Filter>,
        overwrite: bool,
    ) -> Result<u64, Error> {
        let (entry, _writer) = self.writer(name).await?;
        // Slot, id and new payload, read under one lock; the writer lock keeps the slots
        // valid until they are applied below.
        let changed: Vec<(usize, String, Map<String, Value>)> = {
            let c = entry.read();
            let slots: Vec<usize> = match ids {
                Some(ids) => ids
                    .iter()
                    .map(|id| c.slot(id).ok_or_else(|| Error::NoPoint(id.key())))
                    .collect::<Result<_, _>>()?,
                None => c.filtered(filter),
            };
            slots
                .into_iter()
                .map(|s| {
                    let mut p = if overwrite {
                        Map::new()
                    } else {
                        c.payload(s).to_map()
                    };
                    p.extend(payload.clone());
                    (s, c.id(s).key(), p)
                })
                .collect()
        };
        let mut rows: Vec<(String, String)> = Vec::with_capacity(changed.len());
        for (_, key, p) in &changed {
            rows.push((key.clone(), self.payload_text(key, p)?));
        }
        vectors::set_payloads(&self.db, name, &rows).await?;
        let mut c = entry.modify();
        for (slot, _, p) in changed {
            c.set_payload(slot, Payload::from(p));
        }
        c.operation += 1;
        Ok(c.operation)
    }

    /// A payload as stored, held to `--max-payload-bytes`.
    fn payload_text(&self, id: &str, payload: &Map<String, Value>) -> Result<String, Error> {
        let text = serde_json::to_string(payload).unwrap_or_else(|_| "{}".into());
        if text.len() > self.limits.max_payload_bytes {
            return Err(Error::BadInput(format!(
                "the payload of point {id} is {} bytes; the limit is {} (--max-payload-bytes)",
                text.len(),
                self.limits.max_payload_bytes
            )));
        }
        Ok(text)
    }
}

/// Qdrant's rule for names, kept: 1 to 255 characters, none of them a path separator or a
/// control character.
/// Points a graph build takes in per step (under a shared lock, so a write waits at most
/// about this many insertions: a few tens of milliseconds).
const BUILD_STEP: usize = 32;

/// Starts building `entry`'s graph on the blocking pool when one is due, a few points at a
/// time between which writes and searches go on ([`Collection::build_step`]). A collection
/// deleted meanwhile (or the store dropped) ends the build at its next step.
fn build_graph_if_due(name: &str, entry: &Arc<Entry>) {
    // Checked under the shared lock first: after most writes nothing is due, and searches
    // should not wait for an exclusive lock just to learn that.
    if !entry.read().graph_due() {
        return;
    }
    let Some(mut build) = entry.modify().start_build() else {
        return;
    };
    let name = name.to_owned();
    tracing::info!(collection = %name, points = entry.read().len(), "building the approximate index off the write path; searches are exact until it is ready");
    let weak = Arc::downgrade(entry);
    tokio::task::spawn_blocking(move || {
        loop {
            let Some(entry) = weak.upgrade() else {
                tracing::info!(collection = %name, "approximate index build dropped with its collection");
                return;
            };
            // The shared lock is let go before the exclusive one is taken.
            let step = entry.read().build_step(&mut build, BUILD_STEP);
            match step {
                Step::More => {}
                Step::Done => {
                    entry.modify().finish_build(build);
                    return;
                }
                Step::Abandoned => return,
            }
        }
    });
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.chars().count() > 255
        || name
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | '\0'))
    {
        return Err(Error::BadInput(format!(
            "collection name `{name}` must be 1 to 255 characters without `/`, `\\` or control characters"
        )));
    }
    Ok(())
}
