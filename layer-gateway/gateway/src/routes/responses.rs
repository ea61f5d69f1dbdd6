//! `POST /v1/responses`: the OpenAI Responses API for any handle, translated to chat
//! completions ([`crate::responses`]) and routed like every chat — keys, limits, fallbacks,
//! one request-log row — answered as a response object or its streaming events. With
//! `store: true` the response is kept in the system-docs DB (`--responses-retention`,
//! `--responses-max`) so that `previous_response_id` can continue it, with the same key.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::Error;
use crate::proxy::{self, Route};
use crate::responses::{self, Asked, Events};
use crate::state::AppState;

/// Keeps a finished response for `previous_response_id`, off the request path.
fn store(state: &Arc<AppState>, caller: &Caller, asked: &Asked, response: &Value) {
    if !asked.store {
        return;
    }
    let mut items = asked.items.clone();
    items.extend(response["output"].as_array().cloned().unwrap_or_default());
    let now = docsdb::now_ms();
    let retention = i64::try_from(state.config.responses_retention.as_millis()).unwrap_or(i64::MAX);
    let row = docsdb::responses::StoredResponse {
        id: response["id"].as_str().unwrap_or_default().to_owned(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(retention),
        key_name: caller.log_name(),
        model: asked.model.clone(),
        items: Value::Array(items).to_string(),
        response: response.to_string(),
    };
    if let Ok(mut pending) = state.storing.lock() {
        pending.insert(row.id.clone());
    }
    let (state, keep) = (state.clone(), state.config.responses_max);
    tokio::spawn(async move {
        if let Err(e) = docsdb::responses::put(&state.db, &row, keep).await {
            tracing::warn!(error = %e, id = %row.id, "a stored response could not be written");
        }
        if let Ok(mut pending) = state.storing.lock() {
            pending.remove(&row.id);
        }
    });
}

/// The caller's key name, once a write of response `id` still under way has finished.
async fn settled(
    state: &Arc<AppState>,
    headers: &axum::http::HeaderMap,
    id: &str,
) -> Result<Option<String>, Error> {
    let caller = super::caller(state, headers)?;
    state.stored(id).await;
    Ok(caller.log_name())
}

/// `GET /v1/responses/{id}`: a stored response, for the key that stored it.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Error> {
    let key = settled(&state, &headers, &id).await?;
    let stored = docsdb::responses::get(&state.db, &id, key.as_deref(), docsdb::now_ms())
        .await?
        .ok_or(Error::UnknownResponse(id))?;
    let body: Value = serde_json::from_str(&stored.response).unwrap_or(Value::Null);
    Ok(axum::Json(body).into_response())
}

/// `DELETE /v1/responses/{id}`: forgets a stored response, for the key that stored it.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Error> {
    let key = settled(&state, &headers, &id).await?;
    if !docsdb::responses::delete(&state.db, &id, key.as_deref()).await? {
        return Err(Error::UnknownResponse(id));
    }
    let body = serde_json::json!({"id": id, "object": "response.deleted", "deleted": true});
    Ok(axum::Json(body).into_response())
}

/// `POST /v1/responses`.
pub async fn create(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let request_id = service_kit::request_id::of(&req);
    let headers = req.headers().clone();
    let reject = |caller, e: Error| {
        proxy::reject(
            &state,
            Route::Responses,
            request_id.clone(),
            caller,
            &headers,
            e,
        )
    };
    let caller = match super::caller(&state, &headers) {
        Ok(c) => c,
        Err(e) => return reject(None, e),
    };
    if !service_kit::body::is_json(&headers) {
        let e = Error::BadRequest(
            "the request body must be JSON, sent with `Content-Type: application/json`".into(),
        );
        return reject(Some(caller), e);
    }
    let body = match service_kit::body::read_bytes(req).await {
        Ok(b) => b,
        Err(api) => {
            return proxy::reject_api(
                &state,
                Route::Responses,
                request_id.clone(),
                Some(caller),
                &headers,
                api,
            );
        }
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return reject(
                Some(caller),
                Error::BadRequest(format!("invalid JSON body: {e}")),
            );
        }
    };
    let mut earlier: Vec<Value> = Vec::new();
    if let Some(prev) = body.get("previous_response_id").and_then(Value::as_str) {
        state.stored(prev).await;
        let found = docsdb::responses::get(
            &state.db,
            prev,
            caller.log_name().as_deref(),
            docsdb::now_ms(),
        )
        .await;
        match found {
            Ok(Some(r)) => earlier = serde_json::from_str(&r.items).unwrap_or_default(),
            Ok(None) => {
                let e = Error::UnknownResponse(prev.to_owned());
                return reject(
                    Some(caller),
                    Error::BadRequest(format!("previous_response_id: {e}")),
                );
            }
            Err(e) => return reject(Some(caller), Error::Db(e)),
        }
    }
    let (chat, asked) = match responses::to_chat(&body, &earlier) {
        Ok(x) => x,
        Err(m) => return reject(Some(caller), Error::BadRequest(m)),
    };
    let res = proxy::forward(
        state.clone(),
        Route::Responses,
        caller.clone(),
        request_id.clone(),
        &headers,
        proxy::Payload::Json(Bytes::from(chat.to_string())),
    )
    .await;
    if !res.status().is_success() {
        return res;
    }
    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let created_at = contract::chat::unix_now();
    let streamed = super::is_event_stream(&res);
    let (mut parts, body) = res.into_parts();
    if !streamed {
        let answer = super::json_body(body).await;
        let item_base = id.replacen("resp_", "item_", 1);
        let (output, status) = responses::from_chat(&answer, |n| format!("{item_base}_{n}"));
        let r = responses::response(&id, created_at, &asked, status, &output, &answer["usage"]);
        store(&state, &caller, &asked, &r);
        parts.headers.remove(header::CONTENT_LENGTH);
        return (parts.status, parts.headers, axum::Json(r)).into_response();
    }
    let events = Stored {
        events: Events::new(&id, created_at, asked),
        state: state.clone(),
        caller,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.status = StatusCode::OK;
    Response::from_parts(parts, super::translated(body, events))
}

/// A response's events, stored when they are complete.
struct Stored {
    events: Events,
    state: Arc<AppState>,
    caller: Caller,
}

impl super::Translate for Stored {
    fn chunk(&mut self, chunk: &Value) -> String {
        self.events.chunk(chunk)
    }

    fn end(&mut self) -> String {
        match self.events.finish() {
            Some((tail, done)) => {
                store(&self.state, &self.caller, self.events.asked(), &done);
                tail
            }
            None => String::new(),
        }
    }
}
