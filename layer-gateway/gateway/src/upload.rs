//! Audio uploads (`/v1/audio/transcriptions`, `/v1/audio/translations`): a multipart form
//! whose `model` field names the handle. The form is read only until that field; the parts
//! before it are held (in memory up to `--upload-memory`, then in a temporary file, so a form
//! that sends the file first costs disk, not memory), and the rest is streamed to the target
//! as it arrives, with the upstream model in place of the handle. Nothing holds a whole file
//! in memory; the client's body is capped at `--max-upload` while it streams.
//!
//! A stream can be sent once: an upload goes to the first target that takes it, with no retry
//! or fallback once it is on its way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::error::Error;

/// The largest `model` field read.
const MODEL_FIELD_MAX: usize = 1024;

/// Chunks in flight between the form reader and the upstream request.
const CHANNEL_CHUNKS: usize = 4;

/// The size of the pieces a held file is read back in.
const FILE_CHUNK: usize = 64 * 1024;

/// A part's headers, as they are written again.
#[derive(Debug, Clone)]
struct PartHead {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
}

/// A part read before `model`.
enum Held {
    Memory(PartHead, Bytes),
    File(PartHead, tokio::fs::File),
    /// The `model` part itself: written with the target's model.
    Model,
}

/// An upload read up to its `model` field.
pub struct Upload {
    /// The handle the form names.
    pub model: String,
    /// The client's `Content-Type` (its boundary is kept: the parts are the same).
    pub content_type: String,
    boundary: String,
    held: Vec<Held>,
    rest: multer::Multipart<'static>,
    read: Arc<AtomicU64>,
    too_large: Arc<AtomicBool>,
}

impl Upload {
    /// Bytes read from the client so far.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    /// Set once the client's body went over `--max-upload`.
    pub fn over_limit(&self) -> Arc<AtomicBool> {
        self.too_large.clone()
    }

    /// The form for a target that knows the model as `upstream_model`, streamed: the held
    /// parts, then the rest as the client sends it.
    pub fn into_body(self, upstream_model: String) -> reqwest::Body {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHANNEL_CHUNKS);
        tokio::spawn(async move {
            if let Err(e) = self.send(upstream_model, &tx).await {
                // The reader failed (a broken or oversized client body): the upstream
                // request fails with it.
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        reqwest::Body::wrap_stream(stream)
    }

    async fn send(
        mut self,
        upstream_model: String,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), std::io::Error> {
        let put = |b: Bytes| async { tx.send(Ok(b)).await.map_err(|_| gone()) };
        for held in std::mem::take(&mut self.held) {
            match held {
                Held::Model => {
                    let head = PartHead {
                        name: "model".into(),
                        file_name: None,
                        content_type: None,
                    };
                    put(part_head(&self.boundary, &head)).await?;
                    put(Bytes::from(upstream_model.clone().into_bytes())).await?;
                    put(Bytes::from_static(b"\r\n")).await?;
                }
                Held::Memory(head, data) => {
                    put(part_head(&self.boundary, &head)).await?;
                    put(data).await?;
                    put(Bytes::from_static(b"\r\n")).await?;
                }
                Held::File(head, mut file) => {
                    put(part_head(&self.boundary, &head)).await?;
                    file.seek(std::io::SeekFrom::Start(0)).await?;
                    loop {
                        let mut buf = BytesMut::with_capacity(FILE_CHUNK);
                        if file.read_buf(&mut buf).await? == 0 {
                            break;
                        }
                        put(buf.freeze()).await?;
                    }
                    put(Bytes::from_static(b"\r\n")).await?;
                }
            }
        }
        while let Some(mut field) = self.rest.next_field().await.map_err(io)? {
            put(part_head(&self.boundary, &head_of(&field))).await?;
            while let Some(chunk) = field.chunk().await.map_err(io)? {
                put(chunk).await?;
            }
            put(Bytes::from_static(b"\r\n")).await?;
        }
        put(Bytes::from(format!("--{}--\r\n", self.boundary))).await
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the upstream request went away",
    )
}

fn io(e: multer::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn head_of(field: &multer::Field<'_>) -> PartHead {
    PartHead {
        name: field.name().unwrap_or_default().to_owned(),
        file_name: field.file_name().map(str::to_owned),
        content_type: field.content_type().map(ToString::to_string),
    }
}

/// A name in a `Content-Disposition` header, quoted as browsers do.
fn quoted(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn part_head(boundary: &str, h: &PartHead) -> Bytes {
    let mut s = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"",
        quoted(&h.name)
    );
    if let Some(f) = &h.file_name {
        s.push_str(&format!("; filename=\"{}\"", quoted(f)));
    }
    if let Some(ct) = &h.content_type {
        s.push_str(&format!("\r\nContent-Type: {ct}"));
    }
    s.push_str("\r\n\r\n");
    Bytes::from(s)
}

/// Reads a multipart `body` until its `model` field. `max`: the most bytes the client may
/// send in all; `memory`: the most bytes of earlier parts held in memory.
pub async fn read_head(
    body: Body,
    content_type: &str,
    max: u64,
    memory: u64,
) -> Result<Upload, Error> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        Error::BadRequest(
            "the request body must be a form, sent with `Content-Type: multipart/form-data; boundary=...`"
                .into(),
        )
    })?;
    let read = Arc::new(AtomicU64::new(0));
    let too_large = Arc::new(AtomicBool::new(false));
    let (counter, flag) = (read.clone(), too_large.clone());
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| {
            if service_kit::body::over_limit(&e) {
                flag.store(true, Ordering::Relaxed);
            }
            std::io::Error::other(e.to_string())
        })?;
        let total = counter.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if total > max {
            flag.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("the upload is over --max-upload"));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let mut form = multer::Multipart::new(stream, boundary.clone());
    let failed = |e: multer::Error, too_large: &AtomicBool| {
        if too_large.load(Ordering::Relaxed) {
            Error::UploadTooLarge(max)
        } else {
            Error::BadRequest(format!("could not read the form: {e}"))
        }
    };
    let mut held = Vec::new();
    let mut in_memory: u64 = 0;
    loop {
        let Some(mut field) = form.next_field().await.map_err(|e| failed(e, &too_large))? else {
            return Err(Error::BadRequest(
                "the form has no `model` field (the handle to use)".into(),
            ));
        };
        let head = head_of(&field);
        if head.name == "model" {
            let mut value = Vec::new();
            while let Some(c) = field.chunk().await.map_err(|e| failed(e, &too_large))? {
                value.extend_from_slice(&c);
                if value.len() > MODEL_FIELD_MAX {
                    return Err(Error::BadRequest(format!(
                        "the `model` field is longer than {MODEL_FIELD_MAX} bytes"
                    )));
                }
            }
            let model = String::from_utf8(value)
                .map_err(|_| Error::BadRequest("the `model` field is not UTF-8 text".into()))?
                .trim()
                .to_owned();
            if model.is_empty() {
                return Err(Error::BadRequest(
                    "you must provide a `model` (a handle name)".into(),
                ));
            }
            held.push(Held::Model);
            return Ok(Upload {
                model,
                content_type: content_type.to_owned(),
                boundary,
                held,
                rest: form,
                read,
                too_large,
            });
        }
        // A part before `model`: in memory while the budget lasts, then in a file.
        let mut buf = BytesMut::new();
        let mut file: Option<tokio::fs::File> = None;
        while let Some(c) = field.chunk().await.map_err(|e| failed(e, &too_large))? {
            match &mut file {
                Some(f) => f.write_all(&c).await.map_err(spool_error)?,
                None if in_memory + (buf.len() + c.len()) as u64 > memory => {
                    let std_file = tokio::task::spawn_blocking(tempfile::tempfile)
                        .await
                        .map_err(|e| spool_error(std::io::Error::other(e.to_string())))?
                        .map_err(spool_error)?;
                    let mut f = tokio::fs::File::from_std(std_file);
                    f.write_all(&buf).await.map_err(spool_error)?;
                    f.write_all(&c).await.map_err(spool_error)?;
                    buf = BytesMut::new();
                    file = Some(f);
                }
                None => buf.extend_from_slice(&c),
            }
        }
        match file {
            Some(mut f) => {
                f.flush().await.map_err(spool_error)?;
                held.push(Held::File(head, f));
            }
            None => {
                in_memory += buf.len() as u64;
                held.push(Held::Memory(head, buf.freeze()));
            }
        }
    }
}

