//! The loop over real HTTP (the scripted testkit upstream, streaming tool calls in pieces)
//! and real MCP servers (the official Python SDK's, over stdio, SSE and Streamable HTTP).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::upstream::{Behavior, MockUpstream, ScriptedCall, Turn};
use tiny_agents::agent::{Event, Limits, Stop};

#[tokio::test]
async fn a_run_calls_a_tool_then_answers() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(vec![
        Turn::call("call_a", "echo", r#"{"text": "bees"}"#),
        Turn::text("Bees make honey."),
    ])
    .await;
    let (_root, dir) = folder(
        "helper",
        &json!({"model": "local", "servers": [stdio_server()]}),
        Some("You help with bees."),
    );
    let agent = agent(&dir, &up, Limits::default());
    let mut history = agent.new_history();
    let (outcome, events) = run(&agent, &mut history, "What do bees make?").await;
    assert_eq!(outcome.stop, Stop::Answered);
    // Tool turn, text turn, then the turn that must start with a tool call (abandoned).
    let bodies = chats(&up);
    assert_eq!(bodies.len(), 3, "{bodies:#?}");
    assert_eq!(outcome.turns, 3);
    let first = &bodies[0];
    assert_eq!(first["model"], "local");
    assert_eq!(first["stream"], true);
    assert_eq!(first["tool_choice"], "auto");
    assert_eq!(
        first["messages"][0],
        json!({"role": "system", "content": "You help with bees."})
    );
    assert_eq!(
        first["messages"][1],
        json!({"role": "user", "content": "What do bees make?"})
    );
    let names: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(&names[names.len() - 2..], ["task_complete", "ask_question"]);
    assert!(
        names.contains(&"echo") && names.contains(&"slow"),
        "{names:?}"
    );
    // The pieces were merged; the tool's answer is in the next request.
    let second = &bodies[1]["messages"];
    assert_eq!(
        second[2],
        json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "echo", "arguments": "{\"text\": \"bees\"}"}}]})
    );
    assert_eq!(
        second[3],
        json!({"role": "tool", "tool_call_id": "call_a", "name": "echo", "content": "echo: bees"})
    );
    assert_eq!(
        bodies[2]["messages"][4],
        json!({"role": "assistant", "content": "Bees make honey."})
    );
    // The history holds the same, and the events told the story.
    assert_eq!(history.len(), 5);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ToolCall { name, .. } if name == "echo"))
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::ToolResult { ok: true, content, .. } if content == "echo: bees")
    ));
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Bees make honey.");
    // Every model call carried the run's id.
    assert!(
        up.requests()
            .iter()
            .all(|r| r.headers["x-request-id"] == "run-1")
    );
}

#[tokio::test]
async fn a_text_answer_ends_the_run_at_once() {
    let up = scripted(vec![Turn::text("Hello there.")]).await;
    let (_root, dir) = folder("plain", &json!({"model": "local"}), None);
    let agent = agent(&dir, &up, Limits::default());
    let mut history = agent.new_history();
    let (outcome, _) = run(&agent, &mut history, "hi").await;
    assert_eq!(outcome.stop, Stop::Answered);
    assert_eq!(chats(&up).len(), 1);
    // No PROMPT.md: the original's default prompt.
    assert_eq!(
        history[0]["content"],
        tiny_agents::agent::DEFAULT_SYSTEM_PROMPT
    );
}

#[tokio::test]
async fn the_exit_tools_end_the_run() {
    for tool in ["task_complete", "ask_question"] {
        let up = scripted(vec![Turn::call("call_x", tool, "{}")]).await;
        let (_root, dir) = folder("quitter", &json!({"model": "local"}), None);
        let agent = agent(&dir, &up, Limits::default());
        let mut history = agent.new_history();
        let (outcome, _) = run(&agent, &mut history, "done?").await;
        assert_eq!(outcome.stop, Stop::Exit(tool.into()));
        assert_eq!(chats(&up).len(), 1);
        assert_eq!(
            history.last().unwrap(),
            &json!({"role": "tool", "tool_call_id": "call_x", "name": tool, "content": ""})
        );
    }
}

