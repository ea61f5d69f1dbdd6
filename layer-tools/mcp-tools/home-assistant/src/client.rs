//! Home Assistant's REST API: `GET /api/states`, `GET /api/states/{entity_id}`,
//! `POST /api/services/{domain}/{service}`, with a long-lived access token.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// One entity's state, as `/api/states` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub entity_id: String,
    pub state: String,
    #[serde(default)]
    pub attributes: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_changed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

impl State {
    /// `friendly_name`, if set.
    pub fn friendly_name(&self) -> Option<&str> {
        self.attributes.get("friendly_name").and_then(Value::as_str)
    }
}

#[derive(Debug)]
pub struct HaClient {
    http: reqwest::Client,
    base: String,
    token: String,
    timeout: Duration,
}

impl HaClient {
    pub fn new(base: &str, token: String, timeout: Duration) -> Result<Self, Error> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::HaUrl(base.to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Client(e.to_string()))?;
        Ok(HaClient {
            http,
            base: base.to_owned(),
            token,
            timeout,
        })
    }

    pub async fn states(&self) -> Result<Vec<State>, Error> {
        let body = self
            .send(self.http.get(format!("{}/api/states", self.base)), None)
            .await?;
        serde_json::from_slice(&body).map_err(|e| self.bad_answer(e))
    }

    /// `entity_id` must already be a valid id (it goes into the path).
    pub async fn state(&self, entity_id: &str) -> Result<State, Error> {
        let url = format!("{}/api/states/{entity_id}", self.base);
        let body = self.send(self.http.get(url), Some(entity_id)).await?;
        serde_json::from_slice(&body).map_err(|e| self.bad_answer(e))
    }

    /// Calls a service; the states it changed. `domain` and `service` must be valid slugs.
    pub async fn call(
        &self,
        domain: &str,
        service: &str,
        entity_id: &str,
        data: Map<String, Value>,
    ) -> Result<Vec<State>, Error> {
        let mut body = data;
        body.insert("entity_id".into(), Value::String(entity_id.to_owned()));
        let url = format!("{}/api/services/{domain}/{service}", self.base);
        let answer = self.send(self.http.post(url).json(&body), None).await?;
        // Older versions answer the changed states; newer ones may wrap them.
        match serde_json::from_slice::<Value>(&answer).map_err(|e| self.bad_answer(e))? {
            Value::Array(items) => Ok(items
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect()),
            Value::Object(mut o) => Ok(o
                .remove("changed_states")
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default()),
            _ => Ok(Vec::new()),
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        entity: Option<&str>,
    ) -> Result<axum::body::Bytes, Error> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_timeout() {
                Error::Timeout(self.timeout)
            } else {
                Error::Unreachable {
                    url: self.base.clone(),
                    message: e.to_string(),
                }
            }
        })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| Error::Unreachable {
            url: self.base.clone(),
            message: e.to_string(),
        })?;
        match (status, entity) {
            (200..=299, _) => Ok(body),
            (404, Some(id)) => Err(Error::NotFound(id.to_owned())),
            (401, _) => Err(Error::Upstream {
                status,
                message: "the access token was refused; check the long-lived token".into(),
            }),
            _ => {
                let message = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
                Err(Error::Upstream { status, message })
            }
        }
    }

    fn bad_answer(&self, e: serde_json::Error) -> Error {
        Error::Upstream {
            status: 200,
            message: format!("an answer that is not Home Assistant's JSON: {e}"),
        }
    }
}
