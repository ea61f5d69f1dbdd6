//! The HTTP handlers: Qdrant's REST shapes in and out.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use contract::qdrant::{
    CountRequest, CreateCollection, CreateIndex, DeletePoints, NearestInput, PointId, QueryInput,
    QueryRequest, Record, RetrieveRequest, ScoredPoint, ScrollRequest, SearchRequest, SetPayload,
    Upsert, VectorInput, WithPayload,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::collection::{Collection, Hit};
use crate::error::Error;
use crate::payload::Payload;
use crate::simd;
use crate::store::{Entry, NewPoint};

type Result<T> = std::result::Result<T, Error>;

/// Qdrant's envelope: `{"result": …, "status": "ok", "time": seconds}`, serialised straight
/// from `result`.
fn ok<T: Serialize>(result: T, started: Instant) -> Response {
    axum::Json(contract::qdrant::Response {
        result,
        status: "ok".to_owned(),
        time: started.elapsed().as_secs_f64(),
    })
    .into_response()
}

/// The `result` of query and scroll.
#[derive(Serialize)]
struct Points<T> {
    points: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_offset: Option<Option<PointId>>,
}

/// A request body, read under the service's `--body-limit` (not axum's 2 MB default:
/// batches of 384-dimension vectors are larger), with Qdrant-shaped errors.
pub struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Error;

    async fn from_request(req: Request, _state: &S) -> Result<Self> {
        let max = req
            .extensions()
            .get::<service_kit::body::BodyLimit>()
            .map_or(0, |b| b.0);
        service_kit::body::read_bytes(req)
            .await
            .map(Body)
            .map_err(|e| {
                if e.status == 413 {
                    Error::TooLarge(max)
                } else {
                    Error::BadInput(e.error.message)
                }
            })
    }
}

/// A JSON body, with Qdrant's "Format error" on bad JSON; an empty body reads as `{}`.
fn parse<T: DeserializeOwned>(Body(body): &Body) -> Result<T> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            Error::Json(inner.to_string())
        } else {
            Error::Json(format!("{path}: {inner}"))
        }
    })
}

fn update_result(operation_id: u64, started: Instant) -> Response {
    ok(
        json!({"operation_id": operation_id, "status": "completed"}),
        started,
    )
}

/// `GET /`: what qdrant-client's version check reads (not wrapped).
pub async fn root() -> Response {
    axum::Json(json!({
        "title": contract::qdrant::TITLE,
        "version": contract::qdrant::VERSION,
    }))
    .into_response()
}

/// `GET /healthz`, `/livez`, `/readyz`: Qdrant's plain-text probes.
pub async fn healthz() -> Response {
    (StatusCode::OK, "healthz check passed").into_response()
}

pub async fn list(State(app): State<Arc<AppState>>) -> Response {
    let started = Instant::now();
    let collections: Vec<Value> = app
        .store
        .names()
        .into_iter()
        .map(|name| json!({"name": name}))
        .collect();
    ok(json!({"collections": collections}), started)
}

pub async fn exists(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let started = Instant::now();
    ok(json!({"exists": app.store.get(&name).is_ok()}), started)
}