#[tokio::test]
async fn an_exit_tool_beside_other_calls_leaves_no_call_unanswered() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(vec![
        Turn::Calls(vec![
            ScriptedCall::new("c1", "echo", r#"{"text":"one"}"#),
            ScriptedCall::new("c2", "task_complete", "{}"),
            ScriptedCall::new("c3", "echo", r#"{"text":"three"}"#),
        ]),
        Turn::text("Next answer."),
    ])
    .await;
    let (_root, dir) = folder(
        "strict",
        &json!({"model": "local", "servers": [stdio_server()]}),
        None,
    );
    let agent = agent(&dir, &up, Limits::default());
    let mut history = agent.new_history();
    let (outcome, events) = run(&agent, &mut history, "go").await;
    assert_eq!(outcome.stop, Stop::Exit("task_complete".into()));
    // The call before the exit tool ran; the one after did not, but is answered.
    let ran: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCall { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ran, ["c1"]);
    let tools: Vec<_> = history.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tools.len(), 3);
    assert_eq!(tools[0]["content"], "echo: one");
    assert_eq!(tools[1]["content"], "");
    assert!(
        tools[2]["content"]
            .as_str()
            .unwrap()
            .starts_with("Not run: the run ended before this call (ended by task_complete)")
    );
    // The next prompt's request is acceptable to a strict backend.
    run(&agent, &mut history, "and now?").await;
    let bodies = chats(&up);
    every_call_answered(bodies.last().unwrap()["messages"].as_array().unwrap());
}

