//! A Home Assistant double speaking its REST API: `GET /api/` (the "API running" check),
//! `GET /api/states`, `GET /api/states/{entity_id}` (404 `{"message":"Entity not found."}`),
//! `POST /api/services/{domain}/{service}` (the states it changed; 400 for an unknown
//! service). Every endpoint wants `Authorization: Bearer TOKEN` and answers 401
//! `401: Unauthorized` without it, as Home Assistant does. `light`/`switch` `turn_on`,
//! `turn_off` and `toggle` change the state; every service call is recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

#[derive(Default)]
struct Inner {
    states: BTreeMap<String, Value>,
    calls: Vec<(String, Value)>,
}

#[derive(Clone)]
pub struct MockHomeAssistant {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

type Shared = (Arc<Mutex<Inner>>, String);

impl MockHomeAssistant {
    /// Starts a double with these `(entity_id, state, friendly_name)` entities, accepting
    /// `token`.
    pub async fn start(token: &str, entities: &[(&str, &str, &str)]) -> Self {
        let mut inner = Inner::default();
        for (id, state, name) in entities {
            inner
                .states
                .insert((*id).to_owned(), entity(id, state, name));
        }
        let inner = Arc::new(Mutex::new(inner));
        let app = Router::new()
            .route("/api/", get(api_root))
            .route("/api/states", get(all_states))
            .route("/api/states/{entity_id}", get(one_state))
            .route("/api/services/{domain}/{service}", post(call_service))
            .with_state((inner.clone(), token.to_owned()));
        let addr = crate::spawn(app).await;
        MockHomeAssistant { addr, inner }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(domain.service, body)` of every service call received.
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// The current state of an entity.
    pub fn state(&self, entity_id: &str) -> Option<String> {
        self.inner.lock().unwrap().states.get(entity_id)?["state"]
            .as_str()
            .map(str::to_owned)
    }
}

fn entity(id: &str, state: &str, name: &str) -> Value {
    json!({
        "entity_id": id,
        "state": state,
        "attributes": {"friendly_name": name},
        "last_changed": "2026-12-01T10:00:00.000000+00:00",
        "last_updated": "2026-12-01T10:00:00.000000+00:00",
        "context": {"id": "01JDEXAMPLE", "parent_id": null, "user_id": null}
    })
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"))
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response()
}

async fn api_root(State((_, token)): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &token) {
        return unauthorized();
    }
    axum::Json(json!({"message": "API running."})).into_response()
}

async fn all_states(State((inner, token)): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &token) {
        return unauthorized();
    }
    let states: Vec<Value> = inner.lock().unwrap().states.values().cloned().collect();
    axum::Json(states).into_response()
}

async fn one_state(
    State((inner, token)): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &token) {
        return unauthorized();
    }
    match inner.lock().unwrap().states.get(&id) {
        Some(s) => axum::Json(s.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Entity not found."})),
        )
            .into_response(),
    }
}

async fn call_service(
    State((inner, token)): State<Shared>,
    Path((domain, service)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&headers, &token) {
        return unauthorized();
    }
    let data: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
    let mut inner = inner.lock().unwrap();
    inner
        .calls
        .push((format!("{domain}.{service}"), Value::Object(data.clone())));
    let known = matches!(domain.as_str(), "light" | "switch")
        && matches!(service.as_str(), "turn_on" | "turn_off" | "toggle");
    if !known {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": format!("Service {domain}.{service} not found.")})),
        )
            .into_response();
    }
    let mut changed = Vec::new();
    if let Some(id) = data.get("entity_id").and_then(Value::as_str)
        && let Some(s) = inner.states.get_mut(id)
    {
        let next = match (service.as_str(), s["state"].as_str()) {
            ("turn_on", _) | ("toggle", Some("off")) => "on",
            _ => "off",
        };
        s["state"] = json!(next);
        if let Some(b) = data.get("brightness_pct") {
            s["attributes"]["brightness_pct"] = b.clone();
        }
        changed.push(s.clone());
    }
    axum::Json(changed).into_response()
}
