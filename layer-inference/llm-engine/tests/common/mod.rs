//! What the engine's tests share.

use std::sync::Arc;

use llm_engine::{Engine, Event, Input, Params};
use tokio::sync::mpsc;

/// Generates `input` to its end: the answer's text and its `Event::Done`.
pub async fn answer(e: &Arc<Engine>, input: Input, p: Params) -> (String, Event) {
    let (tx, mut rx) = mpsc::channel(64);
    let e2 = e.clone();
    let task = tokio::spawn(async move { e2.generate(input, p, tx).await });
    let mut text = String::new();
    let mut done = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            ev @ Event::Done { .. } => done = Some(ev),
            Event::Queued { .. } => {}
        }
    }
    task.await.unwrap().unwrap();
    (text, done.expect("a Done event"))
}