#[tokio::test]
async fn bad_calls_get_the_original_answers() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(vec![
        Turn::Calls(vec![
            ScriptedCall::new("c1", "echo", r#"{"text": "unterminated"#),
            ScriptedCall::new("c2", "no_such_tool", "{}"),
            ScriptedCall::new("c3", "fail", r#"{"reason":"testing"}"#),
            ScriptedCall::new("c4", "picture", ""),
            ScriptedCall::new("c5", "add", r#"{"a": 2, "b": 3}"#),
        ]),
        Turn::text("Done."),
    ])
    .await;
    let (_root, dir) = folder(
        "clumsy",
        &json!({"model": "local", "servers": [stdio_server()]}),
        None,
    );
    let mut agent = agent(&dir, &up, Limits::default());
    let db_dir = tempfile::tempdir().unwrap();
    let db = docsdb::Db::open(&format!("sqlite://{}/docs.db", db_dir.path().display()))
        .await
        .unwrap();
    let log = std::sync::Arc::new(docsdb::tool_calls::ToolCallWriter::spawn(
        db.clone(),
        Default::default(),
    ));
    agent.tool_log = Some(log.clone());
    let mut history = agent.new_history();
    let (outcome, events) = run(&agent, &mut history, "try things").await;
    assert_eq!(outcome.stop, Stop::Answered);
    // Every call that reached the tools is a row: the tool, its server (by the name it gives
    // itself), ok or the error; the call with broken JSON never left the agent.
    assert!(log.close().await);
    let mut rows = docsdb::tool_calls::recent(&db, 10, Some("run-1"))
        .await
        .unwrap();
    rows.reverse();
    let seen: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {} {:?} {}", r.caller, r.tool, r.server, r.ok))
        .collect();
    assert_eq!(
        seen,
        [
            "agent:clumsy no_such_tool None false",
            r#"agent:clumsy fail Some("agent-test") false"#,
            r#"agent:clumsy picture Some("agent-test") true"#,
            r#"agent:clumsy add Some("agent-test") true"#,
        ]
    );
    assert!(
        rows[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("failed on purpose: testing")),
        "{rows:?}"
    );
    assert!(rows[2].error.is_none() && rows[2].duration_ms > 0.0);
    let answers = tool_messages(&chats(&up)[1]);
    let content = |i: usize| answers[i]["content"].as_str().unwrap().to_owned();
    assert!(
        content(0).starts_with("Invalid JSON generated by the model: "),
        "{}",
        content(0)
    );
    assert_eq!(content(1), "Error: No session found for tool: no_such_tool");
    assert!(
        content(2).contains("failed on purpose: testing"),
        "{}",
        content(2)
    );
    assert_eq!(
        content(3),
        "[Binary Content: Image image/png, 5 bytes]\nThe task is complete and the content accessible to the User"
    );
    assert_eq!(content(4), "5");
    // Empty arguments went to the history as "{}".
    assert_eq!(
        chats(&up)[1]["messages"][2]["tool_calls"][3]["function"]["arguments"],
        "{}"
    );
    // The tool's own failure is reported as one.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::ToolResult { name, ok: false, .. } if name == "fail"))
    );
}

#[tokio::test]
async fn every_turn_counts_towards_the_turn_limit() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    // A model that never stops calling tools.
    let turns = (0..20)
        .map(|i| Turn::call(&format!("c{i}"), "echo", r#"{"text":"again"}"#))
        .collect();
    let up = scripted(turns).await;
    let (_root, dir) = folder(
        "loop",
        &json!({"model": "local", "servers": [stdio_server()]}),
        None,
    );
    let limits = Limits {
        max_turns: 3,
        ..Limits::default()
    };
    let agent = agent(&dir, &up, limits);
    let mut history = agent.new_history();
    let (outcome, _) = run(&agent, &mut history, "loop").await;
    assert_eq!(outcome.stop, Stop::MaxTurns(3));
    assert_eq!(chats(&up).len(), 3);
    every_call_answered(&history);
}

#[tokio::test]
async fn the_tool_call_limit_stops_the_run_and_answers_the_rest() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let calls = (0..4)
        .map(|i| ScriptedCall::new(&format!("c{i}"), "echo", r#"{"text":"x"}"#))
        .collect();
    let up = scripted(vec![Turn::Calls(calls)]).await;
    let (_root, dir) = folder(
        "busy",
        &json!({"model": "local", "servers": [stdio_server()]}),
        None,
    );
    let limits = Limits {
        max_tool_calls: 2,
        ..Limits::default()
    };
    let agent = agent(&dir, &up, limits);
    let mut history = agent.new_history();
    let (outcome, events) = run(&agent, &mut history, "many").await;
    assert_eq!(outcome.stop, Stop::MaxToolCalls(2));
    assert_eq!(outcome.tool_calls, 2);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::ToolCall { .. }))
            .count(),
        2
    );
    let tools: Vec<_> = history.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tools.len(), 4);
    assert!(
        tools[2]["content"]
            .as_str()
            .unwrap()
            .contains("limit of 2 tool calls")
    );
    assert_eq!(chats(&up).len(), 1);
}

