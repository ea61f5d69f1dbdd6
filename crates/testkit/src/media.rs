//! A speech, image and rerank server, as the OpenAI-compatible servers a homelab runs for
//! them serve these endpoints (speaches and LocalAI for audio, llama.cpp's and vLLM's
//! `/v1/rerank`): `/v1/audio/transcriptions` and `/translations` (multipart, read as a stream:
//! the file is counted and hashed, never held), `/v1/audio/speech` (audio bytes streamed in
//! pieces), `/v1/images/generations`, `/v1/rerank` (Cohere/Jina shape). No models: the
//! answers are derived from the request, so that tests can check what arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};

/// Bytes of audio per character of speech input.
pub const SPEECH_BYTES_PER_CHAR: usize = 4096;

/// The size of the pieces speech is streamed in.
const SPEECH_PIECE: usize = 16 * 1024;

/// An upload as the server received it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReceivedForm {
    pub path: String,
    /// The text fields, in order.
    pub fields: Vec<(String, String)>,
    pub file_name: Option<String>,
    pub file_bytes: u64,
    /// FNV-1a of the file.
    pub file_hash: u64,
    /// Whether the request came chunked (no `Content-Length`): streamed through.
    pub chunked: bool,
}

#[derive(Default)]
struct Shared {
    forms: Mutex<Vec<ReceivedForm>>,
    json: Mutex<Vec<(String, Value)>>,
}

/// A running media server.
#[derive(Clone)]
pub struct MediaUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MediaUpstream {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/audio/transcriptions", post(audio))
            .route("/v1/audio/translations", post(audio))
            .route("/v1/audio/speech", post(speech))
            .route("/v1/images/generations", post(images))
            .route("/v1/rerank", post(rerank))
            .with_state(shared.clone());
        let addr = crate::spawn(app).await;
        MediaUpstream { addr, shared }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every upload received.
    pub fn forms(&self) -> Vec<ReceivedForm> {
        self.shared.forms.lock().unwrap().clone()
    }

    /// Every JSON request received: (path, body).
    pub fn json_requests(&self) -> Vec<(String, Value)> {
        self.shared.json.lock().unwrap().clone()
    }
}

/// A multipart form with `parts` (name, file name, bytes) in this order, as a client sends
/// it (a file part typed `audio/wav`), and its content type.
pub fn form(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----homelab-test-7d1f";
    let mut body = Vec::new();
    for (name, file, data) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
        );
        if let Some(f) = file {
            body.extend_from_slice(
                format!("; filename=\"{f}\"\r\nContent-Type: audio/wav").as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// FNV-1a, 64 bits, over a stream of pieces.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// FNV-1a's starting value.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Byte `i` of the speech the server streams.
pub fn speech_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    (status, axum::Json(body)).into_response()
}

async fn audio(
    State(s): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(boundary) = multer::parse_boundary(ct) else {
        return error(StatusCode::BAD_REQUEST, "expected multipart/form-data");
    };
    let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
    let mut got = ReceivedForm {
        path: uri.path().to_owned(),
        file_hash: FNV_START,
        chunked: !headers.contains_key(header::CONTENT_LENGTH),
        ..ReceivedForm::default()
    };
    loop {
        match form.next_field().await {
            Ok(Some(mut field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                if name == "file" {
                    got.file_name = field.file_name().map(str::to_owned);
                    loop {
                        match field.chunk().await {
                            Ok(Some(c)) => {
                                got.file_bytes += c.len() as u64;
                                got.file_hash = fnv1a(got.file_hash, &c);
                            }
                            Ok(None) => break,
                            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
                        }
                    }
                } else {
                    match field.text().await {
                        Ok(t) => got.fields.push((name, t)),
                        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
                    }
                }
            }
            Ok(None) => break,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }
    let field = |n: &str| {
        got.fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let Some(file) = got.file_name.clone() else {
        return error(StatusCode::BAD_REQUEST, "file: required");
    };
    let model = field("model").unwrap_or_default();
    let text = format!(
        "{} bytes of {file} ({:016x}) heard by {model}",
        got.file_bytes, got.file_hash
    );
    let format = field("response_format").unwrap_or_else(|| "json".into());
    s.forms.lock().unwrap().push(got);
    match format.as_str() {
        "text" => text.into_response(),
        _ => axum::Json(json!({"text": text, "usage": {"type": "duration", "seconds": 3}}))
            .into_response(),
    }
}

async fn speech(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected JSON");
    };
    s.json
        .lock()
        .unwrap()
        .push(("/v1/audio/speech".into(), req.clone()));
    let Some(input) = req["input"].as_str().filter(|i| !i.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "input: required");
    };
    let total = input.chars().count() * SPEECH_BYTES_PER_CHAR;
    let ct = match req["response_format"].as_str() {
        Some("wav") => "audio/wav",
        Some("opus") => "audio/ogg",
        Some("flac") => "audio/flac",
        Some("pcm") => "audio/pcm",
        _ => "audio/mpeg",
    };
    let pieces = (0..total.div_ceil(SPEECH_PIECE)).map(move |k| {
        let start = k * SPEECH_PIECE;
        let end = (start + SPEECH_PIECE).min(total);
        Ok::<_, std::io::Error>(Bytes::from(
            (start..end).map(speech_byte).collect::<Vec<u8>>(),
        ))
    });
    let stream = futures_util::StreamExt::then(futures_util::stream::iter(pieces), |p| async {
        tokio::task::yield_now().await;
        p
    });
    ([(header::CONTENT_TYPE, ct)], Body::from_stream(stream)).into_response()
}

async fn images(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected JSON");
    };
    s.json
        .lock()
        .unwrap()
        .push(("/v1/images/generations".into(), req.clone()));
    let Some(prompt) = req["prompt"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "prompt: required");
    };
    let n = req["n"].as_u64().unwrap_or(1);
    let data: Vec<Value> = (0..n)
        .map(|i| {
            let image = format!("image {i} of {prompt}");
            json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(image), "revised_prompt": prompt})
        })
        .collect();
    axum::Json(json!({"created": 1_700_000_000, "data": data,
        "usage": {"input_tokens": prompt.split_whitespace().count(), "output_tokens": n * 100, "total_tokens": prompt.split_whitespace().count() as u64 + n * 100}}))
        .into_response()
}

async fn rerank(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected JSON");
    };
    s.json
        .lock()
        .unwrap()
        .push(("/v1/rerank".into(), req.clone()));
    let (Some(query), Some(docs)) = (req["query"].as_str(), req["documents"].as_array()) else {
        return error(StatusCode::BAD_REQUEST, "query and documents: required");
    };
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let text_of = |d: &Value| {
        d.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| d["text"].as_str().unwrap_or_default().to_owned())
    };
    let mut results: Vec<(usize, f64, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let text = text_of(d);
            let lower = text.to_lowercase();
            let hits = words.iter().filter(|w| lower.contains(w.as_str())).count();
            (i, hits as f64 / words.len().max(1) as f64, text)
        })
        .collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(n) = req["top_n"].as_u64() {
        results.truncate(n as usize);
    }
    let with_docs = req["return_documents"].as_bool().unwrap_or(false);
    let results: Vec<Value> = results
        .into_iter()
        .map(|(i, score, text)| {
            let mut r = json!({"index": i, "relevance_score": score});
            if with_docs {
                r["document"] = json!({"text": text});
            }
            r
        })
        .collect();
    let tokens = words.len() * docs.len();
    axum::Json(
        json!({"id": "rerank-1", "model": req["model"], "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
    .into_response()
}
