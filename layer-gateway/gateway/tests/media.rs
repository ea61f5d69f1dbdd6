//! Audio, images and rerank through a real gateway, in front of the test speech/image/rerank
//! server: the official OpenAI SDK's `audio.transcriptions`, `audio.translations`,
//! `audio.speech` (streamed back) and `images.generate`; rerank in the Cohere/Jina shape; a
//! form that sends its file before its `model`; the endpoints' `offers` keeping audio away
//! from a chat-only handle; a request-log row with bytes for each; and a large upload through
//! the gateway binary, whose memory stays bounded while the file streams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Gateway, handle, target};
use docsdb::spec::{Api, EndpointSpec, Offer, Strategy, SystemSpec, TargetSpec};
use serde_json::{Value, json};
use testkit::media::{FNV_START, MediaUpstream, fnv1a, form};
use testkit::upstream::MockUpstream;

/// Handles `whisper`, `tts`, `img`, `reranker` on `media` (an endpoint that offers those
/// APIs) and `chat` on a chat-only upstream.
fn media_spec(media: &MediaUpstream, chat: &MockUpstream) -> SystemSpec {
    let mut box_ = EndpointSpec::new("speech-box", &media.base_url(), Api::Openai);
    box_.offers = Some(vec![
        Offer::Transcriptions,
        Offer::Translations,
        Offer::Speech,
        Offer::Images,
        Offer::Rerank,
    ]);
    let on_box = |h: &str, model: &str| {
        handle(
            h,
            Strategy::Priority,
            vec![TargetSpec::on_endpoint("speech-box", model)],
        )
    };
    SystemSpec {
        endpoints: vec![box_],
        handles: vec![
            on_box("whisper", "Systran/faster-whisper-small"),
            on_box("tts", "kokoro"),
            on_box("img", "sdxl-turbo"),
            on_box("reranker", "bge-reranker-v2-m3"),
            handle(
                "chat",
                Strategy::Priority,
                vec![target("llm", &chat.base_url(), "llama")],
            ),
        ],
        ..Default::default()
    }
}