fn spool_error(e: std::io::Error) -> Error {
    tracing::error!(error = %e, "an upload part could not be held in a temporary file");
    Error::Spool(e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use testkit::media::form;

    /// The form as the target receives it, parsed again.
    async fn sent(upload: Upload, model: &str) -> Vec<(String, Option<String>, Vec<u8>)> {
        let ct = upload.content_type.clone();
        let body = upload.into_body(model.into());
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        let boundary = multer::parse_boundary(&ct).unwrap();
        let mut m = multer::Multipart::new(
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) }),
            boundary,
        );
        let mut out = Vec::new();
        while let Some(f) = m.next_field().await.unwrap() {
            let (n, fname) = (
                f.name().unwrap().to_owned(),
                f.file_name().map(str::to_owned),
            );
            out.push((n, fname, f.bytes().await.unwrap().to_vec()));
        }
        out
    }

    #[tokio::test]
    async fn the_model_is_replaced_and_every_part_kept_in_order() {
        let audio: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        // The file first (as curl's -F order often has it), over the memory budget: it waits
        // in a file.
        let (ct, body) = form(&[
            ("file", Some("a.wav"), &audio),
            ("model", None, b"whisper"),
            ("language", None, b"fr"),
        ]);
        let up = read_head(Body::from(body.clone()), &ct, 10 << 20, 1024)
            .await
            .unwrap();
        assert_eq!(up.model, "whisper");
        assert!(matches!(up.held[0], Held::File(..)));
        let parts = sent(up, "Systran/faster-whisper-small").await;
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].0.as_str(), parts[0].1.as_deref()),
            ("file", Some("a.wav"))
        );
        assert_eq!(parts[0].2, audio);
        assert_eq!(
            parts[1],
            (
                "model".into(),
                None,
                b"Systran/faster-whisper-small".to_vec()
            )
        );
        assert_eq!(parts[2], ("language".into(), None, b"fr".to_vec()));
    }

    #[tokio::test]
    async fn bad_forms_are_refused_with_what_is_wrong() {
        let (ct, body) = form(&[("file", Some("a.wav"), b"RIFF")]);
        let e = read_head(Body::from(body), &ct, 1 << 20, 1 << 20)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("no `model` field"), "{e}");
        let e = read_head(Body::from("x"), "application/json", 1 << 20, 1 << 20)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("multipart/form-data"), "{e}");
        let (ct, body) = form(&[("file", Some("a.wav"), &[0u8; 5000]), ("model", None, b"w")]);
        let e = read_head(Body::from(body), &ct, 1000, 1 << 20)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, Error::UploadTooLarge(1000)), "{e}");
    }
}
