//! The proxy over real HTTP against backends that answer each prompt deterministically: the
//! calls each approach makes (how many, at what temperature, with what prompts), the
//! selection rules and their precedence, `&`, `|` and `n`, `none` streaming byte for byte
//! with tool calls, progress streaming, and the refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

type Script = Arc<dyn Fn(&Value, usize) -> Vec<String> + Send + Sync>;

/// A backend that answers by `script(request, call number)`, one choice per string, and
/// records every request. With `refuse_n`, it answers `n > 1` with 400 as llama-server does.
#[derive(Clone)]
struct Scripted {
    script: Script,
    log: Arc<Mutex<Vec<Value>>>,
    refuse_n: bool,
    /// Calls whose last user message holds the text take that long.
    slow: Option<(&'static str, std::time::Duration)>,
    /// Calls in flight now, and the most there were at once.
    in_flight: Arc<Mutex<(usize, usize)>>,
}

async fn scripted_chat(State(s): State<Scripted>, Json(body): Json<Value>) -> Response {
    let call = {
        let mut log = s.log.lock().unwrap();
        log.push(body.clone());
        log.len()
    };
    {
        let mut f = s.in_flight.lock().unwrap();
        f.0 += 1;
        f.1 = f.1.max(f.0);
    }
    let wait = match s.slow {
        Some((text, d)) if last_user(&body).contains(text) => d,
        _ => std::time::Duration::from_millis(20),
    };
    tokio::time::sleep(wait).await;
    s.in_flight.lock().unwrap().0 -= 1;
    let n = body["n"].as_u64().unwrap_or(1);
    if s.refuse_n && n > 1 {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "Only one completion choice is allowed", "type": "invalid_request_error"}})),
        )
            .into_response();
    }
    let texts = (s.script)(&body, call);
    let choices: Vec<Value> = texts
        .iter()
        .take(n.max(1) as usize)
        .enumerate()
        // A text ending in "…" was cut by the token limit.
        .map(|(i, t)| json!({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": if t.ends_with('…') { "length" } else { "stop" }}))
        .collect();
    Json(json!({
        "id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": 2 * choices.len(), "total_tokens": 10 + 2 * choices.len()},
    }))
    .into_response()
}

async fn backend(script: Script, refuse_n: bool) -> (String, Arc<Mutex<Vec<Value>>>) {
    let s = Scripted {
        script,
        log: Arc::new(Mutex::new(Vec::new())),
        refuse_n,
        slow: None,
        in_flight: Arc::new(Mutex::new((0, 0))),
    };
    let log = s.log.clone();
    (serve_backend(s).await, log)
}

async fn serve_backend(s: Scripted) -> String {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(scripted_chat))
        .route(
            "/v1/models",
            axum::routing::get(|| async {
                Json(json!({"object": "list", "data": [{"id": "m", "object": "model"}]}))
            }),
        )
        .with_state(s);
    let addr = testkit::spawn(app).await;
    format!("http://{addr}/v1")
}

struct Proxy {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Proxy {
    async fn start(base: &str, tweak: impl FnOnce(&mut optillm_proxy::Config)) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let mut c = optillm_proxy::Config::new("127.0.0.1:4002", base);
        tweak(&mut c);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            optillm_proxy::serve_on(l, c, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Proxy {
            url,
            stop: Some(tx),
        }
    }

