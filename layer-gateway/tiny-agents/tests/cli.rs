//! The `tiny-agents` binary: `run` in a terminal session, `serve` refusing a bad agent.json,
//! and the same agent folder under the Python reference (`huggingface_hub`'s `tiny-agents
//! run`) and under ours sending the backend the same requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use testkit::upstream::{Behavior, MockUpstream, ScriptedCall, Turn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_tiny-agents");

/// Waits until `up` has had `n` chat requests (and a moment more, to see none follows).
async fn wait_for_chats(up: &MockUpstream, n: usize) {
    for _ in 0..600 {
        if chats(up).len() >= n {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} chat requests, not {n}", chats(up).len());
}

#[tokio::test]
async fn run_is_a_terminal_session() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(vec![
        Turn::call("call_a", "echo", r#"{"text": "bees"}"#),
        Turn::text("Bees make honey."),
        Turn::text("(abandoned)"),
        Turn::text("Still me."),
    ])
    .await;
    let (_root, dir) = folder(
        "helper",
        &json!({"model": "local", "servers": [stdio_server()]}),
        None,
    );
    let mut child = tokio::process::Command::new(BIN)
        .arg("run")
        .arg(&dir)
        .args(["--endpoint", &up.base_url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"What do bees make?\n").await.unwrap();
    wait_for_chats(&up, 3).await;
    stdin.write_all(b"\nAnd you?\n").await.unwrap();
    wait_for_chats(&up, 4).await;
    drop(stdin);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(child.wait().await.unwrap().success(), "{out}");
    for want in [
        "It starts or reaches these MCP servers:\n  python3 ",
        "Agent loaded with 5 tools:\n • echo\n • fail\n",
        "<Tool call_a> echo {\"text\": \"bees\"}",
        "Tool[echo] call_a in ",
        "echo: bees",
        "Bees make honey.",
        "Still me.",
        "EOF received, exiting.",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    // The history was kept: the second question's request holds the first run.
    let last = chats(&up).pop().unwrap();
    let roles: Vec<&str> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "tool", "assistant", "user"]
    );
}

/// What a child printed so far, read in the background.
fn collect(out: tokio::process::ChildStdout) -> std::sync::Arc<std::sync::Mutex<String>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let into = seen.clone();
    tokio::spawn(async move {
        let mut out = out;
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

/// Waits until `seen` holds `want` `times` times.
async fn wait_for_output(seen: &std::sync::Mutex<String>, want: &str, times: usize) {
    for _ in 0..600 {
        if seen.lock().unwrap().matches(want).count() >= times {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{want:?} not seen {times} times in:\n{}",
        seen.lock().unwrap()
    );
}

/// Ctrl-C as a terminal sends it (SIGINT to the foreground process group): the first stops
/// the run inside a slow tool call — which is answered, logged as failed, and the stdio
/// server lives on for the next prompt — and two in a row at the prompt exit.
#[tokio::test]
async fn ctrl_c_stops_the_run_and_twice_exits() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(vec![
        Turn::call("call_s", "slow", r#"{"seconds": 60}"#),
        Turn::call("call_e", "echo", r#"{"text": "still here"}"#),
        Turn::text("After the interruption."),
        Turn::text("(abandoned)"),
    ])
    .await;
    let (root, dir) = folder(
        "sleeper",
        &json!({"model": "local", "servers": [stdio_server()]}),
        None,
    );
    let db_url = format!("sqlite://{}/docs.db", root.path().display());
    let mut child = tokio::process::Command::new(BIN)
        .arg("run")
        .arg(&dir)
        .args(["--endpoint", &up.base_url(), "--db", &db_url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let group = child.id().unwrap().to_string();
    let ctrl_c = || async {
        let sent = tokio::process::Command::new("kill")
            .args(["-INT", "--", &format!("-{group}")])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
    };
    let seen = collect(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    wait_for_output(&seen, "Agent loaded with", 1).await;
    stdin.write_all(b"Sleep a while.\n").await.unwrap();
    wait_for_output(&seen, "<Tool call_s> slow", 1).await;
    ctrl_c().await;
    wait_for_output(&seen, "Interrupted. Press Ctrl+C again to quit.", 1).await;
    stdin.write_all(b"Are you still there?\n").await.unwrap();
    wait_for_output(&seen, "After the interruption.", 1).await;
    ctrl_c().await;
    wait_for_output(&seen, "Interrupted. Press Ctrl+C again to quit.", 2).await;
    ctrl_c().await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("two Ctrl-C did not exit:\n{}", seen.lock().unwrap()))
        .unwrap();
    let out = seen.lock().unwrap().clone();
    assert!(status.success(), "{out}");
    assert!(out.contains("Exiting..."), "{out}");
    // The interrupted call was answered, and the server answered the next prompt's call.
    let bodies = chats(&up);
    let second = tool_messages(&bodies[1]);
    assert_eq!(second[0]["tool_call_id"], "call_s");
    assert_eq!(
        second[0]["content"],
        "Error: MCP tool call failed with error message: interrupted"
    );
    let third = tool_messages(&bodies[2]);
    assert_eq!(third[1]["content"], "echo: still here", "{third:?}");
    // Both calls are rows: the interrupted one failed.
    let db = docsdb::Db::open(&db_url).await.unwrap();
    let mut rows = docsdb::tool_calls::recent(&db, 10, None).await.unwrap();
    rows.reverse();
    let seen_rows: Vec<(String, bool)> = rows.iter().map(|r| (r.tool.clone(), r.ok)).collect();
    assert_eq!(
        seen_rows,
        [("slow".to_owned(), false), ("echo".to_owned(), true)]
    );
    assert_eq!(rows[0].caller, "agent:sleeper");
    db.close().await;
}

#[tokio::test]
async fn serve_refuses_a_bad_agent_file_naming_file_and_field() {
    let (_root, dir) = folder(
        "bad",
        &json!({"model": "local", "servers": [{"type": "http", "url": "http://127.0.0.1:1/mcp", "header": {}}]}),
        None,
    );
    let out = tokio::process::Command::new(BIN)
        .arg("serve")
        .arg(&dir)
        .args(["--bind", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}: servers[0].header: not a field of a http server",
        dir.join("agent.json").display()
    );
    assert!(err.contains(&want), "{err}");
}

/// Removes null members (the Python client sends `"tool_calls": null` on tool messages).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), without_nulls(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn reference_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import huggingface_hub.inference._mcp.cli, mcp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but huggingface_hub[mcp] is missing (pip install \"huggingface_hub[mcp]\")"
        );
    }
    ok
}

#[tokio::test]
async fn the_python_reference_and_ours_send_the_same_requests() {
    if !reference_available() {
        return;
    }
    let script = || {
        vec![
            Turn::Calls(vec![
                ScriptedCall::new("c1", "echo", r#"{"text": "same"}"#),
                ScriptedCall::new("c2", "add", r#"{"a": 1, "b": 2}"#),
            ]),
            Turn::call("c3", "no_such_tool", "{}"),
            Turn::text("All done."),
            Turn::text("(abandoned)"),
        ]
    };
    let up = scripted(script()).await;
    let (_root, dir) = folder(
        "same",
        &json!({"model": "local", "endpointUrl": up.base_url(), "servers": [stdio_server()]}),
        Some("Be exact."),
    );
    let ask = b"Compare us.\n";
    // The reference, which reads prompts until EOF: stopped once its run is over.
    let python = tokio::process::Command::new("python3")
        .args([
            "-c",
            "from huggingface_hub.inference._mcp.cli import app; app()",
            "run",
        ])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut python = python.unwrap();
    let mut stdin = python.stdin.take().unwrap();
    stdin.write_all(ask).await.unwrap();
    wait_for_chats(&up, 4).await;
    python.kill().await.unwrap();
    let theirs = chats(&up);

    up.set(Behavior {
        turns: script(),
        ..Default::default()
    });
    let mut ours = tokio::process::Command::new(BIN)
        .arg("run")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = ours.stdin.take().unwrap();
    stdin.write_all(ask).await.unwrap();
    wait_for_chats(&up, theirs.len() + 4).await;
    drop(stdin);
    assert!(ours.wait().await.unwrap().success());
    let ours = chats(&up)[theirs.len()..].to_vec();

    assert_eq!(theirs.len(), 4, "{theirs:#?}");
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in theirs.iter().zip(&ours).enumerate() {
        // The one difference: the exit tools come last, not first.
        let mut a = a.clone();
        if let Some(tools) = a["tools"].as_array_mut() {
            tools.rotate_left(2);
        }
        assert_eq!(without_nulls(&a), without_nulls(b), "request {i} differs");
    }
    // And the requests are the interesting ones: both tool answers, the unknown tool's.
    let tools = tool_messages(&ours[2]);
    assert_eq!(tools[0]["content"], "echo: same");
    assert_eq!(tools[1]["content"], "3");
    assert_eq!(
        tools[2]["content"],
        "Error: No session found for tool: no_such_tool"
    );
}

#[test]
fn the_example_agents_are_valid() {
    for ex in tiny_agents::EXAMPLES {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("agents")
            .join(ex.name);
        let def = tiny_agents::agent_file::load(&dir).unwrap();
        assert_eq!(def.name, ex.name);
        assert_eq!(def.servers.len(), ex.servers.len());
        for (_, url) in ex.servers {
            assert!(ex.agent_json.contains(url), "{}: {url}", ex.name);
        }
    }
}
