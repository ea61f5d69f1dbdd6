//! The older MCP transport, HTTP+SSE (revision 2024-11-05), which some servers (Gradio's
//! among them) still speak and the official Rust SDK no longer has: a `GET` opens an event
//! stream whose first event, `endpoint`, names the URL to `POST` messages to; answers and
//! server messages arrive on the stream as `message` events. An rmcp [`Transport`], so the
//! SDK runs the protocol over it.

use std::collections::BTreeMap;
use std::future::Future;

use futures_util::StreamExt;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::RoleClient;
use rmcp::transport::Transport;
use tokio::sync::mpsc;

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SseError(String);

/// The most messages waiting to be read before the stream is paused.
const BUFFER: usize = 64;

/// A connected HTTP+SSE session.
pub struct SseTransport {
    http: reqwest::Client,
    post_url: url::Url,
    headers: reqwest::header::HeaderMap,
    incoming: mpsc::Receiver<ServerJsonRpcMessage>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SseTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseTransport")
            .field("post_url", &self.post_url.as_str())
            .finish()
    }
}

impl SseTransport {
    /// Opens the event stream at `url` and waits for the `endpoint` event.
    pub async fn connect(
        http: reqwest::Client,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let base = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header {k}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|e| format!("header {k}: {e}"))?;
            map.insert(name, value);
        }
        let res = http
            .get(base.clone())
            .headers(map.clone())
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| format!("cannot open the event stream: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("the event stream answered {}", res.status()));
        }
        let mut body = res.bytes_stream();
        let mut decoder = contract::sse::SseDecoder::new();
        let mut pending = Vec::new();
        // The first event names where to post.
        let post_url = 'found: loop {
            let Some(chunk) = body.next().await else {
                return Err("the event stream ended before naming its endpoint".into());
            };
            let chunk = chunk.map_err(|e| format!("the event stream broke: {e}"))?;
            decoder
                .push_into(&chunk, &mut pending)
                .map_err(|e| e.to_string())?;
            while !pending.is_empty() {
                let ev = pending.remove(0);
                if ev.event.as_deref() == Some("endpoint") {
                    let u = base
                        .join(ev.data.trim())
                        .map_err(|e| format!("the endpoint event is not a URL: {e}"))?;
                    if u.origin() != base.origin() {
                        return Err(format!(
                            "the endpoint {u} is not on the server's origin; refused"
                        ));
                    }
                    break 'found u;
                }
            }
        };
        let (tx, incoming) = mpsc::channel(BUFFER);
        let reader = tokio::spawn(async move {
            let mut events = pending;
            loop {
                for ev in events.drain(..) {
                    if ev.event.as_deref().is_some_and(|e| e != "message") {
                        continue;
                    }
                    match serde_json::from_str::<ServerJsonRpcMessage>(&ev.data) {
                        Ok(m) => {
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "not a JSON-RPC message on the event stream; skipped")
                        }
                    }
                }
                match body.next().await {
                    Some(Ok(chunk)) => {
                        if let Err(e) = decoder.push_into(&chunk, &mut events) {
                            tracing::warn!(error = %e, "the event stream is unreadable");
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "the event stream broke");
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok(SseTransport {
            http,
            post_url,
            headers: map,
            incoming,
            reader,
        })
    }
}

impl Transport<RoleClient> for SseTransport {
    type Error = SseError;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let request = self
            .http
            .post(self.post_url.clone())
            .headers(self.headers.clone())
            .json(&item);
        async move {
            let res = request
                .send()
                .await
                .map_err(|e| SseError(format!("cannot post: {e}")))?;
            if !res.status().is_success() {
                let status = res.status();
                let text = res.text().await.unwrap_or_default();
                return Err(SseError(format!("the server answered {status}: {text}")));
            }
            Ok(())
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ServerJsonRpcMessage>> + Send {
        self.incoming.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        Ok(())
    }
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
