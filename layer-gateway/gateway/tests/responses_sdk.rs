//! The official OpenAI Python SDK's `client.responses` against a real gateway in front of the
//! test upstream: plain, streamed, a function-call round trip over `previous_response_id`
//! (stored in the system-docs DB), retrieve and delete, a streamed call, structured output
//! (`text.format`), refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_responses_work_against_the_gateway() {
    if !common::python_module("openai") {
        return;
    }
    let (gw, plain, scripted) = common::chat_and_tools().await;
    let url = format!("{}/v1", gw.url);
    let stdout = common::python_script("responses_sdk_compat.py", &[&url, "sk-master-test"]).await;
    assert!(stdout.contains("11 passed, 0 failed"), "{stdout}");

    // The instructions became the system message; the continued response brought back the
    // first turn (question and call) before the tool's output.
    let first = plain.requests()[0].json();
    assert_eq!(
        first["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    let round = scripted.requests()[1].json();
    let msgs = round["messages"].as_array().unwrap();
    assert_eq!(
        msgs[0],
        json!({"role": "user", "content": "Weather in Paris?"})
    );
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "call_w1", "{round}");
    assert_eq!(
        msgs[2],
        json!({"role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"})
    );
    // `text.format` reached the upstream as chat's `response_format`.
    let shaped = plain.requests().last().unwrap().json();
    assert_eq!(shaped["response_format"]["type"], "json_schema", "{shaped}");
    assert_eq!(shaped["response_format"]["json_schema"]["name"], "place");
    assert_eq!(shaped["response_format"]["json_schema"]["strict"], true);
    // Only the stored response is in the DB (the other one stored was deleted), under the key that stored it.
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT model, key_name FROM responses")
            .fetch_all(gw.db.pool())
            .await
            .unwrap();
    assert_eq!(stored, [("tools".to_owned(), Some("master".to_owned()))]);
    // Each request is a request-log row of the responses route.
    let rows = gw.log_rows_at_least(9).await;
    let routes: Vec<&str> = rows.iter().filter_map(|r| r["route"].as_str()).collect();
    assert_eq!(routes, ["responses"; 9]);
}