#[tokio::test]
async fn the_deadline_stops_a_run_inside_a_slow_tool() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    let up = scripted(vec![
        Turn::Calls(vec![
            ScriptedCall::new("c1", "slow", r#"{"seconds": 30}"#),
            ScriptedCall::new("c2", "echo", r#"{"text":"after"}"#),
        ]),
        Turn::text("never asked"),
    ])
    .await;
    let (_root, dir) = folder(
        "sleepy",
        &json!({"model": "local", "servers": [stdio_server()]}),
        None,
    );
    let limits = Limits {
        deadline: Duration::from_secs(3),
        ..Limits::default()
    };
    let agent = agent(&dir, &up, limits);
    let mut history = agent.new_history();
    let (outcome, _) = run(&agent, &mut history, "wait").await;
    assert_eq!(outcome.stop, Stop::Deadline(Duration::from_secs(3)));
    assert_eq!(chats(&up).len(), 1);
    every_call_answered(&history);
}

#[tokio::test]
async fn inputs_reach_a_stdio_server_from_the_environment() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    // Input `home` is read from HOME, which every test process has.
    let home = std::env::var("HOME").unwrap();
    let up = scripted(vec![
        Turn::call("c1", "echo", r#"{"text":"x"}"#),
        Turn::text("ok"),
    ])
    .await;
    let mut server = stdio_server();
    server["env"] = json!({"ECHO_PREFIX": "at ${input:home}"});
    let (_root, dir) = folder(
        "withinput",
        &json!({"model": "local",
                "inputs": [{"type": "promptString", "id": "home", "description": "a prefix"}],
                "servers": [server]}),
        None,
    );
    let agent = agent(&dir, &up, Limits::default());
    let mut history = agent.new_history();
    run(&agent, &mut history, "echo").await;
    assert_eq!(
        tool_messages(&chats(&up)[1])[0]["content"],
        format!("at {home}: x")
    );
}

#[tokio::test]
async fn servers_over_sse_and_streamable_http() {
    if !testkit::mcp::python_sdk_available() {
        return;
    }
    for kind in ["sse", "http"] {
        let (_child, url) = http_server(kind).await;
        let up = scripted(vec![
            Turn::call("c1", "add", r#"{"a": 20, "b": 22}"#),
            Turn::text("42"),
        ])
        .await;
        let (_root, dir) = folder(
            "remote",
            &json!({"model": "local", "servers": [{"type": kind, "url": url, "allowed_tools": ["add", "echo"]}]}),
            None,
        );
        let agent = agent(&dir, &up, Limits::default());
        let mut history = agent.new_history();
        let (outcome, _) = run(&agent, &mut history, "add").await;
        assert_eq!(outcome.stop, Stop::Answered, "{kind}");
        let bodies = chats(&up);
        assert_eq!(tool_messages(&bodies[1])[0]["content"], "42", "{kind}");
        // allowed_tools: only those two are offered (before the exit tools).
        let names: Vec<&str> = bodies[0]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["echo", "add", "task_complete", "ask_question"],
            "{kind}"
        );
        // The handshake named the server and the revision it settled on.
        let servers = agent.toolbox.servers().await;
        assert_eq!(servers.len(), 1);
        assert!(servers[0].connected, "{kind}");
        assert_eq!(servers[0].name.as_deref(), Some("agent-test"), "{kind}");
        let revision = servers[0].protocol_version.clone().unwrap_or_default();
        assert!(
            revision.len() == 10 && revision.starts_with("20"),
            "{kind}: {revision}"
        );
        agent.toolbox.close().await;
    }
}

#[tokio::test]
async fn a_server_that_cannot_start_is_left_out() {
    let up = scripted(vec![Turn::text("Still here.")]).await;
    let (_root, dir) = folder(
        "broken",
        &json!({"model": "local", "servers": [{"type": "stdio", "command": "/nonexistent/mcp-server"}]}),
        None,
    );
    let agent = agent(&dir, &up, Limits::default());
    let (tools, failed) = agent.toolbox.tools().await;
    assert!(tools.is_empty());
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].to_string().contains("/nonexistent/mcp-server"),
        "{}",
        failed[0]
    );
    let mut history = agent.new_history();
    let (outcome, _) = run(&agent, &mut history, "hi").await;
    assert_eq!(outcome.stop, Stop::Answered);
}

#[tokio::test]
async fn a_refusing_endpoint_is_an_error_naming_it() {
    let up = MockUpstream::start_with(
        "down",
        Behavior {
            fail_status: Some(503),
            ..Default::default()
        },
    )
    .await;
    let (_root, dir) = folder("refused", &json!({"model": "local"}), None);
    let agent = agent(&dir, &up, Limits::default());
    let mut history = agent.new_history();
    history.push(json!({"role": "user", "content": "hi"}));
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let err = agent
        .run(
            &mut history,
            "r",
            &tx,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
}