/// `GET /collections/{c}`: the fields qdrant-client's `CollectionInfo` requires, with the
/// settings the collection was created with.
pub async fn info(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Response> {
    let started = Instant::now();
    let entry = app.store.get(&name)?;
    let c = entry.read();
    let mut vectors = c.config.get("vectors").cloned().unwrap_or(Value::Null);
    if let Some(v) = vectors.as_object_mut() {
        v.entry("on_disk").or_insert(Value::Bool(false));
    }
    let mut hnsw = json!({"m": 16, "ef_construct": 100, "full_scan_threshold": 10000,
        "max_indexing_threads": 0, "on_disk": false});
    if let (Some(h), Some(given)) = (
        hnsw.as_object_mut(),
        c.config.get("hnsw_config").and_then(Value::as_object),
    ) {
        h.extend(given.clone());
    }
    let payload_schema: Map<String, Value> = c
        .indexes
        .iter()
        .map(|(field, schema)| {
            let (data_type, params) = match schema {
                Value::String(t) => (t.clone(), Value::Null),
                Value::Object(o) => (
                    o.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("keyword")
                        .to_owned(),
                    schema.clone(),
                ),
                _ => ("keyword".to_owned(), Value::Null),
            };
            let points = c
                .filtered(None)
                .iter()
                .filter(|&&s| !crate::filter::values(c.payload(s), field).is_empty())
                .count();
            let mut info = json!({"data_type": data_type, "points": points});
            if !params.is_null() {
                info["params"] = params;
            }
            (field.clone(), info)
        })
        .collect();
    let result = json!({
        "status": "green",
        "optimizer_status": "ok",
        // As Qdrant: the vectors its approximate index holds.
        "indexed_vectors_count": if c.approximate() { c.len() } else { 0 },
        "points_count": c.len(),
        "segments_count": 1,
        "config": {
            "params": {
                "vectors": vectors,
                "shard_number": 1,
                "replication_factor": 1,
                "write_consistency_factor": 1,
                "on_disk_payload": c.config.get("on_disk_payload").cloned().unwrap_or(Value::Bool(true)),
            },
            "hnsw_config": hnsw,
            "optimizer_config": {
                "deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                "default_segment_number": 0, "max_segment_size": null,
                "memmap_threshold": null, "indexing_threshold": 10000,
                "flush_interval_sec": 5, "max_optimization_threads": null,
            },
            "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
            "quantization_config": null,
        },
        "payload_schema": payload_schema,
    });
    Ok(ok(result, started))
}

pub async fn create(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: CreateCollection = parse(&body)?;
    app.store.create(&name, req).await?;
    tracing::info!(collection = %name, "collection created");
    Ok(ok(true, started))
}

pub async fn delete(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response> {
    let started = Instant::now();
    let existed = app.store.delete(&name).await?;
    if existed {
        tracing::info!(collection = %name, "collection deleted");
    }
    Ok(ok(existed, started))
}

pub async fn create_index(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: CreateIndex = parse(&body)?;
    let schema = req.field_schema.unwrap_or(Value::String("keyword".into()));
    let op = app
        .store
        .create_index(&name, &req.field_name, schema)
        .await?;
    Ok(update_result(op, started))
}

pub async fn delete_index(
    State(app): State<Arc<AppState>>,
    Path((name, field)): Path<(String, String)>,
) -> Result<Response> {
    let started = Instant::now();
    let op = app.store.delete_index(&name, &field).await?;
    Ok(update_result(op, started))
}

/// The unnamed vector of a point, as a list.
fn plain_vector(v: VectorInput) -> Result<Vec<f32>> {
    match v {
        VectorInput::Plain(v) => Ok(v),
        VectorInput::Named(mut m) => match m.remove("") {
            Some(v) if m.is_empty() => serde_json::from_value(v)
                .map_err(|e| Error::BadInput(format!("the vector is not a list of numbers: {e}"))),
            _ => Err(Error::BadInput(
                "named vectors are not supported; send the vector as a list".into(),
            )),
        },
    }
}

pub async fn upsert(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: Upsert = parse(&body)?;
    let points = match req {
        Upsert::Points { points } => points
            .into_iter()
            .map(|p| {
                Ok(NewPoint {
                    id: p.id,
                    vector: plain_vector(p.vector)?,
                    payload: p.payload.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?,
        Upsert::Batch { batch } => {
            let n = batch.ids.len();
            let payloads = batch.payloads.unwrap_or_default();
            if batch.vectors.len() != n || !(payloads.is_empty() || payloads.len() == n) {
                return Err(Error::BadInput(format!(
                    "a batch of {n} ids needs as many vectors (got {}) and payloads (got {})",
                    batch.vectors.len(),
                    payloads.len()
                )));
            }
            let mut payloads = payloads.into_iter();
            batch
                .ids
                .into_iter()
                .zip(batch.vectors)
                .map(|(id, v)| {
                    Ok(NewPoint {
                        id,
                        vector: plain_vector(v)?,
                        payload: payloads.next().flatten().unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    let op = app.store.upsert(&name, points).await?;
    Ok(update_result(op, started))
}

pub async fn delete_points(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: DeletePoints = parse(&body)?;
    let op = match req {
        DeletePoints::Ids { points } => app.store.delete_ids(&name, &points).await?,
        DeletePoints::Filter { filter } => app.store.delete_filter(&name, &filter).await?,
    };
    Ok(update_result(op, started))
}

async fn set_payload_with(app: &AppState, name: &str, body: &Body, overwrite: bool) -> Result<u64> {
    let req: SetPayload = parse(body)?;
    if req.points.is_none() && req.filter.is_none() {
        return Err(Error::BadInput("give `points` or `filter`".into()));
    }
    app.store
        .set_payload(
            name,
            req.payload,
            req.points.as_deref(),
            req.filter.as_ref(),
            overwrite,
        )
        .await
}

pub async fn set_payload(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let op = set_payload_with(&app, &name, &body, false).await?;
    Ok(update_result(op, started))
}

pub async fn overwrite_payload(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let op = set_payload_with(&app, &name, &body, true).await?;
    Ok(update_result(op, started))
}

pub async fn count(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: CountRequest = parse(&body)?;
    let entry = app.store.get(&name)?;
    let n = {
        let c = entry.read();
        match &req.filter {
            None => c.len(),
            Some(f) => c.filtered(Some(f)).len(),
        }
    };
    Ok(ok(json!({"count": n}), started))
}

/// The payload to return, as `with_payload` asks.
fn project(payload: &Payload, with: &WithPayload) -> Option<Map<String, Value>> {
    let keep = |k: &str| -> bool {
        match with {
            WithPayload::All(all) => *all,
            WithPayload::Include(keys) => keys.iter().any(|i| i == k),
            WithPayload::Fields { include, exclude } => {
                include.as_ref().is_none_or(|i| i.iter().any(|i| i == k))
                    && exclude.as_ref().is_none_or(|e| !e.iter().any(|e| e == k))
            }
        }
    };
    match with {
        WithPayload::All(false) => None,
        _ => Some(
            payload
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
        ),
    }
}

/// `with_vector`: `true`, or a list naming the unnamed vector.
fn wants_vector(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Array(names)) => names.iter().any(|n| n.as_str() == Some("")),
        _ => false,
    }
}

fn scored(
    c: &Collection,
    hits: Vec<Hit>,
    with_payload: &WithPayload,
    with_vector: bool,
) -> Vec<ScoredPoint> {
    hits.into_iter()
        .map(|h| ScoredPoint {
            id: c.id(h.slot).clone(),
            version: 0,
            score: h.score,
            payload: project(c.payload(h.slot), with_payload),
            vector: with_vector.then(|| c.vector(h.slot).to_vec()),
        })
        .collect()
}

/// A search: the query vector checked and normalised, the scan on the blocking pool when it
/// is large, the hits after `offset` answered.
struct Search {
    vector: Vec<f32>,
    /// A point queried by id is not among its own results.
    exclude: Option<PointId>,
    filter: Option<contract::qdrant::Filter>,
    limit: usize,
    offset: usize,
    threshold: Option<f32>,
    with_payload: WithPayload,
    with_vector: bool,
    /// `"params": {"exact": true}`: the exact scan even where the index would answer.
    exact: bool,
    /// `"params": {"hnsw_ef": n}`: candidates the graph walk keeps.
    ef: Option<usize>,
}

/// Qdrant's `params.hnsw_ef`, held to `max`.
fn wants_ef(params: Option<&Value>, max: usize) -> Option<usize> {
    params
        .and_then(|p| p.get("hnsw_ef"))
        .and_then(Value::as_u64)
        .map(|ef| (ef as usize).min(max))
}

/// Qdrant's `params.exact`.
fn wants_exact(params: Option<&Value>) -> bool {
    params
        .and_then(|p| p.get("exact"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

async fn run_search(app: &AppState, entry: Arc<Entry>, s: Search) -> Result<Vec<ScoredPoint>> {
    let top = s
        .limit
        .saturating_add(s.offset)
        .saturating_add(usize::from(s.exclude.is_some()));
    // An upper bound (a filter may narrow the scan): big collections search off the
    // request's thread.
    let cost = {
        let c = entry.read();
        c.len() * c.dim
    };
    let work = move || {
        let c = entry.read();
        let mut hits = c.search(
            &s.vector,
            s.filter.as_ref(),
            top,
            s.threshold,
            s.exact,
            s.ef,
        );
        if let Some(id) = &s.exclude {
            hits.retain(|h| c.id(h.slot) != id);
        }
        let hits: Vec<Hit> = hits.into_iter().skip(s.offset).take(s.limit).collect();
        scored(&c, hits, &s.with_payload, s.with_vector)
    };
    if cost > app.config.blocking_scan {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(format!("the search did not finish: {e}")))
    } else {
        Ok(work())
    }
}

/// The query vector: given (checked against the dimension, normalised) or a stored point's.
fn query_vector(entry: &Entry, q: QueryInput) -> Result<(Vec<f32>, Option<PointId>)> {
    let c = entry.read();
    let (given, id) = match q {
        QueryInput::Vector(v)
        | QueryInput::Nearest {
            nearest: NearestInput::Vector(v),
        } => (Some(v), None),
        QueryInput::Point(id)
        | QueryInput::Nearest {
            nearest: NearestInput::Point(id),
        } => (None, Some(id)),
    };
    match (given, id) {
        (Some(mut v), _) => {
            if v.len() != c.dim {
                return Err(Error::Dimension {
                    expected: c.dim,
                    got: v.len(),
                });
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::BadInput(
                    "the query vector holds a value that is not a finite number".into(),
                ));
            }
            simd::normalise(&mut v);
            Ok((v, None))
        }
        (None, Some(id)) => {
            let slot = c.slot(&id).ok_or_else(|| Error::NoPoint(id.key()))?;
            Ok((c.vector(slot).to_vec(), Some(id)))
        }
        (None, None) => Ok((Vec::new(), None)),
    }
}

fn capped(app: &AppState, limit: Option<u64>, default: usize) -> usize {
    limit
        .map_or(default, |l| usize::try_from(l).unwrap_or(usize::MAX))
        .min(app.config.max_limit)
}

pub async fn query(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: QueryRequest = parse(&body)?;
    if req.prefetch.is_some() {
        return Err(Error::BadInput(
            "`prefetch` (multi-stage and hybrid queries) is not supported".into(),
        ));
    }
    if let Some(using) = req.using.as_deref().filter(|u| !u.is_empty()) {
        return Err(Error::BadInput(format!(
            "Not existing vector name error: {using}"
        )));
    }
    let entry = app.store.get(&name)?;
    let limit = capped(&app, req.limit, 10);
    let offset = capped(&app, req.offset, 0);
    let with_payload = req.with_payload.unwrap_or(WithPayload::All(false));
    let with_vector = wants_vector(req.with_vector.as_ref());
    let points = match req.query {
        Some(q) => {
            let (vector, exclude) = query_vector(&entry, q)?;
            let search = Search {
                vector,
                exclude,
                filter: req.filter,
                limit,
                offset,
                threshold: req.score_threshold,
                with_payload,
                with_vector,
                exact: wants_exact(req.params.as_ref()),
                ef: wants_ef(req.params.as_ref(), app.config.max_limit),
            };
            run_search(&app, entry, search).await?
        }
        // No query: points in id order, as Qdrant answers.
        None => {
            let c = entry.read();
            let mut slots = c.filtered(req.filter.as_ref());
            slots.sort_by(|a, b| c.id(*a).cmp(c.id(*b)));
            let hits: Vec<Hit> = slots
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|slot| Hit { slot, score: 0.0 })
                .collect();
            scored(&c, hits, &with_payload, with_vector)
        }
    };
    Ok(ok(
        Points {
            points,
            next_page_offset: None,
        },
        started,
    ))
}

pub async fn search(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: SearchRequest = parse(&body)?;
    let entry = app.store.get(&name)?;
    let (vector, _) = query_vector(&entry, QueryInput::Vector(plain_vector(req.vector)?))?;
    let search = Search {
        vector,
        exclude: None,
        filter: req.filter,
        limit: capped(&app, Some(req.limit), 10),
        offset: capped(&app, req.offset, 0),
        threshold: req.score_threshold,
        with_payload: req.with_payload.unwrap_or(WithPayload::All(false)),
        with_vector: wants_vector(req.with_vector.as_ref()),
        exact: wants_exact(req.params.as_ref()),
        ef: wants_ef(req.params.as_ref(), app.config.max_limit),
    };
    let points = run_search(&app, entry, search).await?;
    Ok(ok(points, started))
}

fn record(c: &Collection, slot: usize, with_payload: &WithPayload, with_vector: bool) -> Record {
    Record {
        id: c.id(slot).clone(),
        payload: project(c.payload(slot), with_payload),
        vector: with_vector.then(|| c.vector(slot).to_vec()),
    }
}

pub async fn scroll(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: ScrollRequest = parse(&body)?;
    let entry = app.store.get(&name)?;
    let limit = capped(&app, req.limit, 10).max(1);
    let with_payload = req.with_payload.unwrap_or(WithPayload::All(true));
    let with_vector = wants_vector(req.with_vector.as_ref());
    let c = entry.read();
    let mut slots: Vec<usize> = c.filtered(req.filter.as_ref());
    if let Some(from) = &req.offset {
        slots.retain(|&s| c.id(s) >= from);
    }
    // Only the page and the next id are needed in order.
    let page = limit.saturating_add(1).min(slots.len());
    if page < slots.len() {
        slots.select_nth_unstable_by(page, |a, b| c.id(*a).cmp(c.id(*b)));
        slots.truncate(page);
    }
    slots.sort_by(|a, b| c.id(*a).cmp(c.id(*b)));
    let next = (slots.len() > limit).then(|| c.id(slots[limit]).clone());
    let points: Vec<Record> = slots
        .into_iter()
        .take(limit)
        .map(|s| record(&c, s, &with_payload, with_vector))
        .collect();
    Ok(ok(
        Points {
            points,
            next_page_offset: Some(next),
        },
        started,
    ))
}

pub async fn retrieve(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response> {
    let started = Instant::now();
    let req: RetrieveRequest = parse(&body)?;
    let entry = app.store.get(&name)?;
    let with_payload = req.with_payload.unwrap_or(WithPayload::All(true));
    let with_vector = wants_vector(req.with_vector.as_ref());
    let c = entry.read();
    let points: Vec<Record> = req
        .ids
        .iter()
        .filter_map(|id| c.slot(id))
        .map(|s| record(&c, s, &with_payload, with_vector))
        .collect();
    Ok(ok(points, started))
}

pub async fn point(
    State(app): State<Arc<AppState>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response> {
    let started = Instant::now();
    let entry = app.store.get(&name)?;
    let id = PointId::from_key(&id).ok_or_else(|| Error::NoPoint(id.clone()))?;
    let c = entry.read();
    let slot = c.slot(&id).ok_or_else(|| Error::NoPoint(id.key()))?;
    Ok(ok(record(&c, slot, &WithPayload::All(true), true), started))
}

/// Prometheus metrics: collections, points, vector bytes.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let (points, bytes) = app.store.totals();
    let body = format!(
        "# HELP vector_db_collections Collections held.\n# TYPE vector_db_collections gauge\nvector_db_collections {}\n\
         # HELP vector_db_points Points held, over every collection.\n# TYPE vector_db_points gauge\nvector_db_points {points}\n\
         # HELP vector_db_vector_bytes Bytes of vectors held in memory.\n# TYPE vector_db_vector_bytes gauge\nvector_db_vector_bytes {bytes}\n",
        app.store.names().len()
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
