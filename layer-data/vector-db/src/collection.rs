//! One collection in memory: normalised vectors in blocks ([`crate::vectors`], a slot per point),
//! payloads, an id → slot map and keyword indexes for the fields a client indexed.
//!
//! Search is an exact scan: every candidate's cosine similarity (a dot product of unit
//! vectors), the best kept in a bounded heap. A filter whose top-level `must` names an
//! indexed field by value (Open WebUI's `tenant_id`, `metadata.file_id`) scans only the
//! points the index lists for it. Past `approximate_above` points, an unfiltered search walks
//! the collection's HNSW graph ([`crate::hnsw`]) instead, kept in step by `link`/`unlink`.
//!
//! The graph is built off the write path ([`GraphBuild`]): the builder inserts a few points at
//! a time under a shared lock, so searches and writes go on; the slots written meanwhile are
//! noted and linked again with their current vectors before the graph is installed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use contract::qdrant::{Filter, PointId};
use serde_json::Value;

use crate::filter;
use crate::hnsw::{self, Hnsw};
use crate::payload::Payload;
use crate::simd;
use crate::vectors::Vectors;

/// A collection's points and indexes.
#[derive(Debug)]
pub struct Collection {
    pub dim: usize,
    /// Settings as created (`vectors`, `hnsw_config`, …), echoed by `GET /collections/{c}`.
    pub config: Value,
    /// Payload indexes: field → schema as given.
    pub indexes: BTreeMap<String, Value>,
    ids: Vec<PointId>,
    slot_of: HashMap<PointId, usize>,
    vectors: Vectors,
    payloads: Vec<Payload>,
    /// Field → value key → slots, for the indexed fields.
    keyword: HashMap<String, HashMap<String, HashSet<usize>>>,
    /// The number of the last write (what updates answer as `operation_id`).
    pub operation: u64,
    /// From this many points on, unfiltered searches use the approximate index (0: never).
    pub approximate_above: usize,
    /// The graph's settings, from the collection's `hnsw_config` (`m` 0: no graph, as in
    /// Qdrant).
    graph_params: hnsw::Params,
    graph: Option<Hnsw>,
    /// While a graph is being built: the slots whose point changed since the build began
    /// (taken by the builder between its steps). `None` when no build is under way.
    changed: Mutex<Option<HashSet<usize>>>,
}

/// A graph being built beside a collection: slots below `cursor` are in it (some with a
/// vector that has changed since, listed in the collection's `changed`).
#[derive(Debug)]
pub struct GraphBuild {
    graph: Hnsw,
    cursor: usize,
    started: std::time::Instant,
}

/// What one step of a build left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Points or changes still to take in.
    More,
    /// Caught up: [`Collection::finish_build`] installs it.
    Done,
    /// The build was called off (the collection no longer wants a graph).
    Abandoned,
}

/// A point found by a search: its slot and similarity.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub slot: usize,
    pub score: f32,
}

/// Best-first order: higher score, then lower slot.
struct Ranked(Hit);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    /// "Greater" is worse, so the heap's top is the worst kept hit.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.slot.cmp(&other.0.slot))
    }
}

/// Candidates a graph search keeps when the request does not say (`hnsw_ef`) and the
/// collection's `ef_construct` is lower: measured on real sentence embeddings, 128 reaches
/// Chroma's recall at a third of its latency (docs/PERFORMANCE.md).
const DEFAULT_EF: usize = 128;

/// The graph's settings from a collection's `hnsw_config` (`m`, `ef_construct`), Qdrant's
/// defaults where absent.
fn graph_params(config: &Value) -> hnsw::Params {
    let d = hnsw::Params::default();
    let h = &config["hnsw_config"];
    let get = |k: &str, or: usize| h[k].as_u64().map_or(or, |v| v as usize);
    hnsw::Params {
        m: get("m", d.m),
        ef_construct: get("ef_construct", d.ef_construct),
    }
}

impl Collection {
    pub fn new(dim: usize, config: Value) -> Collection {
        Collection {
            dim,
            indexes: BTreeMap::new(),
            ids: Vec::new(),
            slot_of: HashMap::new(),
            vectors: Vectors::new(dim),
            payloads: Vec::new(),
            keyword: HashMap::new(),
            operation: 0,
            approximate_above: 0,
            graph_params: graph_params(&config),
            graph: None,
            changed: Mutex::new(None),
            config,
        }
    }

