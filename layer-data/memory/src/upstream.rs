//! The two services the memory service is a client of, over HTTP like any other client:
//! the vector store (Qdrant REST API) and the gateway (OpenAI API: embeddings, and chat for
//! fact extraction).

use std::sync::atomic::{AtomicBool, Ordering};

use contract::embeddings::{EmbeddingInput, EmbeddingRequest, EmbeddingResponse};
use contract::qdrant::{
    CountRequest, CreateIndex, DeletePoints, Filter, PointId, PointStruct, QueryInput,
    QueryRequest, Record, Response as Answer, RetrieveRequest, ScoredPoint, ScrollRequest, Upsert,
    VectorInput, WithPayload,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::Config;
use crate::error::Error;

/// Clients of the vector store and the gateway.
#[derive(Debug)]
pub struct Upstreams {
    http: reqwest::Client,
    vector_db: String,
    vector_db_key: Option<String>,
    collection: String,
    gateway: String,
    gateway_key: Option<String>,
    embed_model: String,
    infer_model: String,
    /// The collection is known to exist.
    ready: AtomicBool,
}

/// A page of points.
#[derive(Debug, serde::Deserialize)]
pub struct Page {
    pub points: Vec<Record>,
    #[serde(default)]
    pub next_page_offset: Option<PointId>,
}

#[derive(Debug, serde::Deserialize)]
struct Count {
    count: u64,
}

impl Upstreams {
    pub fn new(c: &Config) -> Result<Upstreams, Error> {
        let http = reqwest::Client::builder()
            .timeout(c.upstream_timeout)
            .build()
            .map_err(|e| Error::vector_db(e.to_string()))?;
        Ok(Upstreams {
            http,
            vector_db: c.vector_db.trim_end_matches('/').to_owned(),
            vector_db_key: c.vector_db_key.clone(),
            collection: c.collection.clone(),
            gateway: c.gateway.trim_end_matches('/').to_owned(),
            gateway_key: c.gateway_key.clone(),
            embed_model: c.embed_model.clone(),
            infer_model: c.infer_model.clone(),
            ready: AtomicBool::new(false),
        })
    }

    // --- the gateway -------------------------------------------------------------------

    async fn gateway_post(&self, path: &str, body: &impl Serialize) -> Result<Value, Error> {
        let mut req = self.http.post(format!("{}{path}", self.gateway)).json(body);
        if let Some(k) = &self.gateway_key {
            req = req.bearer_auth(k);
        }
        let res = req
            .send()
            .await
            .map_err(|e| Error::gateway(format!("{}{path}: {e}", self.gateway)))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| Error::gateway(format!("{}{path}: {e}", self.gateway)))?;
        if !status.is_success() {
            let why = serde_json::from_slice::<contract::ApiError>(&bytes)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(Error::gateway(format!("{path} answered {status}: {why}")));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::gateway(format!("{path}: {e}")))
    }

    /// The vectors of `texts` from the embedding model, in order.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, Error> {
        let req = EmbeddingRequest {
            model: self.embed_model.clone(),
            input: EmbeddingInput::Texts(texts.to_vec()),
            encoding_format: None,
            dimensions: None,
            user: None,
            extra: Default::default(),
        };
        let v = self.gateway_post("/embeddings", &req).await?;
        let res: EmbeddingResponse =
            serde_json::from_value(v).map_err(|e| Error::gateway(format!("/embeddings: {e}")))?;
        let mut out = vec![Vec::new(); texts.len()];
        for d in res.data {
            let floats = d
                .embedding
                .to_floats()
                .ok_or_else(|| Error::gateway("/embeddings: a vector is not readable"))?;
            if let Some(slot) = out.get_mut(d.index as usize) {
                *slot = floats;
            }
        }
        if out.iter().any(Vec::is_empty) {
            return Err(Error::gateway(format!(
                "/embeddings: `{}` did not answer one vector per input",
                self.embed_model
            )));
        }
        Ok(out)
    }

    /// The reply of the extraction model to `messages`.
    pub async fn chat(&self, messages: Value) -> Result<String, Error> {
        let body = json!({
            "model": self.infer_model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": 256,
        });
        let v = self.gateway_post("/chat/completions", &body).await?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::gateway("/chat/completions: the answer has no text"))
    }

    // --- the vector store --------------------------------------------------------------

    async fn vdb<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Result<T, (u16, String)>, Error> {
        let url = format!("{}{path}", self.vector_db);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(k) = &self.vector_db_key {
            req = req.header("api-key", k);
        }
        let res = req
            .send()
            .await
            .map_err(|e| Error::vector_db(format!("{url}: {e}")))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| Error::vector_db(format!("{url}: {e}")))?;
        if !status.is_success() {
            let why = serde_json::from_slice::<contract::qdrant::ErrorResponse>(&bytes)
                .map(|e| e.status.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Ok(Err((status.as_u16(), why)));
        }
        let answer: Answer<T> =
            serde_json::from_slice(&bytes).map_err(|e| Error::vector_db(format!("{path}: {e}")))?;
        Ok(Ok(answer.result))
    }

    /// A call on the collection; a missing collection is `None` (nothing stored yet).
    async fn on_collection<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        tail: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Option<T>, Error> {
        let path = format!("/collections/{}{tail}", self.collection);
        match self.vdb(method, &path, body).await? {
            Ok(v) => Ok(Some(v)),
            Err((404, _)) => {
                self.ready.store(false, Ordering::SeqCst);
                Ok(None)
            }
            Err((status, why)) => Err(Error::vector_db(format!("{path}: {status}: {why}"))),
        }
    }

    /// Creates the collection for vectors of `dim` if it is missing, with keyword indexes on
    /// the scope fields.
    pub async fn ensure_collection(&self, dim: usize) -> Result<(), Error> {
        if self.ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        let path = format!("/collections/{}", self.collection);
        let exists: Value = self
            .vdb(reqwest::Method::GET, &format!("{path}/exists"), None::<&()>)
            .await?
            .map_err(|(s, why)| Error::vector_db(format!("{path}/exists: {s}: {why}")))?;
        if exists["exists"] != json!(true) {
            let create = json!({"vectors": {"size": dim, "distance": "Cosine"}});
            match self
                .vdb::<Value>(reqwest::Method::PUT, &path, Some(&create))
                .await?
            {
                // 409: created meanwhile by someone else; fine.
                Ok(_) | Err((409, _)) => {}
                Err((s, why)) => return Err(Error::vector_db(format!("{path}: {s}: {why}"))),
            }
            for field in ["user_id", "agent_id", "run_id"] {
                let index = CreateIndex {
                    field_name: field.into(),
                    field_schema: Some(json!("keyword")),
                };
                self.vdb::<Value>(reqwest::Method::PUT, &format!("{path}/index"), Some(&index))
                    .await?
                    .map_err(|(s, why)| Error::vector_db(format!("{path}/index: {s}: {why}")))?;
            }
        }
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Writes points (durable when answered). A collection deleted meanwhile (a reset of the
    /// vector store from elsewhere) is made again, once.
    pub async fn upsert(&self, points: Vec<PointStruct>) -> Result<(), Error> {
        let dim = match points.first().map(|p| &p.vector) {
            Some(VectorInput::Plain(v)) => v.len(),
            _ => 0,
        };
        let body = Upsert::Points { points };
        for _ in 0..2 {
            if self
                .on_collection::<Value>(reqwest::Method::PUT, "/points?wait=true", Some(&body))
                .await?
                .is_some()
            {
                return Ok(());
            }
            self.ensure_collection(dim).await?;
        }
        Err(Error::vector_db(format!(
            "the collection `{}` disappeared while writing",
            self.collection
        )))
    }

    /// The nearest points to `vector` passing `filter`.
    pub async fn query(
        &self,
        vector: Vec<f32>,
        filter: Filter,
        limit: usize,
        score_threshold: Option<f32>,
    ) -> Result<Vec<ScoredPoint>, Error> {
        #[derive(serde::Deserialize)]
        struct Points {
            points: Vec<ScoredPoint>,
        }
        let body = QueryRequest {
            query: Some(QueryInput::Vector(vector)),
            filter: Some(filter),
            limit: Some(limit as u64),
            with_payload: Some(WithPayload::All(true)),
            score_threshold,
            ..Default::default()
        };
        Ok(self
            .on_collection::<Points>(reqwest::Method::POST, "/points/query", Some(&body))
            .await?
            .map_or_else(Vec::new, |p| p.points))
    }

    /// One point with its payload and vector.
    pub async fn get(&self, id: &PointId) -> Result<Option<Record>, Error> {
        let body = RetrieveRequest {
            ids: vec![id.clone()],
            with_payload: Some(WithPayload::All(true)),
            with_vector: Some(json!(true)),
        };
        Ok(self
            .on_collection::<Vec<Record>>(reqwest::Method::POST, "/points", Some(&body))
            .await?
            .and_then(|mut v| v.pop()))
    }

    /// A page of points passing `filter`, in id order.
    pub async fn scroll(
        &self,
        filter: Option<Filter>,
        offset: Option<PointId>,
        limit: usize,
    ) -> Result<Page, Error> {
        let body = ScrollRequest {
            offset,
            limit: Some(limit as u64),
            filter,
            with_payload: Some(WithPayload::All(true)),
            with_vector: Some(json!(false)),
        };
        Ok(self
            .on_collection::<Page>(reqwest::Method::POST, "/points/scroll", Some(&body))
            .await?
            .unwrap_or(Page {
                points: Vec::new(),
                next_page_offset: None,
            }))
    }

    /// How many points pass `filter`.
    pub async fn count(&self, filter: Filter) -> Result<u64, Error> {
        let body = CountRequest {
            filter: Some(filter),
            exact: Some(true),
        };
        Ok(self
            .on_collection::<Count>(reqwest::Method::POST, "/points/count", Some(&body))
            .await?
            .map_or(0, |c| c.count))
    }

    /// Deletes points by id or by filter.
    pub async fn delete(&self, what: DeletePoints) -> Result<(), Error> {
        self.on_collection::<Value>(
            reqwest::Method::POST,
            "/points/delete?wait=true",
            Some(&what),
        )
        .await?;
        Ok(())
    }

    /// Drops the whole collection.
    pub async fn drop_collection(&self) -> Result<(), Error> {
        self.on_collection::<Value>(reqwest::Method::DELETE, "", None::<&()>)
            .await?;
        self.ready.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the vector store answers.
    pub async fn ping(&self) -> Result<(), String> {
        let res = self
            .http
            .get(format!("{}/readyz", self.vector_db))
            .send()
            .await
            .map_err(|e| format!("the vector store at {}: {e}", self.vector_db))?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "the vector store at {} answered {}",
                self.vector_db,
                res.status()
            ))
        }
    }
}

/// A point of `vector` and `payload`.
pub fn point(
    id: PointId,
    vector: Vec<f32>,
    payload: serde_json::Map<String, Value>,
) -> PointStruct {
    PointStruct {
        id,
        vector: VectorInput::Plain(vector),
        payload: Some(payload),
    }
}
