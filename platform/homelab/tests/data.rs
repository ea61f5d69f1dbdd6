//! The data layer as `homelab up` runs it, over real HTTP: embeddings from the real
//! all-MiniLM-L6-v2 through the gateway's `embed` handle (the vectors sentence-transformers
//! gives), and the memory service over the vector store and those embeddings: add,
//! update-on-duplicate, search, history, update, delete, and per-user isolation — one user's
//! search or list never shows another user's memory — with mem0's shapes and errors.
//!
//! The embedding model comes from its PyPI package (as `homelab models pull minilm-l6`); the
//! chat model is the random-weight fixture. Skipped with a note outside CI without pip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::time::Duration;

use homelab::up::UpOptions;
use serde_json::{Value, json};
use testkit::models::{cosine, floats, minilm_reference};

fn tiny_chat_model() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../layer-inference/llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_and_memory_through_the_stack() {
    // The model is fetched (or found) before `up` so that its timeout is not spent on pip.
    if testkit::models::minilm().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = UpOptions {
        model: Some(tiny_chat_model()),
        embeddings: true,
        vector_db_port: Some(0),
        memory_port: Some(0),
        ..UpOptions::on_loopback(dir.path())
    };
    let (running, stop, task) = common::run_up(opts).await;
    let banner = homelab::up::banner(&running);
    assert!(banner.contains("model `embed`"), "{banner}");
    assert!(banner.contains("mem0's REST API"), "{banner}");
    let gateway = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", running.gateway),
    };

    // 1. Embeddings through the gateway's `embed` handle: the reference's vectors.
    let r = minilm_reference();
    let sentences = r["sentences"].as_array().unwrap()[..4].to_vec();
    let (status, v) = gateway
        .post(
            "/v1/embeddings",
            json!({"model": "embed", "input": sentences}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "minilm-l6");
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let c = cosine(&floats(&d["embedding"]), &floats(&r["vectors"][i]));
        assert!(c >= 0.999, "sentence {i}: cosine {c}");
    }
    let tokens: u64 = r["tokens"].as_array().unwrap()[..4]
        .iter()
        .map(|t| t.as_u64().unwrap())
        .sum();
    assert_eq!(v["usage"]["prompt_tokens"], tokens);
    // An input past the model's 256 tokens is cut, and the answer says so through the gateway.
    let res = gateway
        .http
        .post(format!("{}/v1/embeddings", gateway.base))
        .json(&json!({"model": "embed", "input": ["short", r["sentences"][10]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-homelab-truncated-inputs"], "1");

    // 2. Memory.
    let mem = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", running.memory.expect("memory runs")),
    };
    let (status, added) = mem
        .post(
            "/memories",
            json!({"messages": [{"role": "user", "content": "I live in Lyon and I work as a nurse."}], "user_id": "alice", "metadata": {"source": "chat"}}),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["results"][0]["event"], "ADD", "{added}");
    let lyon = added["results"][0]["id"].as_str().unwrap().to_owned();

    // A near-duplicate updates the memory instead of adding a second one.
    let (_, again) = mem
        .post(
            "/memories",
            json!({"text": "I live in Lyon and work as a nurse", "user_id": "alice"}),
        )
        .await;
    assert_eq!(again["results"][0]["event"], "UPDATE", "{again}");
    assert_eq!(again["results"][0]["id"], lyon.as_str());
    assert_eq!(
        again["results"][0]["previous_memory"],
        "I live in Lyon and I work as a nurse."
    );
    // The same text once more changes nothing.
    let (_, same) = mem
        .post(
            "/memories",
            json!({"text": "I live in Lyon and work as a nurse", "user_id": "alice"}),
        )
        .await;
    assert_eq!(same["results"][0]["event"], "NONE", "{same}");

    // Something else is a new memory; the same sentence for another user is that user's.
    let (_, tea) = mem
        .post(
            "/memories",
            json!({"text": "My favourite drink is green tea.", "user_id": "alice"}),
        )
        .await;
    assert_eq!(tea["results"][0]["event"], "ADD", "{tea}");
    let (_, bob) = mem
        .post(
            "/memories",
            json!({"text": "I live in Lyon and work as a nurse", "user_id": "bob"}),
        )
        .await;
    assert_eq!(bob["results"][0]["event"], "ADD", "{bob}");
    let bob_id = bob["results"][0]["id"].as_str().unwrap().to_owned();
    assert_ne!(bob_id, lyon);

    // Duplicates sent at once still end as one memory.
    let same_time = (0..4).map(|_| {
        mem.post(
            "/memories",
            json!({"text": "Dave's bike is a red Peugeot from 1982.", "user_id": "dave"}),
        )
    });
    let events: Vec<String> = futures_util::future::join_all(same_time)
        .await
        .into_iter()
        .map(|(status, v)| {
            assert_eq!(status, 200, "{v}");
            v["results"][0]["event"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        events.iter().filter(|e| *e == "ADD").count(),
        1,
        "{events:?}"
    );
    let (_, dave) = mem.get("/memories?user_id=dave").await;
    assert_eq!(dave["results"].as_array().unwrap().len(), 1, "{dave}");

    // Search: the nearest first, with scores, and only the asker's memories.
    let (status, found) = mem
        .post(
            "/search",
            json!({"query": "Which city does the user live in?", "user_id": "alice", "limit": 5}),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{found}");
    assert_eq!(results[0]["id"], lyon.as_str(), "{found}");
    assert!(results[0]["score"].as_f64().unwrap() > results[1]["score"].as_f64().unwrap());
    assert_eq!(results[0]["metadata"]["source"], "chat");
    assert!(!ids(&found).contains(&bob_id));
    let (_, drinks) = mem
        .post(
            "/search",
            json!({"query": "What does she like to drink?", "filters": {"user_id": "alice"}, "top_k": 1}),
        )
        .await;
    assert_eq!(
        drinks["results"][0]["memory"],
        "My favourite drink is green tea."
    );
    let (_, bobs) = mem
        .post(
            "/search",
            json!({"query": "What does she like to drink?", "user_id": "bob"}),
        )
        .await;
    assert_eq!(ids(&bobs), vec![bob_id.clone()]);

    // Lists are per user too.
    let (_, alice_all) = mem.get("/memories?user_id=alice").await;
    assert_eq!(alice_all["results"].as_array().unwrap().len(), 2);
    let (status, first) = mem.get("/memories?user_id=alice&top_k=1").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["results"].as_array().unwrap().len(), 1);
    assert!(!ids(&alice_all).contains(&bob_id));
    // Another user's memory by id is not found for them.
    let (status, _) = mem.get(&format!("/memories/{lyon}?user_id=bob")).await;
    assert_eq!(status, 404);
    let (status, one) = mem.get(&format!("/memories/{lyon}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["user_id"], "alice");
    assert_eq!(one["memory"], "I live in Lyon and work as a nurse");

    // Update by id, then the history tells the story.
    let (status, upd) = mem
        .call(
            reqwest::Method::PUT,
            &format!("/memories/{lyon}"),
            Some(json!({"text": "I moved to Grenoble; I still work as a nurse."})),
        )
        .await;
    assert_eq!(status, 200, "{upd}");
    let (_, history) = mem.get(&format!("/memories/{lyon}/history")).await;
    let events: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["ADD", "UPDATE", "UPDATE"], "{history}");
    assert_eq!(
        history[2]["new_memory"],
        "I moved to Grenoble; I still work as a nurse."
    );
    let (_, moved) = mem
        .post(
            "/search",
            json!({"query": "Grenoble", "user_id": "alice", "limit": 1}),
        )
        .await;
    assert_eq!(moved["results"][0]["id"], lyon.as_str());

    // Bad requests: mem0's `detail`, nothing stored.
    for (body, status, says) in [
        (json!({"text": "no owner"}), 400, "identifier"),
        (json!({"user_id": "alice"}), 400, "required"),
        (json!({"text": "   ", "user_id": "alice"}), 400, "empty"),
        (
            json!({"text": "x".repeat(9000), "user_id": "alice"}),
            400,
            "at most 8192",
        ),
        (json!({"messages": 5, "user_id": "alice"}), 422, "messages"),
    ] {
        let (got, v) = mem.post("/memories", body.clone()).await;
        assert_eq!(got, status, "{body}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    let (status, v) = mem.post("/search", json!({"query": "x"})).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = mem.get("/memories/not-a-memory").await;
    assert_eq!(status, 404, "{v}");
    let (_, alice_all) = mem.get("/memories?user_id=alice").await;
    assert_eq!(alice_all["results"].as_array().unwrap().len(), 2);

    // infer: the chat model here is random weights with a 512-token context, so it either
    // lists facts (stored, each one readable) or fails or lists none (502 naming the gateway,
    // nothing stored).
    let (status, inferred) = mem
        .post(
            "/memories",
            json!({"messages": [{"role": "user", "content": "I have two cats."}], "user_id": "carol", "infer": true}),
        )
        .await;
    let (_, carol) = mem.get("/memories?user_id=carol").await;
    match status {
        200 => {
            let added = inferred["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["event"] == "ADD")
                .count();
            assert_eq!(carol["results"].as_array().unwrap().len(), added);
        }
        502 => {
            assert!(
                inferred["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with("the gateway failed"),
                "{inferred}"
            );
            assert_eq!(carol["results"].as_array().unwrap().len(), 0);
        }
        other => panic!("infer answered {other}: {inferred}"),
    }

    // Deleting: one memory, then all of a user's; the other user keeps theirs.
    let (status, _) = mem.delete(&format!("/memories/{lyon}")).await;
    assert_eq!(status, 200);
    let (status, _) = mem.get(&format!("/memories/{lyon}")).await;
    assert_eq!(status, 404);
    let (status, _) = mem.delete("/memories").await;
    assert_eq!(status, 400, "deleting everyone's needs /reset");
    let (status, gone) = mem.delete("/memories?user_id=alice").await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["deleted"], 1);
    let (_, alice_all) = mem.get("/memories?user_id=alice").await;
    assert_eq!(alice_all["results"].as_array().unwrap().len(), 0);
    let (_, bob_all) = mem.get("/memories?user_id=bob").await;
    assert_eq!(ids(&bob_all), vec![bob_id]);

    // The vector store emptied from elsewhere: the next write makes the collection again.
    let vdb = format!("http://{}", running.vector_db.expect("vector-db runs"));
    let res = reqwest::Client::new()
        .delete(format!("{vdb}/collections/memories"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, v) = mem
        .post(
            "/memories",
            json!({"text": "Erin grows tomatoes.", "user_id": "erin"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["event"], "ADD");
    let (_, erin) = mem.get("/memories?user_id=erin").await;
    assert_eq!(erin["results"].as_array().unwrap().len(), 1, "{erin}");

    // The monitor sees the data layer up.
    let status = common::poll_json(
        &format!("http://{}/api/status", running.monitor),
        100,
        |v| {
            v["services"].as_array().is_some_and(|s| {
                s.iter()
                    .filter(|x| x["layer"] == "data")
                    .filter(|x| x["status"] == "up")
                    .count()
                    == 2
            })
        },
    )
    .await;
    let data: Vec<&Value> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["layer"] == "data")
        .collect();
    assert_eq!(data.len(), 2, "{status}");
    assert!(data.iter().all(|x| x["status"] == "up"), "{status}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
}