    async fn chat(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let h = r.headers().clone();
        (s, h, r.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 6 times 7?"}]})
}

fn last_user(req: &Value) -> String {
    req["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The candidate a bon rating call rates (the assistant turn before "Rate the above
/// response:").
fn rated_candidate(req: &Value) -> &str {
    let m = req["messages"].as_array().unwrap();
    m[m.len() - 2]["content"].as_str().unwrap()
}

fn content(v: &Value, i: usize) -> String {
    v["choices"][i]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// bon: three samples at temperature 1 (one call with n = 3, or three when the backend
/// refuses `n`), each rated at 0.1 with 256 tokens; the best rated wins.
#[tokio::test]
async fn bon_samples_rates_and_picks_the_best() {
    for refuse_n in [false, true] {
        let script: Script = Arc::new(|req: &Value, _| {
            if last_user(req) == "Rate the above response:" {
                let cand = rated_candidate(req);
                let score = match cand {
                    "forty-one" => "3",
                    "42" => "9",
                    _ => "not a number",
                };
                return vec![score.into()];
            }
            vec!["forty-one".into(), "42".into(), "many".into()]
        });
        let (base, log) = backend(script.clone(), refuse_n).await;
        // Without n, every sample is the first line of the script: vary it by call.
        let (base2, log2) = if refuse_n {
            let seq: Script = Arc::new(move |req: &Value, call| {
                if last_user(req) == "Rate the above response:" {
                    return script(req, call);
                }
                let all = ["forty-one", "42", "many"];
                vec![all[(call - 2) % 3].to_owned()]
            });
            backend(seq, true).await
        } else {
            (base, log)
        };
        let proxy = Proxy::start(&base2, |_| {}).await;
        let (s, h, v) = proxy.chat(ask("bon-m")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(content(&v, 0), "42");
        assert_eq!(h["x-optillm-approach"], "bon");
        let calls = log2.lock().unwrap().clone();
        let want_calls = if refuse_n { 1 + 3 + 3 } else { 1 + 3 };
        assert_eq!(calls.len(), want_calls, "refuse_n {refuse_n}: {calls:#?}");
        assert_eq!(h["x-backend-calls"], want_calls.to_string().as_str());
        assert_eq!(calls[0]["temperature"], 1.0);
        assert_eq!(calls[0]["model"], "m");
        let ratings: Vec<&Value> = calls
            .iter()
            .filter(|c| last_user(c) == "Rate the above response:")
            .collect();
        assert_eq!(ratings.len(), 3);
        for r in ratings {
            assert_eq!(r["temperature"], 0.1);
            assert_eq!(r["max_tokens"], 256);
        }
        // OpenAI's shape, usage summed over every call.
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["model"], "bon-m");
        assert_eq!(
            v["usage"]["prompt_tokens"],
            10 * (want_calls - usize::from(refuse_n)) as u64
        );
        // A backend without `n` is found out once: the next request samples one by one.
        let before = log2.lock().unwrap().len();
        let (s, h, _) = proxy.chat(ask("bon-m")).await;
        assert_eq!(s, 200);
        let want = if refuse_n { 3 + 3 } else { 1 + 3 };
        assert_eq!(h["x-backend-calls"], want.to_string().as_str());
        assert_eq!(log2.lock().unwrap().len() - before, want);
    }
}

/// moa: three candidates at 1, a critique at 0.1 with 512 tokens that lists them, a final
/// answer at 0.1 from candidates and critique.
#[tokio::test]
async fn moa_critiques_and_synthesises() {
    let script: Script = Arc::new(|req: &Value, _| {
        let u = last_user(req);
        if u.contains("Your critique of each candidate") {
            vec!["B is best.".into()]
        } else if u.contains("The final, best response") {
            vec!["final: 42".into()]
        } else {
            vec!["A".into(), "B".into(), "C".into()]
        }
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy
        .chat(json!({"model": "m", "optillm_approach": "moa", "messages": [{"role": "user", "content": "Q?"}]}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "final: 42");
    assert_eq!(h["x-backend-calls"], "3");
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls[0]["n"], 3);
    assert_eq!(calls[0]["temperature"], 1.0);
    assert!(
        calls[0].get("max_tokens").is_none(),
        "no max_tokens asked: the backend's own default holds"
    );
    let critique = last_user(&calls[1]);
    assert!(critique.contains("Candidate 1:\nA") && critique.contains("Candidate 3:\nC"));
    assert_eq!(calls[1]["temperature"], 0.1);
    assert_eq!(calls[1]["max_tokens"], 512);
    assert!(last_user(&calls[2]).contains("B is best."));
    assert_eq!(calls[2]["temperature"], 0.1);
    // The body field is not sent on.
    assert!(calls.iter().all(|c| c.get("optillm_approach").is_none()));
}

/// self_consistency: five calls at 1; near-identical answers cluster; the largest wins.
#[tokio::test]
async fn self_consistency_takes_the_largest_cluster() {
    let script: Script = Arc::new(|_, call| {
        // Alone, "Blue" would come first; the three near-identical answers outnumber it.
        let answers = ["Blue", "It is 42.", "Red", "It is 42!", "It is 41."];
        vec![answers[(call - 1) % 5].to_owned()]
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy.chat(ask("self_consistency-m")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "It is 42.");
    assert_eq!(h["x-backend-calls"], "5");
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|c| c["temperature"] == 1.0 && c.get("n").is_none())
    );
}

/// The tag in the system message picks cot_reflection (and leaves the text); the answer is
/// what `<output>` holds; re2 reads the question twice; a chain feeds each answer on.
#[tokio::test]
async fn tags_chains_and_the_text_approaches() {
    let script: Script = Arc::new(|req: &Value, _| {
        let sys = req["messages"][0]["content"].as_str().unwrap_or("");
        if sys.contains("<output>") {
            vec![format!(
                "<thinking>hmm<reflection>ok</reflection></thinking><output>out({})</output>",
                last_user(req)
            )]
        } else {
            vec![format!("plain({})", last_user(req))]
        }
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy
        .chat(json!({"model": "m", "messages": [
            {"role": "system", "content": "Be exact. <optillm_approach>cot_reflection</optillm_approach>"},
            {"role": "user", "content": "Q"}]}))
        .await;
    assert_eq!(s, 200, "{v}");
    // A single stage answers the real turns, not OptiLLM's "User: …" flattening.
    assert_eq!(content(&v, 0), "out(Q)");
    assert_eq!(h["x-optillm-approach"], "cot_reflection");
    let first = log.lock().unwrap()[0].clone();
    let sys = first["messages"][0]["content"].as_str().unwrap();
    assert!(sys.starts_with("Be exact.") && !sys.contains("optillm_approach"));
    assert_eq!(first["temperature"], 0.6);

    let (s, _, v) = proxy.chat(ask("re2&cot_reflection-m")).await;
    assert_eq!(s, 200, "{v}");
    let q = "What is 6 times 7?";
    assert_eq!(
        content(&v, 0),
        format!("out(plain({q}\nRead the question again: {q}))"),
        "re2's answer is cot_reflection's question"
    );
    // `|`: one choice per approach; `n`: the whole plan again.
    let (s, h, v) = proxy.chat(ask("re2|cot_reflection-m")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(h["x-optillm-approach"], "re2|cot_reflection");
    let mut twice = ask("re2-m");
    twice["n"] = json!(2);
    let (_, _, v) = proxy.chat(twice).await;
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
}

/// majority_voting: `k` from the request, the request's temperature; the most common final
/// answer wins.
#[tokio::test]
async fn majority_voting_counts_final_answers() {
    let script: Script = Arc::new(|_, _| {
        vec![
            "Work... Answer: 41".into(),
            "So the answer is 42.".into(),
            "Final answer: 42".into(),
            "<think>hmm</think>Answer: 42!".into(),
            "answer: 7".into(),
        ]
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let mut body = ask("majority_voting-m");
    body["k"] = json!(5);
    body["max_completion_tokens"] = json!(64);
    body["temperature"] = json!(0.3);
    let (s, _, v) = proxy.chat(body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "So the answer is 42.");
    let c = log.lock().unwrap()[0].clone();
    assert_eq!(
        (c["n"].clone(), c["temperature"].clone()),
        (json!(5), json!(0.3))
    );
    assert_eq!(c["max_tokens"], 64, "max_completion_tokens is max_tokens");
}

/// `none` passes the request through and streams the backend's bytes as they are, tool-call
/// deltas included.
#[tokio::test]
async fn none_streams_byte_for_byte_with_tool_calls() {
    let up = testkit::upstream::MockUpstream::start("real").await;
    let proxy = Proxy::start(&up.base_url(), |_| {}).await;
    let body = json!({"model": "m", "stream": true, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}], "messages": [{"role": "user", "content": "weather?"}]});
    let through = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(through.headers()["x-optillm-approach"], "none");
    let through = through.text().await.unwrap();
    let direct = reqwest::Client::new()
        .post(format!("{}/chat/completions", up.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(through, direct);
    assert!(through.contains("tool_calls") && through.ends_with("data: [DONE]\n\n"));
}

/// Other approaches stream progress as reasoning, then the answer, then `[DONE]`.
#[tokio::test]
async fn an_approach_streams_its_progress_then_the_answer() {
    let script: Script = Arc::new(|req: &Value, _| {
        if last_user(req) == "Rate the above response:" {
            vec!["5".into()]
        } else {
            vec!["x".into(), "y".into(), "z".into()]
        }
    });
    let (base, _) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let mut body = ask("bon-m");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let reasoning: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert!(reasoning.contains("bon: 3 candidates"), "{reasoning}");
    assert!(reasoning.contains("rated 5"), "{reasoning}");
    let answer: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, "x");
    assert_eq!(
        events.last().unwrap()["usage"]["total_tokens"],
        4 * 10 + 2 * 3 + 3 * 2
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
}

/// What cannot run is refused up front, naming the approach and why.
#[tokio::test]
async fn refusals_name_what_and_why() {
    let (base, log) = backend(Arc::new(|_, _| vec!["x".into()]), false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, _, v) = proxy.chat(ask("z3-m")).await;
    assert_eq!(s, 400);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("`z3`") && m.contains("runs code"), "{m}");
    let (s, _, _) = proxy.chat(ask("none&bon-m")).await;
    assert_eq!(s, 400);
    let mut too_many = ask("bon-m");
    too_many["n"] = json!(100);
    let (s, _, v) = proxy.chat(too_many).await;
    assert_eq!(s, 400, "{v}");
    let (s, _, _) = proxy.chat(json!({"model": "bon-m"})).await;
    assert_eq!(s, 400);
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing reached the backend"
    );
    // A request this proxy sent, come back: refused, not looped.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .header("x-optillm-hop", "1")
        .json(&ask("bon-m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 508);
}

/// rto: code, its instruction (1024 tokens), code again; the same code is the answer, else a
/// merge. All at 0.1. plansearch: observations, derived observations, a plan, the program.
#[tokio::test]
async fn rto_round_trips_and_plansearch_plans() {
    let script: Script = Arc::new(|req: &Value, _| {
        let u = last_user(req);
        let out = if u.starts_with("Describe the code you just wrote") {
            "Write a function add(a, b)."
        } else if u.starts_with("Write a function add") {
            "```python\ndef add(a, b):\n    return b + a\n```"
        } else if u.starts_with("Initial query:") {
            "def add(a, b): return a + b  # merged"
        } else if u.contains("Write 3 useful") {
            "obs one\n\nobs two\nobs three"
        } else if u.contains("Combine them into 2") {
            "derived one\nderived two"
        } else if u.contains("describe a solution in plain language") {
            "Add the numbers."
        } else if u.contains("Implement it as a Python program") {
            "```python\nprint(sum(map(int, input().split())))\n```"
        } else {
            "```python\ndef add(a, b):\n    return a + b\n```"
        };
        vec![out.into()]
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy.chat(ask("rto-m")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "def add(a, b): return a + b  # merged");
    assert_eq!(h["x-backend-calls"], "4");
    {
        let calls = log.lock().unwrap();
        assert!(calls.iter().all(|c| c["temperature"] == 0.1));
        assert_eq!(calls[1]["max_tokens"], 1024);
        // The instruction round sees the first code as its own answer.
        assert_eq!(calls[1]["messages"][2]["role"], "assistant");
    }
    log.lock().unwrap().clear();
    let proxy = Proxy::start(&base, |c| c.n = 2).await;
    let (s, h, v) = proxy.chat(ask("plansearch-m")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        h["x-backend-calls"], "8",
        "4 calls for each of the server's n = 2"
    );
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert!(content(&v, 1).contains("print(sum("));
    let calls = log.lock().unwrap().clone();
    let derived = last_user(&calls[1]);
    assert!(
        derived.contains("1. obs one\n2. obs two\n3. obs three"),
        "{derived}"
    );
    let plan = last_user(&calls[2]);
    assert!(plan.contains("Observation 5: derived two"), "{plan}");
    assert!(last_user(&calls[3]).contains("Solution:\nAdd the numbers."));
}

/// genselect: four candidates at 0.7, one comparison at 0.3 (2048 tokens) naming the best.
#[tokio::test]
async fn genselect_compares_and_picks() {
    let script: Script = Arc::new(|req: &Value, _| {
        if req["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .starts_with("You are an expert evaluator")
        {
            let u = last_user(req);
            assert!(u.contains("=== Candidate 4 ===\nd"), "{u}");
            return vec![
                "Candidate 3 is clearly better.\nBEST CANDIDATE: 3\nREASONING: right".into(),
            ];
        }
        vec!["a".into(), "b".into(), "c".into(), "d".into()]
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy.chat(ask("genselect-m")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "c");
    assert_eq!(h["x-backend-calls"], "2");
    let calls = log.lock().unwrap().clone();
    assert_eq!(
        (calls[0]["n"].clone(), calls[0]["temperature"].clone()),
        (json!(4), json!(0.7))
    );
    assert_eq!(
        (
            calls[1]["temperature"].clone(),
            calls[1]["max_tokens"].clone()
        ),
        (json!(0.3), json!(2048))
    );
}

/// The system message of a request.
fn system(req: &Value) -> String {
    req["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// mcts (2 simulations, depth 1): per simulation three replies at 1 (one call with n = 3),
/// the user's next message after each (at 1, 1024 tokens), one more turn played on, one
/// rating at 0.1 (256 tokens) — 14 calls; the answer is the most visited first reply. A
/// backend that refuses `n` is asked once and then served one call per reply. The real
/// turns go into the search.
#[tokio::test]
async fn mcts_searches_the_dialogue() {
    let script: Script = Arc::new(|req: &Value, _| {
        let u = last_user(req);
        if u.starts_with("Based on this conversation") {
            vec!["And then?".into()]
        } else if u.starts_with("Rate the quality of this conversation") {
            vec!["0.9".into()]
        } else {
            vec!["r1".into(), "r2".into(), "r3".into()]
        }
    });
    let (base, log) = backend(script.clone(), false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let body = json!({"model": "mcts-m", "seed": 7, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 6 times 7?"}]});
    let (s, h, v) = proxy.chat(body.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "r1", "the first of the equally visited");
    assert_eq!(h["x-backend-calls"], "14");
    let calls = log.lock().unwrap().clone();
    let first = &calls[0];
    assert_eq!(
        (first["n"].clone(), first["temperature"].clone()),
        (json!(3), json!(1.0))
    );
    assert_eq!(
        first["messages"][1],
        json!({"role": "user", "content": "Hi"})
    );
    assert_eq!(first["messages"][2]["content"], "Hello!");
    assert_eq!(last_user(first), "What is 6 times 7?");
    let next: Vec<&Value> = calls
        .iter()
        .filter(|c| last_user(c).starts_with("Based on this conversation"))
        .collect();
    assert_eq!(next.len(), 8);
    assert!(
        next.iter()
            .all(|c| c["temperature"] == 1.0 && c["max_tokens"] == 1024)
    );
    let rated: Vec<&Value> = calls
        .iter()
        .filter(|c| last_user(c).starts_with("Rate the quality"))
        .collect();
    assert_eq!(rated.len(), 2);
    assert!(
        rated
            .iter()
            .all(|c| c["temperature"] == 0.1 && c["max_tokens"] == 256)
    );

    // Per-request settings, and a backend without `n`: asked once.
    let (base, log) = backend(script, true).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let mut one = body.clone();
    one["mcts_simulations"] = json!(1);
    let (s, _, v) = proxy.chat(one).await;
    assert_eq!(s, 200, "{v}");
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls.iter().filter(|c| c.get("n").is_some()).count(), 1);
    assert_eq!(calls.len(), 1 + 3 + 3 + 3 + 1 + 1);
}

/// leap: examples read from the query, a deliberate mistake per example (at 0.7), a
/// principle per mistake, the principles condensed, the answer with them.
#[tokio::test]
async fn leap_learns_principles_from_mistakes() {
    let script: Script = Arc::new(|req: &Value, _| {
        let u = last_user(req);
        let out = if u.starts_with("Does the following query contain few-shot examples") {
            r#"<output>[{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": 4}]</output>"#
        } else if u.contains("deliberate mistake") && u.contains("1+1?") {
            "1+1 is 3. <output>3</output>"
        } else if u.contains("deliberate mistake") {
            "<output>4</output>"
        } else if u.starts_with("Question: 1+1?") {
            "It is wrong. <output>Check each sum.</output>"
        } else if u.starts_with("Low-level principles") {
            "<output>1. Check each sum.</output>"
        } else {
            "6 times 7 is 42."
        };
        vec![out.into()]
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy
        .chat(json!({"model": "leap-m", "messages": [{"role": "user", "content": "Q: 1+1? A: 2\nQ: 2+2? A: 4\nQ: 6*7? A:"}]}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "6 times 7 is 42.");
    // Extract, two mistakes (one came out right), one principle, condense, answer.
    assert_eq!(h["x-backend-calls"], "6");
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls[1]["temperature"], 0.7);
    assert!(calls[3].get("temperature").is_none());
    assert!(last_user(&calls[4]).contains("Low-level principles: Check each sum."));
    assert!(last_user(&calls[5]).contains("1. Check each sum.\n\nQuery: User: Q: 1+1?"));
}

/// pvg: per round three helpful and three sneaky solutions (two calls with n = 3, at 0.7
/// then 0.6), six ratings at 0.2 (1024 tokens), and between the rounds a refined query at
/// 0.5 that the second round answers — 17 calls; the best scored wins.
#[tokio::test]
async fn pvg_plays_provers_against_a_verifier() {
    let script: Script = Arc::new(|req: &Value, _| {
        let sys = system(req);
        let u = last_user(req);
        if sys.contains("You verify solutions") {
            let score = if u.ends_with("Solution: s1") && u.starts_with("Problem: User: Q") {
                "Score: 9\nExplanation: convincing"
            } else if u.ends_with("Solution: h2") {
                "Score: 7.5\nExplanation: fine"
            } else {
                "no score"
            };
            return vec![score.into()];
        }
        if u.starts_with("From the original query and the best solution so far") {
            assert!(u.contains("Best solution so far: s1"), "{u}");
            return vec!["Q, refined".into()];
        }
        let mode = if sys.ends_with("You are in sneaky mode.") {
            "s"
        } else {
            "h"
        };
        (1..=3).map(|i| format!("{mode}{i}")).collect()
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy
        .chat(json!({"model": "pvg-m", "messages": [{"role": "user", "content": "Q"}]}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "s1");
    assert_eq!(h["x-backend-calls"], "17");
    let calls = log.lock().unwrap().clone();
    assert_eq!(
        (calls[0]["n"].clone(), calls[0]["temperature"].clone()),
        (json!(3), json!(0.7))
    );
    assert!(system(&calls[1]).ends_with("You are in sneaky mode."));
    assert!(
        calls[2..8]
            .iter()
            .all(|c| c["temperature"] == 0.2 && c["max_tokens"] == 1024)
    );
    assert_eq!(
        (
            calls[8]["temperature"].clone(),
            calls[8]["max_tokens"].clone()
        ),
        (json!(0.5), json!(1024))
    );
    assert_eq!(last_user(&calls[9]), "Q, refined");
    assert_eq!(calls[9]["temperature"], 0.6);
    assert!(last_user(&calls[11]).starts_with("Problem: Q, refined"));
}

/// rstar: five rollouts of four steps at 0.2 and a consistency check per rollout — 25
/// calls; the answer is the number the chosen chain states.
#[tokio::test]
async fn rstar_rolls_out_and_checks_consistency() {
    let script: Script =
        Arc::new(|req: &Value, _| {
            assert!(system(req).starts_with(
                "You are a helpful assistant focused on solving mathematical problems"
            ));
            vec!["Six sevens make it. The final answer is 42".into()]
        });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let (s, h, v) = proxy.chat(ask("rstar-m")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "42");
    assert_eq!(h["x-backend-calls"], "25");
    let calls = log.lock().unwrap().clone();
    assert!(calls.iter().all(|c| c["temperature"] == 0.2));
    let checks = calls
        .iter()
        .filter(|c| {
            last_user(c).starts_with("Given the partial reasoning:\nUser: What is 6 times 7?")
        })
        .count();
    assert_eq!(checks, 5);
    assert!(
        calls
            .iter()
            .any(|c| last_user(c).starts_with("Given the current state: User: What is 6 times 7?"))
    );
}

/// memory: the context's notes (1000 tokens each, kept when `YES#`), the relevant ones with
/// the question into the answer; readurls without a web-fetch tool is refused, and with no
/// address in the query it changes nothing; json passes `response_format` on.
#[tokio::test]
async fn memory_json_and_readurls_without_a_tool() {
    let script: Script = Arc::new(|req: &Value, _| {
        let u = last_user(req);
        let out = if u.contains("Copy over all context relevant to the query: What colour is A?") {
            assert!(u.contains("Fact A is blue. Fact B is red."));
            "YES#A is blue.".to_owned()
        } else if u.contains("margin notes") {
            format!(
                "answered from {}",
                u.lines().find(|l| l.starts_with('[')).unwrap_or("")
            )
        } else {
            format!("plain: {u}")
        };
        vec![out]
    });
    let (base, log) = backend(script, false).await;
    let proxy = Proxy::start(&base, |c| c.web_fetch = String::new()).await;
    let (s, h, v) = proxy
        .chat(json!({"model": "memory-m", "messages": [{"role": "user", "content": "Fact A is blue. Fact B is red. Query: What colour is A?"}]}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), r#"answered from ["A is blue."]"#);
    assert_eq!(h["x-backend-calls"], "2");
    assert_eq!(log.lock().unwrap()[0]["max_tokens"], 1000);

    let (s, _, v) = proxy
        .chat(json!({"model": "readurls-m", "messages": [{"role": "user", "content": "Read https://example.org/a please"}]}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("web-fetch"),
        "{v}"
    );
    // No address: the query goes on as it is, and is answered.
    let (s, _, v) = proxy
        .chat(json!({"model": "readurls-m", "messages": [{"role": "user", "content": "Nothing to read"}]}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "plain: User: Nothing to read");

    log.lock().unwrap().clear();
    let format =
        json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}});
    let (s, _, v) = proxy
        .chat(json!({"model": "json-m", "response_format": format, "temperature": 0.2, "messages": [{"role": "user", "content": "Give JSON"}]}))
        .await;
    assert_eq!(s, 200, "{v}");
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["response_format"], format);
    assert_eq!(calls[0]["temperature"], 0.2);
}

/// The budget: when the calls run out, the best answer so far is the answer (and the
/// header says why); at the deadline too, without waiting for the call still running;
/// with no answer yet, a 504 in OpenAI's shape. Bad budgets are refused.
#[tokio::test]
async fn the_budget_answers_with_the_best_so_far() {
    let script: Script = Arc::new(|req: &Value, _| {
        if last_user(req) == "Rate the above response:" {
            let cand = rated_candidate(req);
            return vec![if cand == "b" { "8" } else { "2" }.into()];
        }
        vec!["a".into(), "b".into(), "c".into()]
    });
    let (base, log) = backend(script.clone(), false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let mut body = ask("bon-m");
    body["optillm_max_backend_calls"] = json!(3);
    let (s, h, v) = proxy.chat(body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "b", "rated best of the two rated");
    assert_eq!(h["x-optillm-budget"], "calls");
    assert_eq!(h["x-backend-calls"], "3");
    assert_eq!(log.lock().unwrap().len(), 3);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|c| c.get("optillm_max_backend_calls").is_none())
    );

    // The deadline: the ratings hang; the first candidate is the answer.
    let s = Scripted {
        script: script.clone(),
        log: Arc::new(Mutex::new(Vec::new())),
        refuse_n: false,
        slow: Some(("Rate the above", std::time::Duration::from_secs(60))),
        in_flight: Arc::new(Mutex::new((0, 0))),
    };
    let slow = serve_backend(s).await;
    let proxy = Proxy::start(&slow, |_| {}).await;
    let mut body = ask("bon-m");
    body["optillm_deadline"] = json!(0.5);
    let (s, h, v) = proxy.chat(body.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "a");
    assert_eq!(h["x-optillm-budget"], "deadline");
    // Nothing to answer with yet: 504.
    let (s, _, v) = proxy
        .chat({
            let mut b = ask("cot_reflection-m");
            b["messages"][1]["content"] = json!("Rate the above response:");
            b["optillm_deadline"] = json!(0.3);
            b
        })
        .await;
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["code"], "budget_exhausted");
    for bad in [json!(0), json!("ten"), json!(-1)] {
        let mut b = ask("bon-m");
        b["optillm_max_backend_calls"] = bad.clone();
        assert_eq!(proxy.chat(b).await.0, 400, "{bad}");
        let mut b = ask("bon-m");
        b["optillm_deadline"] = bad.clone();
        assert_eq!(proxy.chat(b).await.0, 400, "{bad}");
    }
}

/// The cap on calls to one backend model: fan-out (three approaches side by side, each
/// sampling) waits its turn instead of all going at once.
#[tokio::test]
async fn fan_out_queues_behind_the_per_backend_cap() {
    let s = Scripted {
        script: Arc::new(|_, _| vec!["x".into()]),
        log: Arc::new(Mutex::new(Vec::new())),
        refuse_n: true,
        slow: None,
        in_flight: Arc::new(Mutex::new((0, 0))),
    };
    let in_flight = s.in_flight.clone();
    let base = serve_backend(s).await;
    let proxy = Proxy::start(&base, |c| c.max_concurrent_calls = 2).await;
    let (s, _, v) = proxy
        .chat(ask("self_consistency|self_consistency|self_consistency-m"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert!(
        in_flight.lock().unwrap().1 <= 2,
        "{:?}",
        in_flight.lock().unwrap()
    );
}

/// The official OpenAI Python SDK (`pip install openai`): `extra_body`, a prefixed model, a
/// tag, a stream with its progress, `n`, and a refusal as `BadRequestError`. Outside CI, a
/// machine without the SDK skips this with a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_picks_approaches() {
    let sdk = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !sdk {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true but python3 with the openai package is missing (pip install openai)"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("note: python3 -c 'import openai' failed; skipping the SDK test");
        }
        return;
    }
    let script: Script = Arc::new(|req: &Value, _| {
        let u = last_user(req);
        if u.contains("Your critique of each candidate") {
            vec!["B is best.".into()]
        } else if u.contains("The final, best response") {
            vec!["final: 42".into()]
        } else {
            vec!["A".into(), "B".into(), "C".into()]
        }
    });
    let (base, _) = backend(script, false).await;
    let proxy = Proxy::start(&base, |_| {}).await;
    let out = tokio::process::Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py"),
            &format!("{}/v1", proxy.url),
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
}

/// Candidates cut by the token limit lose to whole ones; when every one was cut (a small
/// `max_tokens`), they are still candidates rather than no answer.
#[tokio::test]
async fn cut_candidates_are_a_last_resort() {
    for (samples, want) in [
        (["long…", "short", "longer…"], "short"),
        (["long…", "longer…", "longest…"], "longer…"),
    ] {
        let script: Script = Arc::new(move |req: &Value, _| {
            if last_user(req) == "Rate the above response:" {
                let cand = rated_candidate(req);
                return vec![if cand == "longer…" { "7" } else { "3" }.into()];
            }
            samples.iter().map(|s| (*s).to_owned()).collect()
        });
        let (base, _) = backend(script, false).await;
        let proxy = Proxy::start(&base, |_| {}).await;
        let (s, _, v) = proxy.chat(ask("bon-m")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(content(&v, 0), want);
    }
}
