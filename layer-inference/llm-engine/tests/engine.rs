//! The engine on the deterministic random-weight fixture (`tests/fixtures`, written by
//! `make_tiny_gguf.py OUT --f16 --gpt2`): shapes, limits, seeds, queueing, priority and
//! yielding, cancellation.
//! The text is garbage by design; only its shape is checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use llm_engine::template::TemplateMessage;
use llm_engine::{
    Backend, Engine, EngineConfig, EngineError, Event, Finish, Input, Params, Priority,
    RequestState, SamplerRequest, Timings,
};
use tokio::sync::mpsc;

mod common;

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-random-gpt2tok-f16.gguf")
}

fn engine(parallel: usize, queue: usize) -> Arc<Engine> {
    engine_on(Backend::Candle, parallel, queue)
}

fn engine_on(backend: Backend, parallel: usize, queue: usize) -> Arc<Engine> {
    let mut cfg = EngineConfig::new(fixture());
    cfg.backend = backend;
    cfg.parallel = parallel;
    cfg.queue = queue;
    Arc::new(Engine::load(&cfg).unwrap())
}

fn chat(text: &str) -> Input {
    Input::Chat(vec![TemplateMessage {
        role: "user".into(),
        content: text.into(),
    }])
}

async fn run(e: &Arc<Engine>, input: Input, p: Params) -> (String, Finish, usize, usize) {
    let (text, done) = common::answer(e, input, p).await;
    let Event::Done {
        finish,
        prompt_tokens,
        completion_tokens,
        ..
    } = done
    else {
        unreachable!("answer ends with Done")
    };
    (text, finish, prompt_tokens, completion_tokens)
}

#[tokio::test]
async fn loads_and_reports_the_model() {
    let e = engine(1, 4);
    assert_eq!(e.model_id, "tiny-random-gpt2tok-f16");
    assert_eq!(e.context, 512);
    assert_eq!(e.info.architecture(), Some("llama"));
    // The chat template from the file wraps the message in ChatML.
    let toks = e.tokenize(&chat("hi")).unwrap();
    assert!(
        toks.contains(&1),
        "<|im_start|> is one special token: {toks:?}"
    );
}