    /// Sets the size from which unfiltered searches are approximate (0: never). A graph due
    /// now is left to the caller ([`Collection::start_build`]).
    pub fn set_approximate_above(&mut self, points: usize) {
        self.approximate_above = points;
        if points == 0 {
            self.graph = None;
            *self.changes() = None;
        }
    }

    /// Whether unfiltered searches use the approximate index now.
    pub fn approximate(&self) -> bool {
        self.graph.is_some()
    }

    fn changes(&mut self) -> &mut Option<HashSet<usize>> {
        self.changed
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The changed slots of a build under way, from a shared borrow.
    fn changes_locked(&self) -> std::sync::MutexGuard<'_, Option<HashSet<usize>>> {
        self.changed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes points past `build`'s cursor into it, at most `limit`; how many it took.
    fn take_new(&self, build: &mut GraphBuild, limit: usize) -> usize {
        let mut taken = 0;
        while build.cursor < self.len() && taken < limit {
            build.graph.insert(&self.vectors, build.cursor);
            build.cursor += 1;
            taken += 1;
        }
        taken
    }

    /// Whether the graph should be built (again) now: no build is under way and the
    /// collection has reached `approximate_above` points without a graph, or removals have
    /// reached half the points the graph was built with (links left to removed points make it
    /// worse).
    pub fn graph_due(&self) -> bool {
        let n = self.len();
        if self.approximate_above == 0 || self.graph_params.m == 0 || n < self.approximate_above {
            return false;
        }
        let building = self.changes_locked().is_some();
        !building
            && self
                .graph
                .as_ref()
                .is_none_or(|g| g.removed * 2 >= g.built_with.max(n))
    }

    /// Begins a build when one is due: from now on every slot whose vector changes is noted
    /// for it. The caller drives it with [`Collection::build_step`] under a shared lock and
    /// ends it with [`Collection::finish_build`]; a graph already there stays in use (and in
    /// step) until then.
    pub fn start_build(&mut self) -> Option<GraphBuild> {
        if !self.graph_due() {
            return None;
        }
        *self.changes() = Some(HashSet::new());
        Some(GraphBuild {
            graph: Hnsw::new(self.graph_params),
            cursor: 0,
            started: std::time::Instant::now(),
        })
    }

    /// Takes up to `budget` slots into `build`: first slots noted as changed (unlinked, and
    /// linked again with their vector of now if they still hold a point), then points not yet
    /// in it. Runs under a shared lock: searches go on, writes wait at most one step.
    pub fn build_step(&self, build: &mut GraphBuild, budget: usize) -> Step {
        let batch: Vec<usize> = {
            let mut guard = self.changes_locked();
            let Some(changed) = guard.as_mut() else {
                return Step::Abandoned;
            };
            let batch: Vec<usize> = changed.iter().copied().take(budget).collect();
            for s in &batch {
                changed.remove(s);
            }
            batch
        };
        let spent = self.relink(build, batch);
        self.take_new(build, budget.saturating_sub(spent));
        let pending = self
            .changes_locked()
            .as_ref()
            .is_some_and(|c| !c.is_empty());
        if build.cursor < self.len() || pending {
            Step::More
        } else {
            Step::Done
        }
    }

    /// Unlinks the changed slots that `build` already holds and links again those that still
    /// hold a point (slots at or past the cursor come later anyway); how many it took.
    fn relink(&self, build: &mut GraphBuild, slots: Vec<usize>) -> usize {
        let held: Vec<usize> = slots.into_iter().filter(|&s| s < build.cursor).collect();
        for &s in &held {
            build.graph.remove(&self.vectors, s);
        }
        for &s in &held {
            if s < self.len() {
                build.graph.insert(&self.vectors, s);
            }
        }
        held.len()
    }

    /// Ends `build` under the exclusive lock: the last changes and points are taken in and the
    /// graph replaces the one in use. Does nothing if the build was called off.
    pub fn finish_build(&mut self, mut build: GraphBuild) {
        let Some(changed) = self.changes().take() else {
            return;
        };
        self.relink(&mut build, changed.into_iter().collect());
        self.take_new(&mut build, usize::MAX);
        let mut graph = build.graph;
        graph.built_with = self.len();
        graph.removed = 0;
        tracing::info!(
            points = self.len(),
            secs = build.started.elapsed().as_secs_f64(),
            "approximate index built"
        );
        self.graph = Some(graph);
    }

    /// Builds a due graph at once.
    #[cfg(test)]
    pub fn build_now(&mut self) {
        if let Some(mut b) = self.start_build() {
            while self.build_step(&mut b, usize::MAX) == Step::More {}
            self.finish_build(b);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id(&self, slot: usize) -> &PointId {
        &self.ids[slot]
    }

    pub fn payload(&self, slot: usize) -> &Payload {
        &self.payloads[slot]
    }

    pub fn vector(&self, slot: usize) -> &[f32] {
        self.vectors.get(slot)
    }

    pub fn slot(&self, id: &PointId) -> Option<usize> {
        self.slot_of.get(id).copied()
    }

    /// Bytes of the stored vectors (not the blocks' spare room, ids or payloads).
    pub fn vector_bytes(&self) -> usize {
        self.vectors.bytes()
    }

    /// Inserts or replaces a point; `vector` is normalised and of length `dim`.
    pub fn upsert(&mut self, id: PointId, vector: &[f32], payload: Payload) {
        match self.slot_of.get(&id) {
            Some(&slot) => {
                self.unindex(slot);
                self.unlink(slot);
                self.vectors.set(slot, vector);
                self.payloads[slot] = payload;
                self.index(slot);
                self.link(slot);
            }
            None => {
                let slot = self.ids.len();
                self.slot_of.insert(id.clone(), slot);
                self.ids.push(id);
                self.vectors.push(vector);
                self.payloads.push(payload);
                self.index(slot);
                self.link(slot);
            }
        }
    }

    /// Replaces a point's payload.
    pub fn set_payload(&mut self, slot: usize, payload: Payload) {
        self.unindex(slot);
        self.payloads[slot] = payload;
        self.index(slot);
    }

    /// Removes a point; `false` when it was not there.
    pub fn remove(&mut self, id: &PointId) -> bool {
        let Some(slot) = self.slot_of.remove(id) else {
            return false;
        };
        self.unindex(slot);
        self.unlink(slot);
        let last = self.ids.len() - 1;
        if slot != last {
            // The last point moves into the freed slot.
            self.unindex(last);
            self.unlink(last);
            self.ids.swap(slot, last);
            self.payloads.swap(slot, last);
            self.slot_of.insert(self.ids[slot].clone(), slot);
        }
        self.ids.pop();
        self.payloads.pop();
        self.vectors.swap_remove(slot);
        if slot != last {
            self.index(slot);
            self.link(slot);
        }
        true
    }

    /// Starts indexing `field` (existing points included).
    pub fn add_index(&mut self, field: &str, schema: Value) {
        self.indexes.insert(field.to_owned(), schema);
        let mut map: HashMap<String, HashSet<usize>> = HashMap::new();
        for (slot, p) in self.payloads.iter().enumerate() {
            for v in filter::values(p, field) {
                if let Some(k) = filter::index_key(v) {
                    map.entry(k).or_default().insert(slot);
                }
            }
        }
        self.keyword.insert(field.to_owned(), map);
    }

    pub fn drop_index(&mut self, field: &str) {
        self.indexes.remove(field);
        self.keyword.remove(field);
    }

    /// Puts the point in `slot` into the graph (and notes it for a build under way).
    fn link(&mut self, slot: usize) {
        if let Some(changed) = self.changes() {
            changed.insert(slot);
        }
        if let Some(g) = &mut self.graph {
            g.insert(&self.vectors, slot);
        }
    }

    /// Takes the point in `slot` out of the graph (its vector still in place), noting it for a
    /// build under way.
    fn unlink(&mut self, slot: usize) {
        if let Some(changed) = self.changes() {
            changed.insert(slot);
        }
        if let Some(g) = &mut self.graph {
            g.remove(&self.vectors, slot);
        }
    }

    /// Puts the payload of `slot` into the keyword indexes.
    fn index(&mut self, slot: usize) {
        let payload = &self.payloads[slot];
        for (field, map) in &mut self.keyword {
            for v in filter::values(payload, field) {
                if let Some(k) = filter::index_key(v) {
                    map.entry(k).or_default().insert(slot);
                }
            }
        }
    }

    fn unindex(&mut self, slot: usize) {
        let payload = &self.payloads[slot];
        for (field, map) in &mut self.keyword {
            for v in filter::values(payload, field) {
                if let Some(k) = filter::index_key(v)
                    && let Some(set) = map.get_mut(&k)
                {
                    set.remove(&slot);
                    if set.is_empty() {
                        map.remove(&k);
                    }
                }
            }
        }
    }

    /// The slots an index narrows `filter` to (a superset of the matches), or `None` when no
    /// index applies.
    fn candidates(&self, filter: &Filter) -> Option<Vec<usize>> {
        let mut best: Option<Vec<usize>> = None;
        for (field, map) in &self.keyword {
            let Some(values) = filter::required_values(filter, field) else {
                continue;
            };
            let mut slots: Vec<usize> = values
                .iter()
                .filter_map(|v| filter::index_key(v))
                .filter_map(|k| map.get(&k))
                .flat_map(|s| s.iter().copied())
                .collect();
            if best.as_ref().is_none_or(|b| slots.len() < b.len()) {
                slots.sort_unstable();
                slots.dedup();
                best = Some(slots);
            }
        }
        best
    }

    /// Every slot that passes `filter`, in slot order.
    pub fn filtered(&self, filter: Option<&Filter>) -> Vec<usize> {
        match filter {
            None => (0..self.len()).collect(),
            Some(f) => {
                let pass = |&s: &usize| filter::matches(f, &self.ids[s], &self.payloads[s]);
                match self.candidates(f) {
                    Some(c) => c.into_iter().filter(pass).collect(),
                    None => (0..self.len()).filter(pass).collect(),
                }
            }
        }
    }

    /// The `top` most similar points to the unit vector `query` that pass `filter` and score
    /// at least `threshold`, best first. Without a filter, a collection past
    /// `approximate_above` walks its graph instead of reading every point, unless `exact`;
    /// `ef` (Qdrant's `hnsw_ef`) is how many candidates the walk keeps, at least
    /// [`DEFAULT_EF`] and `ef_construct` when not given.
    pub fn search(
        &self,
        query: &[f32],
        filter: Option<&Filter>,
        top: usize,
        threshold: Option<f32>,
        exact: bool,
        ef: Option<usize>,
    ) -> Vec<Hit> {
        if top == 0 {
            return Vec::new();
        }
        // A limit that is large next to the collection is filled as the exact scan fills it.
        let small = top.saturating_mul(100) <= self.len();
        if let (None, Some(g), false, true) = (filter, &self.graph, exact, small) {
            let ef = ef
                .unwrap_or(self.graph_params.ef_construct.max(DEFAULT_EF))
                .max(top);
            return g
                .search(&self.vectors, query, top, ef)
                .into_iter()
                .filter(|&(_, score)| threshold.is_none_or(|t| score >= t))
                .map(|(slot, score)| Hit { slot, score })
                .collect();
        }
        let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(top + 1);
        let mut consider = |slot: usize, v: &[f32]| {
            let score = simd::dot(query, v);
            if threshold.is_some_and(|t| score < t) {
                return;
            }
            let hit = Ranked(Hit { slot, score });
            if heap.len() < top {
                heap.push(hit);
            } else if heap.peek().is_some_and(|worst| hit < *worst) {
                heap.pop();
                heap.push(hit);
            }
        };
        match filter {
            None => self
                .vectors
                .iter()
                .enumerate()
                .for_each(|(s, v)| consider(s, v)),
            Some(_) => self
                .filtered(filter)
                .into_iter()
                .for_each(|s| consider(s, self.vectors.get(s))),
        }
        let mut hits: Vec<Ranked> = heap.into_vec();
        hits.sort();
        hits.into_iter().map(|r| r.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        simd::normalise(&mut v);
        v
    }

    fn payload(v: Value) -> Payload {
        Payload::from(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn removing_keeps_ids_vectors_and_indexes_in_step() {
        let mut c = Collection::new(2, json!({}));
        c.add_index("t", json!("keyword"));
        for i in 0..5u64 {
            let t = if i % 2 == 0 { "even" } else { "odd" };
            c.upsert(
                PointId::Num(i),
                &unit(&[1.0, i as f32]),
                payload(json!({"t": t})),
            );
        }
        assert!(c.remove(&PointId::Num(1)));
        assert!(!c.remove(&PointId::Num(1)));
        assert_eq!(c.len(), 4);
        for slot in 0..c.len() {
            let PointId::Num(i) = *c.id(slot) else {
                continue;
            };
            assert_eq!(c.vector(slot), unit(&[1.0, i as f32]).as_slice());
            assert_eq!(c.slot(&PointId::Num(i)), Some(slot));
        }
        let odd: Filter =
            serde_json::from_value(json!({"must":[{"key":"t","match":{"value":"odd"}}]}))
                .unwrap_or_default();
        let ids: Vec<&PointId> = c
            .filtered(Some(&odd))
            .into_iter()
            .map(|s| c.id(s))
            .collect();
        assert_eq!(ids, vec![&PointId::Num(3)]);
        c.upsert(
            PointId::Num(3),
            &unit(&[1.0, 3.0]),
            payload(json!({"t": "even"})),
        );
        assert!(c.filtered(Some(&odd)).is_empty());
    }

    #[test]
    fn search_returns_the_best_first_and_honours_the_threshold() {
        let mut c = Collection::new(2, json!({}));
        for (i, v) in [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]
            .iter()
            .enumerate()
        {
            c.upsert(PointId::Num(i as u64), &unit(v), Payload::default());
        }
        let hits = c.search(&unit(&[1.0, 0.1]), None, 3, None, false, None);
        let order: Vec<&PointId> = hits.iter().map(|h| c.id(h.slot)).collect();
        assert_eq!(
            order,
            vec![&PointId::Num(0), &PointId::Num(2), &PointId::Num(1)]
        );
        assert!(hits[0].score > 0.99 && hits[0].score <= 1.0001);
        let close = c.search(&unit(&[1.0, 0.0]), None, 10, Some(0.5), false, None);
        assert_eq!(close.len(), 2);
        let worst = c.search(&unit(&[1.0, 0.0]), None, 10, None, false, None);
        assert!(
            (worst[3].score + 1.0).abs() < 1e-5,
            "opposite vectors score -1"
        );
    }

    #[test]
    fn the_approximate_index_follows_every_change_and_finds_the_neighbours() {
        let dim = 32;
        let mut rng = fastrand::Rng::with_seed(7);
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| unit(&(0..dim).map(|_| rng.f32() - 0.5).collect::<Vec<_>>()))
            .collect();
        let point = |rng: &mut fastrand::Rng| {
            let c = &centres[rng.usize(..centres.len())];
            unit(
                &c.iter()
                    .map(|x| x + 0.15 * (rng.f32() - 0.5))
                    .collect::<Vec<_>>(),
            )
        };
        let mut c = Collection::new(dim, json!({}));
        c.approximate_above = 1000;
        for i in 0..3000u64 {
            let v = point(&mut rng);
            c.upsert(PointId::Num(i), &v, Payload::default());
            if i == 998 {
                c.build_now();
                assert!(!c.approximate(), "not due below the threshold");
            }
            if i == 999 {
                c.build_now();
                assert!(c.approximate());
            }
        }
        // Removals (each moves the last point), updates of vectors, payload changes.
        for i in (0..3000u64).step_by(7) {
            assert!(c.remove(&PointId::Num(i)));
        }
        for i in (1..3000u64).step_by(11) {
            let v = point(&mut rng);
            c.upsert(PointId::Num(i), &v, Payload::default());
        }
        c.set_payload(5, payload(json!({"x": 1})));
        let nodes = c.graph.as_ref().map(|g| g.nodes());
        assert_eq!(
            nodes,
            Some(c.len()),
            "every point, and only those, in the graph"
        );

        let queries: Vec<Vec<f32>> = (0..50).map(|_| point(&mut rng)).collect();
        let r = recall(&c, &queries);
        assert!(r >= 0.9, "recall@10 {r}");
        // A limit too large for the index's share of points is answered by the exact scan.
        let q = point(&mut rng);
        assert_eq!(c.search(&q, None, 2000, None, false, None).len(), 2000);
    }

    /// Recall@10 of unfiltered graph searches against the exact scan, and every returned
    /// score exact.
    fn recall(c: &Collection, queries: &[Vec<f32>]) -> f64 {
        let mut found = 0;
        for q in queries {
            let exact = c.search(q, None, 10, None, true, None);
            let approx = c.search(q, None, 10, None, false, None);
            for h in &approx {
                assert!((h.score - simd::dot(q, c.vector(h.slot))).abs() < 1e-6);
            }
            found += approx
                .iter()
                .filter(|h| exact.iter().any(|e| e.slot == h.slot))
                .count();
        }
        found as f64 / (10 * queries.len()) as f64
    }

    /// A graph built a few points at a time while points are added, moved, changed and
    /// removed ends up holding every point with its vector of now, and only those.
    #[test]
    fn a_graph_built_beside_writes_takes_in_every_change() {
        let dim = 24;
        let mut rng = fastrand::Rng::with_seed(11);
        let point =
            |rng: &mut fastrand::Rng| unit(&(0..dim).map(|_| rng.f32() - 0.5).collect::<Vec<_>>());
        let mut c = Collection::new(dim, json!({}));
        c.approximate_above = 500;
        for i in 0..1500u64 {
            c.upsert(PointId::Num(i), &point(&mut rng), Payload::default());
        }
        assert!(!c.approximate(), "writes do not build the graph themselves");
        let mut build = c.start_build().expect("due");
        assert!(c.start_build().is_none(), "one build at a time");
        assert!(!c.graph_due());
        let mut next = 1500u64;
        let mut steps = 0;
        loop {
            let step = c.build_step(&mut build, 40);
            if step == Step::Done {
                break;
            }
            assert_eq!(step, Step::More);
            steps += 1;
            // Between steps: new points, new vectors for old ones (some already in the
            // graph), and removals that move the last point into the freed slot.
            if steps % 3 == 0 && steps < 60 {
                for _ in 0..5 {
                    c.upsert(PointId::Num(next), &point(&mut rng), Payload::default());
                    next += 1;
                }
                let victim = rng.u64(..next);
                c.remove(&PointId::Num(victim));
                let moved = rng.u64(..next);
                c.upsert(PointId::Num(moved), &point(&mut rng), Payload::default());
                // A point whose slot the builder has passed, removed and not replaced.
                c.remove(&PointId::Num(rng.u64(..next)));
            }
        }
        // Changes after the last step are taken in when it is installed.
        for i in 0..20u64 {
            c.remove(&PointId::Num(i * 3));
            c.upsert(PointId::Num(next + i), &point(&mut rng), Payload::default());
        }
        c.finish_build(build);
        assert!(c.approximate());
        let g = c.graph.as_ref().unwrap();
        assert_eq!(
            g.nodes(),
            c.len(),
            "every point, and only those, in the graph"
        );
        assert_eq!(g.built_with, c.len());
        // Each point is found from its own vector of now.
        for slot in (0..c.len()).step_by(7) {
            let hits = c.search(c.vector(slot), None, 1, None, false, None);
            assert!((hits[0].score - 1.0).abs() < 1e-5, "slot {slot}: {hits:?}");
        }
        let queries: Vec<Vec<f32>> = (0..40).map(|_| point(&mut rng)).collect();
        let r = recall(&c, &queries);
        assert!(r >= 0.9, "recall@10 {r}");
        assert!(!c.graph_due(), "not due again right after");
    }

    #[test]
    fn a_build_called_off_installs_nothing() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut c = Collection::new(8, json!({}));
        c.approximate_above = 100;
        for i in 0..200u64 {
            let v = unit(&(0..8).map(|_| rng.f32() - 0.5).collect::<Vec<_>>());
            c.upsert(PointId::Num(i), &v, Payload::default());
        }
        let mut build = c.start_build().expect("due");
        assert_eq!(c.build_step(&mut build, 10), Step::More);
        c.set_approximate_above(0);
        assert_eq!(c.build_step(&mut build, 10), Step::Abandoned);
        c.finish_build(build);
        assert!(!c.approximate());
    }
}
