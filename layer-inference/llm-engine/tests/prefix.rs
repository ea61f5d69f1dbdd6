//! Prefix reuse and batching on the real default model (SmolLM2-135M, from its PyPI
//! package), on every backend this build has: a request that starts from a cached prefix
//! gives exactly the tokens it gives read cold; the cache holds no more than its budget,
//! least recently used out first; sequences run in one batch give what each gives alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use llm_engine::template::TemplateMessage;
use llm_engine::{
    Backend, Engine, EngineConfig, Event, HAS_LLAMA_CPP, Input, Params, SamplerRequest,
};

mod common;

fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Candle];
    if HAS_LLAMA_CPP {
        b.push(Backend::LlamaCpp);
    }
    b
}

fn engine(backend: Backend, parallel: usize, cache_mb: usize) -> Option<Arc<Engine>> {
    let mut cfg = EngineConfig::new(testkit::models::smollm2()?);
    cfg.backend = backend;
    cfg.parallel = parallel;
    cfg.context = 2048;
    cfg.prefix_cache_mb = Some(cache_mb);
    Some(Arc::new(Engine::load(&cfg).unwrap()))
}

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage {
        role: role.into(),
        content: content.into(),
    }
}

const SYSTEM: &str = "You are a helpful assistant who answers in plain words and keeps it short.";

fn greedy(max_tokens: u32) -> Params {
    Params {
        max_tokens: Some(max_tokens),
        sampling: SamplerRequest {
            temperature: Some(0.0),
            ..SamplerRequest::default()
        },
        ..Params::default()
    }
}

/// The answer's text, its completion tokens and the prompt tokens served from the cache.
async fn ask(
    e: &Arc<Engine>,
    messages: Vec<TemplateMessage>,
    max_tokens: u32,
) -> (String, usize, usize) {
    let (text, done) = common::answer(e, Input::Chat(messages), greedy(max_tokens)).await;
    let Event::Done {
        completion_tokens,
        cached_tokens,
        ..
    } = done
    else {
        unreachable!("answer ends with Done")
    };
    (text, completion_tokens, cached_tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_prefix_gives_the_same_tokens_as_reading_it_cold() {
    for backend in backends() {
        let Some(warm) = engine(backend, 1, 256) else {
            return;
        };
        let cold = engine(backend, 1, 0).unwrap();
        let first = vec![
            msg("system", SYSTEM),
            msg("user", "What do cats like to eat?"),
        ];
        let (answer, _, cached) = ask(&warm, first.clone(), 24).await;
        assert_eq!(cached, 0, "{backend:?}: nothing is cached yet");
        // The next turn of the same chat, and another chat with the same system prompt.
        let mut turn2 = first.clone();
        turn2.push(msg("assistant", &answer));
        turn2.push(msg("user", "And dogs?"));
        let other = vec![
            msg("system", SYSTEM),
            msg("user", "Name a large city in Spain."),
        ];
        // On llama.cpp with one stream: the next turn takes the first's entry over in its
        // stream; the other chat copies the system prompt out of the second turn's entry,
        // which first moves to host memory to free the stream; the first question again
        // copies its prefix back in from there.
        let cases = [
            ("next turn", turn2),
            ("same system prompt", other),
            ("first question again", first),
        ];
        for (what, messages) in cases {
            let (w, wn, wc) = ask(&warm, messages.clone(), 24).await;
            let (c, cn, cc) = ask(&cold, messages, 24).await;
            assert!(
                wc > 10,
                "{backend:?} {what}: only {wc} tokens from the cache"
            );
            assert_eq!(cc, 0, "{backend:?} {what}: the cold engine keeps nothing");
            assert_eq!(
                (w, wn),
                (c, cn),
                "{backend:?} {what}: the cached prefix changed the answer"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_to_its_budget_and_drops_the_least_recently_used() {
    for backend in backends() {
        // 2 MiB: one ~60-token prompt's KV fits (SmolLM2: 23 KB per token), two do not.
        let Some(e) = engine(backend, 1, 2) else {
            return;
        };
        // About 60 tokens each.
        let a = || {
            vec![
                msg(
                    "system",
                    "Alpha is a patient guide who walks travellers through old harbour towns, naming every boat, every lighthouse and every tavern on the way.",
                ),
                msg("user", "Tell me about the moon and the tides of the sea."),
            ]
        };
        let b = || {
            vec![
                msg(
                    "system",
                    "Beta counts sheep on the green hills at night and keeps a ledger of their names, their colours and the fences they jumped.",
                ),
                msg(
                    "user",
                    "Tell me about the sun and the winds over the hills.",
                ),
            ]
        };
        let budget = 2 << 20;
        ask(&e, a(), 4).await;
        assert!(
            e.stats
                .prefix_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                <= budget
        );
        let (_, _, hit) = ask(&e, a(), 4).await;
        assert!(
            hit > 10,
            "{backend:?}: the same prompt again reads from the cache ({hit})"
        );
        ask(&e, b(), 4).await;
        assert!(
            e.stats
                .prefix_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                <= budget
        );
        let (_, _, b_again) = ask(&e, b(), 4).await;
        assert!(b_again > 10, "{backend:?}: the newest stays ({b_again})");
        // A was used least recently: it made room for B. Only what A shares with B (the
        // template's opening tokens) is found again.
        let (_, _, a_again) = ask(&e, a(), 4).await;
        assert!(
            a_again < 8,
            "{backend:?}: the least recently used went first ({a_again} cached)"
        );
        assert!(
            e.stats
                .prefix_entries
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_decoded_together_give_what_each_gives_alone() {
    for backend in backends() {
        let Some(together) = engine(backend, 4, 0) else {
            return;
        };
        let alone = engine(backend, 1, 0).unwrap();
        let questions = [
            "Write a haiku about rain.",
            "What is two plus two?",
            "Describe a red bicycle.",
            "Why is the sky blue?",
        ];
        let chat = |q: &str| vec![msg("system", SYSTEM), msg("user", q)];
        let mut tasks = Vec::new();
        for q in questions {
            let e = together.clone();
            let m = chat(q);
            tasks.push(tokio::spawn(async move { ask(&e, m, 40).await }));
        }
        let mut batched = Vec::new();
        for t in tasks {
            batched.push(t.await.unwrap());
        }
        let steps = together
            .stats
            .steps
            .load(std::sync::atomic::Ordering::Relaxed);
        let fed = together
            .stats
            .step_tokens
            .load(std::sync::atomic::Ordering::Relaxed);
        for (q, b) in questions.iter().zip(&batched) {
            let a = ask(&alone, chat(q), 40).await;
            if backend == Backend::Candle {
                assert_eq!((&a.0, a.1), (&b.0, b.1), "{backend:?}: {q}");
            } else {
                // llama.cpp's kernels round differently for other batch shapes, so greedy
                // decoding may part where two tokens are nearly tied: the answers start
                // alike, and where they part is said.
                let same =
                    a.0.chars()
                        .zip(b.0.chars())
                        .take_while(|(x, y)| x == y)
                        .count();
                if same < a.0.len().min(b.0.len()) {
                    eprintln!(
                        "note: {backend:?} batched and alone part after {same} characters: {q}"
                    );
                }
                assert!(
                    same >= 40.min(a.0.len()),
                    "{backend:?}: {q}: {:?} vs {:?}",
                    a.0,
                    b.0
                );
            }
        }
        // They did run together: fewer forward passes than tokens generated.
        let generated: usize = batched.iter().map(|b| b.1).sum();
        assert!(
            (steps as usize) < generated,
            "{backend:?}: {steps} steps for {generated} tokens ({fed} fed)"
        );
    }
}