#[tokio::test]
async fn max_tokens_gives_length_and_usage_counts() {
    let e = engine(1, 4);
    let (_, finish, prompt, completion) = run(
        &e,
        chat("hello"),
        Params {
            max_tokens: Some(5),
            sampling: SamplerRequest::greedy(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(finish, Finish::Length);
    assert_eq!(completion, 5);
    assert_eq!(prompt, e.tokenize(&chat("hello")).unwrap().len());
}

#[tokio::test]
async fn same_seed_same_text_and_greedy_is_deterministic() {
    let e = engine(1, 4);
    let p = |seed| Params {
        max_tokens: Some(12),
        sampling: SamplerRequest {
            temperature: Some(0.9),
            ..Default::default()
        },
        seed: Some(seed),
        ..Default::default()
    };
    let a = run(&e, chat("x"), p(7)).await.0;
    let b = run(&e, chat("x"), p(7)).await.0;
    assert_eq!(a, b);
    let g = |_: ()| Params {
        max_tokens: Some(12),
        sampling: SamplerRequest::greedy(),
        ..Default::default()
    };
    assert_eq!(
        run(&e, chat("x"), g(())).await.0,
        run(&e, chat("x"), g(())).await.0
    );
}

#[tokio::test]
async fn a_prompt_over_the_context_is_refused_with_the_numbers() {
    let e = engine(1, 4);
    let long = "the ".repeat(2000);
    let (tx, _rx) = mpsc::channel(4);
    let err = e
        .generate(Input::Text(long), Params::default(), tx)
        .await
        .unwrap_err();
    match err {
        EngineError::ContextExceeded { prompt, context } => {
            assert!(prompt > 512);
            assert_eq!(context, 512);
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_and_a_dropped_receiver_frees_the_slot() {
    let e = engine(1, 0);
    // Hold the only sequence with a long generation (this raw prompt runs to the limit on the
    // fixture) whose receiver we keep but do not read.
    let (tx, rx) = mpsc::channel(1);
    let e2 = e.clone();
    let long = tokio::spawn(async move {
        e2.generate(
            Input::Text("hello".into()),
            Params {
                max_tokens: Some(480),
                sampling: SamplerRequest::greedy(),
                ..Default::default()
            },
            tx,
        )
        .await
    });
    while e.busy() == 0 {
        assert!(
            !long.is_finished(),
            "the long request ended before it was seen"
        );
        tokio::task::yield_now().await;
    }
    let (tx2, _rx2) = mpsc::channel(4);
    let err = e
        .generate(chat("b"), Params::default(), tx2)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::QueueFull(_)), "{err}");
    // The client goes away: the sequence stops and the slot is free again.
    drop(rx);
    long.await.unwrap().unwrap();
    assert_eq!(e.busy(), 0);
    let (text, _, _, c) = run(
        &e,
        chat("a"),
        Params {
            max_tokens: Some(3),
            sampling: SamplerRequest::greedy(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(c, 3, "{text}");
}

/// The llama.cpp backend behaves like candle: limits, usage, seeds.
#[cfg(feature = "llama-cpp")]
#[tokio::test]
async fn llama_cpp_backend_serves_the_fixture() {
    let mut cfg = EngineConfig::new(fixture());
    cfg.backend = llm_engine::Backend::LlamaCpp;
    let e = Arc::new(Engine::load(&cfg).unwrap());
    assert_eq!(e.backend, llm_engine::Backend::LlamaCpp);
    let (_, finish, prompt, completion) = run(
        &e,
        chat("hello"),
        Params {
            max_tokens: Some(5),
            sampling: SamplerRequest::greedy(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((finish, completion), (Finish::Length, 5));
    assert_eq!(prompt, e.tokenize(&chat("hello")).unwrap().len());
    let p = |seed| Params {
        max_tokens: Some(12),
        sampling: SamplerRequest {
            temperature: Some(0.9),
            ..Default::default()
        },
        seed: Some(seed),
        ..Default::default()
    };
    assert_eq!(
        run(&e, chat("x"), p(7)).await.0,
        run(&e, chat("x"), p(7)).await.0
    );
}

#[cfg(not(feature = "llama-cpp"))]
#[test]
fn without_the_feature_llama_cpp_is_a_clear_error() {
    let mut cfg = EngineConfig::new(fixture());
    cfg.backend = llm_engine::Backend::LlamaCpp;
    let err = Engine::load(&cfg).unwrap_err().to_string();
    assert!(err.contains("--features llama-cpp"), "{err}");
}

/// Generates greedily with a priority and id; returns the events in order.
fn params(max_tokens: u32, priority: Priority, id: &str) -> Params {
    Params {
        max_tokens: Some(max_tokens),
        sampling: SamplerRequest::greedy(),
        priority,
        request_id: Some(id.into()),
        ..Default::default()
    }
}

async fn events(
    e: Arc<Engine>,
    input: Input,
    max_tokens: u32,
    priority: Priority,
    id: &str,
) -> Vec<Event> {
    let (tx, mut rx) = mpsc::channel(1024);
    let p = params(max_tokens, priority, id);
    let task = tokio::spawn(async move { e.generate(input, p, tx).await });
    let mut out = Vec::new();
    while let Some(ev) = rx.recv().await {
        out.push(ev);
    }
    task.await.unwrap().unwrap();
    out
}

fn text_of(evs: &[Event]) -> String {
    evs.iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn timings_of(evs: &[Event]) -> Timings {
    match evs.last() {
        Some(Event::Done { timings, .. }) => *timings,
        other => panic!("no Done: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_runs_before_background_work_which_resumes_unchanged() {
    parks_and_resumes_unchanged(Backend::Candle).await;
}

/// On llama.cpp the parked sequence's KV leaves its stream for the chat (one stream with
/// `--parallel 1`) and comes back.
#[cfg(feature = "llama-cpp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_llama_cpp_a_parked_sequence_gives_its_stream_and_resumes_unchanged() {
    parks_and_resumes_unchanged(Backend::LlamaCpp).await;
}

async fn parks_and_resumes_unchanged(backend: Backend) {
    let e = engine_on(backend, 1, 4);
    // What the background request generates when nothing interrupts it.
    // (This raw prompt runs to the limit on the fixture: the request is long enough to be
    // interrupted.)
    let long = || Input::Text("hello".into());
    let alone = events(e.clone(), long(), 400, Priority::BACKGROUND, "ref").await;
    assert_eq!(timings_of(&alone).parked_ms, 0.0);
    assert!(matches!(
        alone.last(),
        Some(Event::Done {
            completion_tokens: 400,
            ..
        })
    ));

    let bg = tokio::spawn(events(e.clone(), long(), 400, Priority::BACKGROUND, "bg"));
    // Once it generates, a chat arrives.
    loop {
        if let Some(RequestState::Generating { tokens, .. }) = e.request_state("bg")
            && tokens > 0
        {
            break;
        }
        assert!(
            !bg.is_finished(),
            "the background request ended before it was seen"
        );
        tokio::task::yield_now().await;
    }
    let chat_events = events(e.clone(), chat("b"), 5, Priority::INTERACTIVE, "chat").await;
    assert!(
        !bg.is_finished(),
        "the chat finished while the background request was parked"
    );
    assert!(
        matches!(chat_events.first(), Some(Event::Queued { ahead: 0 })),
        "the chat waited for the yield, first in line: {:?}",
        chat_events.first()
    );
    let bg_events = bg.await.unwrap();
    assert_eq!(
        text_of(&bg_events),
        text_of(&alone),
        "resumed with its cache intact: the same greedy text"
    );
    let t = timings_of(&bg_events);
    assert!(t.parked_ms > 0.0, "{t:?}");
    assert!(t.predicted_ms > 0.0, "{t:?}");
    assert_eq!(e.busy(), 0);
    assert_eq!(e.waiting(), 0);
    assert!(e.request_state("bg").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_room_for_both_background_work_pauses_while_a_chat_runs() {
    let e = engine(4, 4);
    let long = || Input::Text("hello".into());
    let alone = events(e.clone(), long(), 400, Priority::BACKGROUND, "ref").await;
    let bg = tokio::spawn(events(e.clone(), long(), 400, Priority::BACKGROUND, "bg"));
    let generated = |e: &Arc<Engine>| match e.request_state("bg") {
        Some(RequestState::Generating { tokens, .. }) => tokens,
        _ => 0,
    };
    while generated(&e) == 0 {
        assert!(
            !bg.is_finished(),
            "the background request ended before it was seen"
        );
        tokio::task::yield_now().await;
    }
    // The chat gets a sequence at once (no queue, no parking) and runs alone: the
    // background sequence, still holding its place, generates nothing meanwhile.
    let chat_task = tokio::spawn(events(
        e.clone(),
        long(),
        480,
        Priority::INTERACTIVE,
        "chat",
    ));
    let chat_tokens = |e: &Arc<Engine>| match e.request_state("chat") {
        Some(RequestState::Generating { tokens, .. }) => Some(tokens),
        _ => None,
    };
    while chat_tokens(&e).is_none_or(|t| t < 2) {
        assert!(
            !chat_task.is_finished(),
            "the chat ended before it was seen"
        );
        tokio::task::yield_now().await;
    }
    let before = generated(&e);
    while chat_tokens(&e).is_some_and(|t| t < 100) {
        tokio::task::yield_now().await;
    }
    let after = generated(&e);
    assert!(
        chat_tokens(&e).is_some(),
        "the chat ended before it could be watched"
    );
    assert_eq!(before, after, "background work went on during the chat");
    let chat_events = chat_task.await.unwrap();
    assert!(
        !matches!(chat_events.first(), Some(Event::Queued { .. })),
        "{:?}",
        chat_events.first()
    );
    assert_eq!(timings_of(&chat_events).parked_ms, 0.0);
    let bg_events = bg.await.unwrap();
    assert_eq!(
        text_of(&bg_events),
        text_of(&alone),
        "it went on where it was"
    );
}

#[tokio::test]
async fn the_template_end_of_turn_token_stops_and_defaults_are_llama_cpp_s() {
    let e = engine(1, 4);
    let im_end = e.tokenize(&Input::Text("<|im_end|>".into())).unwrap();
    assert_eq!(im_end.len(), 1, "one control token");
    assert!(e.stop_ids().contains(&im_end[0]), "{:?}", e.stop_ids());
    // The fixture has no `general.sampling.*` keys: llama.cpp's defaults apply.
    assert_eq!(
        e.sampler_defaults.settings,
        llm_engine::SamplerSettings::LLAMA_CPP
    );
    assert!(e.sampler_defaults.from_model_file.is_empty());
}

#[tokio::test]
async fn an_empty_prompt_is_refused() {
    let e = engine(1, 4);
    let (tx, _rx) = mpsc::channel(4);
    let err = e
        .generate(Input::Text(String::new()), Params::default(), tx)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::EmptyPrompt), "{err}");
}
