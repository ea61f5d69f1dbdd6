//! What Open WebUI 0.12.4 sent upstream in one recorded session (the fixture in
//! `crates/contract/tests/fixtures`): for tests and benchmarks that replay it.

use serde_json::Value;

/// The recording: one JSON object per line (`method`, `path`, `headers`, `body`).
pub const RECORDED: &str =
    include_str!("../../contract/tests/fixtures/openwebui-0.12.4-upstream-requests.jsonl");

/// Every recorded request.
pub fn records() -> Vec<Value> {
    RECORDED
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every recorded body (`null` for the GETs), addressed to `model`.
pub fn bodies_for(model: &str) -> Vec<Value> {
    records()
        .into_iter()
        .map(|r| {
            let mut b = r["body"].clone();
            if b.is_object() {
                b["model"] = Value::from(model);
            }
            b
        })
        .collect()
}

/// The recorded indices of one chat turn: the title task, the chat, the follow-up and tags
/// tasks, then the user's next chat message.
pub const TITLE: usize = 4;
pub const CHAT: usize = 5;
pub const FOLLOW_UPS: usize = 6;
pub const TAGS: usize = 7;
pub const NEXT_CHAT: usize = 8;

/// The user's side of a ten-turn chat about two cities, each question leaning on the
/// answers before it (for cases that resend a growing history each turn).
pub const TEN_TURNS: [&str; 10] = [
    "What is the capital of France?",
    "And of Germany?",
    "Which of the two cities is bigger?",
    "Tell me one fact about it.",
    "What river runs through it?",
    "Name a famous museum there.",
    "What language do they speak?",
    "What is a typical dish?",
    "How old is the city?",
    "Thanks. Summarise what we said.",
];