/// POSTs a form to the gateway's transcriptions route with the master key.
async fn transcribe(gw: &Gateway, (content_type, body): (String, Vec<u8>)) -> reqwest::Response {
    gw.client()
        .post(format!("{}/v1/audio/transcriptions", gw.url))
        .bearer_auth("sk-master-test")
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

fn audio(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7) % 256) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_images_and_rerank_are_routed_by_model() {
    let media = MediaUpstream::start().await;
    let chat = MockUpstream::start("chat").await;
    let gw = Gateway::start(media_spec(&media, &chat), |c| {
        c.master_key = Some("sk-master-test".into());
        // A file sent before the model waits on disk beyond 64 KiB.
        c.upload_memory = 64 * 1024;
    })
    .await;
    let mut expected_rows = 0;
    if common::python_module("openai") {
        let url = format!("{}/v1", gw.url);
        let out = common::python_script("media_sdk_compat.py", &[&url, "sk-master-test"]).await;
        assert!(out.contains("7 passed, 0 failed"), "{out}");
        expected_rows += 7;
        // The whole file arrived, streamed (chunked), with the target's model name.
        let forms = media.forms();
        let big = &forms[0];
        let size = 3 * 1024 * 1024 + 17;
        assert_eq!(big.file_bytes, size as u64);
        assert_eq!(big.file_hash, fnv1a(FNV_START, &audio(size)));
        assert!(big.chunked, "streamed to the target");
        assert!(
            big.fields
                .contains(&("model".into(), "Systran/faster-whisper-small".into())),
            "{:?}",
            big.fields
        );
        assert!(big.fields.contains(&("language".into(), "fr".into())));
        assert_eq!(forms[1].path, "/v1/audio/translations");
        assert_eq!(chat.hits(), 0, "the chat-only handle was sent nothing");
    }

    // A form whose file comes first (curl -F file=@… -F model=…), larger than the memory
    // budget: held in a temporary file until `model`, then sent whole.
    let talk = audio(300_000);
    let first = form(&[
        ("file", Some("first.wav"), &talk),
        ("model", None, b"whisper"),
        ("response_format", None, b"json"),
    ]);
    let res = transcribe(&gw, first).await;
    assert_eq!(res.status(), 200);
    let text = res.json::<Value>().await.unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.starts_with("300000 bytes of first.wav") && text.ends_with("faster-whisper-small"),
        "{text}"
    );
    let last = media.forms().last().cloned().unwrap();
    assert_eq!(last.file_hash, fnv1a(FNV_START, &talk));
    expected_rows += 1;

    // Forms the gateway cannot route: no model, not a form.
    let res = transcribe(&gw, form(&[("file", Some("a.wav"), b"RIFF")])).await;
    assert_eq!(res.status(), 400);
    let err = res.json::<Value>().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no `model` field"),
        "{err}"
    );
    expected_rows += 1;

    // Rerank, in the Cohere/Jina shape.
    let res = gw
        .post(
            "/v1/rerank",
            Some("sk-master-test"),
            &json!({"model": "reranker", "query": "red fox", "top_n": 2, "return_documents": true,
                "documents": ["a blue whale", "the red fox jumps", "a fox in the snow"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let ranked = res.json::<Value>().await.unwrap();
    assert_eq!(ranked["results"][0]["index"], 1, "{ranked}");
    assert_eq!(ranked["results"][1]["index"], 2, "{ranked}");
    assert_eq!(
        ranked["results"][0]["document"]["text"],
        "the red fox jumps"
    );
    assert_eq!(ranked["results"].as_array().unwrap().len(), 2);
    let sent = media.json_requests();
    let (_, rerank) = sent.iter().find(|(p, _)| p == "/v1/rerank").unwrap();
    assert_eq!(rerank["model"], "bge-reranker-v2-m3");
    expected_rows += 1;

    // Every request is a row of its route, with the bytes it moved.
    let rows = gw.log_rows_at_least(expected_rows).await;
    assert_eq!(rows.len(), expected_rows, "{rows:#?}");
    let row = |route: &str| {
        rows.iter()
            .find(|r| r["route"] == route && r["status"] == 200)
            .unwrap_or_else(|| panic!("no {route} row: {rows:#?}"))
    };
    if expected_rows > 3 {
        let t = row("transcriptions");
        assert!(
            t["request_bytes"].as_i64().unwrap() > 3 * 1024 * 1024,
            "{t}"
        );
        assert_eq!(t["upstream_model"], "Systran/faster-whisper-small");
        let s = row("speech");
        assert_eq!(s["response_bytes"], 11 * 4096, "{s}");
        assert_eq!(s["streamed"], false);
        row("translations");
        let i = row("images");
        assert_eq!(i["prompt_tokens"], 3, "{i}");
        let refused = rows
            .iter()
            .find(|r| r["error_type"] == "not_offered")
            .unwrap();
        assert_eq!(
            (refused["status"].as_i64(), refused["handle"].as_str()),
            (Some(400), Some("chat"))
        );
    }
    let r = row("rerank");
    assert!(r["response_bytes"].as_i64().unwrap() > 50, "{r}");
    assert_eq!(r["prompt_tokens"], 6, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_refused_and_logged() {
    let media = MediaUpstream::start().await;
    let chat = MockUpstream::start("chat").await;
    let gw = Gateway::start(media_spec(&media, &chat), |c| {
        c.max_upload = 256 * 1024;
    })
    .await;
    let big = audio(600_000);
    for (parts, declared) in [
        (
            vec![
                ("model", None, &b"whisper"[..]),
                ("file", Some("big.wav"), &big[..]),
            ],
            true,
        ),
        (
            vec![
                ("model", None, &b"whisper"[..]),
                ("file", Some("big.wav"), &big[..]),
            ],
            false,
        ),
    ] {
        let (ct, body) = form(&parts);
        let req = gw
            .client()
            .post(format!("{}/v1/audio/transcriptions", gw.url))
            .header("content-type", ct);
        // Declared: refused from its length, unread. Chunked: refused as it streams.
        let req = if declared {
            req.body(body)
        } else {
            let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
                body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
            req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
        };
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 413, "declared: {declared}");
        let err = res.json::<Value>().await.unwrap();
        assert_eq!(err["error"]["code"], "request_too_large", "{err}");
    }
    let rows = gw.log_rows_at_least(2).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        rows.iter()
            .all(|r| r["route"] == "transcriptions" && r["status"] == 413),
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_streams_through_in_bounded_memory() {
    const SIZE: usize = 96 * 1024 * 1024;
    const PIECE: usize = 256 * 1024;
    let media = MediaUpstream::start().await;
    let chat = MockUpstream::start("chat").await;
    let gw = common::Process::start(
        &media_spec(&media, &chat),
        &["--upload-memory", "1MiB"],
        &[],
    )
    .await;
    let (url, client) = (gw.url.clone(), reqwest::Client::new());
    // Warm it (a first request sets up its pools), then measure.
    let res = client
        .post(format!("{url}/v1/rerank"))
        .json(&json!({"model": "reranker", "query": "q", "documents": ["q"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, before) = gw.memory_kib();

    // Model first (as the SDKs send it) and file first (on disk until the model comes): the
    // body is generated piece by piece here, streamed through the gateway, and hashed by the
    // server; neither end holds it.
    for model_first in [true, false] {
        let boundary = "----homelab-big";
        let head = |name: &str, file: bool| {
            let f = if file {
                "; filename=\"long.wav\"\r\nContent-Type: audio/wav"
            } else {
                ""
            };
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{f}\r\n\r\n")
        };
        let model_part = format!("{}whisper\r\n", head("model", false)).into_bytes();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        if model_first {
            pieces.push(model_part.clone());
        }
        pieces.push(head("file", true).into_bytes());
        let file_pieces = SIZE / PIECE;
        let tail = {
            let mut t = b"\r\n".to_vec();
            if !model_first {
                t.extend_from_slice(&model_part);
            }
            t.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            t
        };
        let before_file = pieces;
        let stream = futures_util::stream::iter(
            before_file
                .into_iter()
                .chain((0..file_pieces).map(|k| {
                    (k * PIECE..(k + 1) * PIECE)
                        .map(|i| ((i * 7) % 256) as u8)
                        .collect()
                }))
                .chain(std::iter::once(tail))
                .map(Ok::<_, std::io::Error>),
        );
        let res = client
            .post(format!("{url}/v1/audio/transcriptions"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "model first: {model_first}");
        let text = res.json::<Value>().await.unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            text.starts_with(&format!("{SIZE} bytes of long.wav")),
            "{text}"
        );
    }
    let hash = (0..SIZE / PIECE).fold(FNV_START, |h, k| {
        let piece: Vec<u8> = (k * PIECE..(k + 1) * PIECE)
            .map(|i| ((i * 7) % 256) as u8)
            .collect();
        fnv1a(h, &piece)
    });
    let forms = media.forms();
    assert_eq!(forms.len(), 2);
    assert!(
        forms
            .iter()
            .all(|f| f.file_bytes == SIZE as u64 && f.file_hash == hash && f.chunked)
    );
    let (peak, _) = gw.memory_kib();
    let grew_mib = peak.saturating_sub(before) as f64 / 1024.0;
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "two uploads of {} MiB: gateway RSS {:.1} MiB before, peak {:.1} MiB (+{grew_mib:.1} MiB)",
            SIZE >> 20,
            before as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    }
    assert!(
        grew_mib < 24.0,
        "the gateway's memory grew by {grew_mib:.1} MiB while {} MiB streamed through",
        SIZE >> 20
    );
    gw.stop().await;
}
