//! The Shortcuts endpoints over real HTTP, against an OpenAI-compatible upstream standing in
//! for the gateway (`testkit`'s, which streams as the gateway does) and a monitor: what a
//! shortcut sends in each form, what it gets back, and every way a request can go wrong.
//! The whole chain with the real gateway (keys and the request log) is tested in
//! platform/homelab/tests/shortcuts.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::upstream::{Behavior, MockUpstream};

struct Svc {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Svc {
    async fn start(tweak: impl FnOnce(&mut shortcuts::Config)) -> Svc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut config =
            shortcuts::Config::new("127.0.0.1:4003", "http://127.0.0.1:9", "http://127.0.0.1:9");
        config.web_fetch = String::new();
        tweak(&mut config);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            shortcuts::serve_on(listener, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Svc {
            url,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// An upstream answering `parts` (Markdown, as models write it).
async fn upstream(parts: &[&str]) -> MockUpstream {
    MockUpstream::start_with(
        "gw",
        Behavior {
            reply: Some(parts.iter().map(|p| (*p).to_owned()).collect()),
            ..Behavior::default()
        },
    )
    .await
}

fn gateway_of(up: &MockUpstream) -> String {
    format!("http://{}", up.addr)
}

const MARKDOWN: &[&str] = &[
    "**Paris** is ",
    "the capital of France.\n\n- It has ",
    "the *Louvre*.",
];
const SPOKEN: &str = "Paris is the capital of France. It has the Louvre.";

#[tokio::test]
async fn each_form_shortcuts_sends_gets_the_answer_as_plain_text() {
    let up = upstream(MARKDOWN).await;
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    let ask = format!("{}/ask", svc.url);
    // JSON (a dictionary), a form, and the raw text — each as Get Contents of URL sends it.
    let sends = [
        client()
            .post(&ask)
            .bearer_auth("device-key")
            .json(&json!({"text": "What is the capital of France?"})),
        client()
            .post(&ask)
            .bearer_auth("device-key")
            .form(&[("text", "What is the capital of France?")]),
        client()
            .post(&ask)
            .bearer_auth("device-key")
            .header("content-type", "text/plain")
            .body("What is the capital of France?"),
    ];
    for send in sends {
        let res = send.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert!(res.headers().contains_key("x-conversation-id"));
        assert!(res.headers().get("x-truncated").is_none());
        assert_eq!(res.text().await.unwrap(), SPOKEN);
    }
    // What reached the gateway: a stream, the key as the device sent it, the question last
    // after the spoken-answer system prompt, the default model.
    for r in up.requests() {
        let body = r.json();
        assert_eq!(body["stream"], true);
        assert_eq!(body["model"], "default");
        assert_eq!(r.headers["authorization"], "Bearer device-key");
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert!(
            messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("read aloud")
        );
        assert_eq!(
            messages.last().unwrap()["content"],
            "What is the capital of France?"
        );
    }
    // Flat JSON on request; `model` and `system` pass through.
    let v: Value = client()
        .post(format!("{ask}?format=json"))
        .json(&json!({"text": "Hi", "model": "big", "system": "Be terse."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["answer"], SPOKEN);
    assert_eq!(v["model"], "big");
    assert!(v["truncated"].is_null() && v["conversation"].is_string());
    let last = up.requests().last().unwrap().json();
    assert_eq!(last["model"], "big");
    assert_eq!(last["messages"][0]["content"], "Be terse.");
    svc.stop().await;
}

#[tokio::test]
async fn a_conversation_carries_its_turns_for_its_key_only() {
    let up = upstream(&["Sunny."]).await;
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    let ask = format!("{}/ask", svc.url);
    let first = client()
        .post(&ask)
        .bearer_auth("phone")
        .body("Weather today?")
        .send()
        .await
        .unwrap();
    let id = first.headers()["x-conversation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let again = client()
        .post(&ask)
        .bearer_auth("phone")
        .header("x-conversation-id", &id)
        .body("And tomorrow?")
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["x-conversation-id"], id.as_str());
    let messages = up.requests().last().unwrap().json()["messages"].clone();
    let said: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(said, ["Weather today?", "Sunny.", "And tomorrow?"]);
    // Another device with the same id starts afresh.
    client()
        .post(&ask)
        .bearer_auth("tablet")
        .header("x-conversation-id", &id)
        .body("Hello?")
        .send()
        .await
        .unwrap();
    let messages = up.requests().last().unwrap().json()["messages"].clone();
    assert_eq!(messages.as_array().unwrap().len(), 2);
    svc.stop().await;
}

#[tokio::test]
async fn the_deadline_returns_the_whole_sentences_so_far() {
    let up = MockUpstream::start_with(
        "gw",
        Behavior {
            reply: Some(vec![
                "One is done. ".into(),
                "Two is half".into(),
                " done.".into(),
            ]),
            // The role chunk and two parts, then nothing until released.
            hold_after: Some(3),
            ..Behavior::default()
        },
    )
    .await;
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    let res = client()
        .post(format!("{}/ask", svc.url))
        .header("x-deadline-ms", "1500")
        .body("Count.")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-truncated"], "deadline");
    assert_eq!(res.text().await.unwrap(), "One is done.");
    // Nothing said by the deadline: one sentence, 503.
    up.set(Behavior {
        reply: Some(vec!["Late.".into()]),
        hold_after: Some(1),
        ..Behavior::default()
    });
    let res = client()
        .post(format!("{}/ask", svc.url))
        .header("x-deadline-ms", "800")
        .body("Count.")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let text = res.text().await.unwrap();
    assert!(
        text.starts_with("The homelab did not answer in time"),
        "{text}"
    );
    up.release();
    svc.stop().await;
}

#[tokio::test]
async fn max_words_bounds_the_answer() {
    let up = upstream(&["One two three. ", "Four five six seven."]).await;
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    let res = client()
        .post(format!("{}/ask", svc.url))
        .json(&json!({"text": "Count", "max_words": "4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-truncated"], "max_words");
    assert_eq!(res.text().await.unwrap(), "One two three.");
    let body = up.requests().last().unwrap().json();
    assert_eq!(body["max_tokens"], 24);
    assert!(
        body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .ends_with("Answer in at most 4 words.")
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_long_job_is_polled_for_its_answer() {
    let up = MockUpstream::start_with(
        "gw",
        Behavior {
            reply: Some(vec!["A long answer.".into()]),
            hold_after: Some(1),
            ..Behavior::default()
        },
    )
    .await;
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    let res = client()
        .post(format!("{}/jobs", svc.url))
        .bearer_auth("phone")
        .body("Write a poem.")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let poll = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(res.text().await.unwrap().contains(&poll));
    let get = |key: &'static str| {
        let url = format!("{}{poll}", svc.url);
        async move { client().get(url).bearer_auth(key).send().await.unwrap() }
    };
    let running = get("phone").await;
    assert_eq!(running.status(), 202);
    assert_eq!(running.headers()["retry-after"], "5");
    assert_eq!(running.text().await.unwrap(), "Still working.");
    assert_eq!(
        get("tablet").await.status(),
        404,
        "another key's job is not there"
    );
    up.release();
    let mut done = None;
    for _ in 0..100 {
        let r = get("phone").await;
        if r.status() == 200 {
            done = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done.as_deref(), Some("A long answer."));
    let r = client()
        .get(format!("{}/jobs/nope", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.text().await.unwrap(),
        "There is no job with that id; it may have expired."
    );
    // A job is refused at once when it could only fail.
    let r = client()
        .post(format!("{}/jobs?task=dance", svc.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    svc.stop().await;
}

#[tokio::test]
async fn bad_requests_get_one_sentence() {
    let up = upstream(&["Fine."]).await;
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    let ask = format!("{}/ask", svc.url);
    let said = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        (s, r.text().await.unwrap())
    };
    let big = "x".repeat(64 * 1024 + 1);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client().post(&ask).body(big.clone()),
            413,
            "That is too long: send at most 64 kilobytes.",
        ),
        (
            client()
                .post(&ask)
                .header("content-type", "text/plain")
                .body("  "),
            400,
            "There is no text to ask about",
        ),
        (
            client().post(format!("{ask}?api_key=secret")).body("hi"),
            400,
            "Send the key in the Authorization header, not in the address.",
        ),
        (
            client()
                .post(&ask)
                .header("x-deadline-ms", "soon")
                .body("hi"),
            400,
            "X-Deadline-Ms must be a number of milliseconds.",
        ),
        (
            client()
                .post(&ask)
                .header("content-type", "application/json")
                .body("{\"text\": "),
            400,
            "The JSON could not be read",
        ),
        (
            client()
                .post(&ask)
                .json(&json!({"text": "hi", "max_words": 0})),
            400,
            "max_words must be at least 1.",
        ),
        (client().get(&ask), 405, "That method does not work here."),
        (
            client().post(format!("{}/nope", svc.url)),
            404,
            "There is no such endpoint here",
        ),
        (
            client()
                .post(format!("{}/summarise", svc.url))
                .json(&json!({"url": "https://example.org/"})),
            400,
            "This homelab cannot fetch web pages; send the text instead.",
        ),
    ];
    for (req, status, start) in cases {
        let (s, text) = said(req.send().await.unwrap()).await;
        assert_eq!(s, status, "{text}");
        assert!(text.starts_with(start), "{status}: {text}");
        assert!(
            !text.contains('{') && !text.contains('\n'),
            "one sentence: {text}"
        );
    }
    // The same errors as flat JSON when asked.
    let r = client()
        .post(format!("{ask}?format=json"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "That is too long: send at most 64 kilobytes.");
    assert_eq!(up.hits(), 0, "nothing bad reached the gateway");
    svc.stop().await;
}

#[tokio::test]
async fn the_gateways_refusals_are_said_plainly() {
    let up = upstream(&["x"]).await;
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    for (status, want_status, start) in [
        (401, 401, "The homelab did not accept this key."),
        (429, 429, "This device has asked too much"),
        (503, 503, "The homelab is busy"),
        (500, 502, "The homelab could not answer"),
    ] {
        up.set(Behavior {
            fail_status: Some(status),
            ..Behavior::default()
        });
        let r = client()
            .post(format!("{}/ask", svc.url))
            .body("hi")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want_status);
        if want_status == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        let text = r.text().await.unwrap();
        assert!(text.starts_with(start), "{status}: {text}");
    }
    svc.stop().await;
}

#[tokio::test]
async fn beyond_loopback_every_request_needs_a_key() {
    let up = upstream(&["Yes."]).await;
    let svc = Svc::start(|c| {
        c.gateway = gateway_of(&up);
        c.bind = "0.0.0.0:4003".into();
    })
    .await;
    let r = client()
        .post(format!("{}/ask", svc.url))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().starts_with("This needs a key"));
    assert_eq!(up.hits(), 0);
    let r = client()
        .post(format!("{}/ask", svc.url))
        .bearer_auth("phone")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Health probes need none.
    let r = client()
        .get(format!("{}/health", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    svc.stop().await;
}

#[tokio::test]
async fn summarise_and_status() {
    let up = upstream(&["It is about ", "*bees*."]).await;
    let monitor = testkit::spawn(axum::Router::new().route(
        "/api/status",
        axum::routing::get(|q: axum::extract::RawQuery| async move {
            assert_eq!(q.0.as_deref(), Some("format=text"));
            "All 7 services up."
        }),
    ))
    .await;
    let svc = Svc::start(|c| {
        c.gateway = gateway_of(&up);
        c.monitor = format!("http://{monitor}");
    })
    .await;
    let r = client()
        .post(format!("{}/summarise", svc.url))
        .form(&[("text", "Bees make honey. They live in hives.")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "It is about bees.");
    let body = up.requests().last().unwrap().json();
    assert!(
        body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Summarise")
    );
    assert!(
        body["messages"][1]["content"]
            .as_str()
            .unwrap()
            .ends_with("Bees make honey. They live in hives.")
    );
    let r = client()
        .get(format!("{}/status", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "All 7 services up.");
    let v: Value = client()
        .get(format!("{}/status?format=json", svc.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "All 7 services up.");
    svc.stop().await;
    // No monitor: said so.
    let svc = Svc::start(|c| c.gateway = gateway_of(&up)).await;
    let r = client()
        .get(format!("{}/status", svc.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("monitor cannot be reached")
    );
    svc.stop().await;
}
