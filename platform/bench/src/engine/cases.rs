//! The cases `bench engine` runs on each server, as the homelab's clients use it: a short
//! chat, a ten-turn chat that resends its history each turn (as Open WebUI does), a ~1,500
//! token prompt read cold and then again (a RAG question), four clients at once, and an
//! agent loop of five steps with ~800 tokens of tools. Every prompt starts with a nonce of the
//! run, so no case finds another run's (or another case's) prompt cached.

use std::time::{Duration, Instant};

use contract::sse::SseDecoder;
use serde_json::{Value, json};

/// One streamed answer.
#[derive(Debug, Default, Clone)]
pub struct Turn {
    pub ttft: Duration,
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From the first to the last token.
    pub decode: Duration,
}

impl Turn {
    pub fn ttft_ms(&self) -> f64 {
        self.ttft.as_secs_f64() * 1000.0
    }

    /// Tokens per second after the first.
    pub fn decode_tps(&self) -> Option<f64> {
        (self.completion_tokens > 1 && !self.decode.is_zero())
            .then(|| (self.completion_tokens - 1) as f64 / self.decode.as_secs_f64())
    }
}

/// Sends one streamed, greedy chat and times it.
pub async fn chat(client: &reqwest::Client, url: &str, mut body: Value) -> Result<Turn, String> {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["temperature"] = json!(0);
    body["model"] = json!("bench");
    let t0 = Instant::now();
    let mut res = client
        .post(url)
        .header("connection", "close")
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    if !res.status().is_success() {
        let s = res.status();
        return Err(format!(
            "status {s}: {}",
            res.text().await.unwrap_or_default()
        ));
    }
    let mut dec = SseDecoder::new();
    let (mut first, mut last) = (None, t0);
    let mut turn = Turn::default();
    let mut chunks = 0;
    while let Some(bytes) = res.chunk().await.map_err(|e| e.to_string())? {
        for ev in dec.push(&bytes).map_err(|e| e.to_string())? {
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            let delta = &v["choices"][0]["delta"];
            let text = delta["content"].as_str().unwrap_or("");
            let calls = delta["tool_calls"].is_array();
            if !text.is_empty() || calls {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                chunks += 1;
                turn.text.push_str(text);
            }
            if let Some(p) = v["usage"]["prompt_tokens"].as_u64() {
                turn.prompt_tokens = p;
                turn.completion_tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(chunks);
            }
        }
    }
    // An empty answer (the model ended its turn at once) is timed to its end.
    let first = first.unwrap_or_else(Instant::now);
    turn.ttft = first - t0;
    turn.decode = last - first;
    if turn.completion_tokens == 0 {
        turn.completion_tokens = chunks;
    }
    Ok(turn)
}

fn msg(role: &str, content: &str) -> Value {
    json!({"role": role, "content": content})
}

/// Words for generated text: plain English that tokenizes like prose.
const WORDS: &[&str] = &[
    "river", "harbour", "market", "winter", "garden", "library", "engine", "village", "bridge",
    "teacher", "station", "mountain", "summer", "letter", "window", "farmer", "island", "forest",
    "kitchen", "evening", "doctor", "ribbon", "castle", "meadow", "lantern", "journey", "copper",
    "signal", "orchard", "compass", "weather", "harvest", "council", "railway", "pottery",
];

/// About `tokens` tokens of documents, the same for the same seed.
fn documents(tokens: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = String::new();
    let mut n = 0;
    let mut doc = 1;
    while n < tokens {
        out.push_str(&format!("\n\nDocument {doc}. "));
        for _ in 0..12 {
            let words: Vec<&str> = (0..10).map(|_| WORDS[rng.usize(..WORDS.len())]).collect();
            out.push_str(&format!(
                "The {} near the {} was {} and {}. ",
                words[0], words[1], words[2], words[3]
            ));
            n += 13;
        }
        doc += 1;
    }
    out
}

/// The short chat, `rounds` times: its answers.
pub async fn short(
    c: &reqwest::Client,
    url: &str,
    nonce: &str,
    rounds: usize,
) -> Result<Vec<Turn>, String> {
    let mut out = Vec::new();
    for r in 0..rounds {
        let body = json!({"max_tokens": 128, "messages": [
            msg("system", &format!("Session {nonce}-{r}. You are a helpful assistant.")),
            msg("user", "Write a short story about a lighthouse keeper."),
        ]});
        out.push(chat(c, url, body).await?);
    }
    Ok(out)
}

/// Ten turns of one chat, the history resent each turn: each turn's answer.
pub async fn turns(c: &reqwest::Client, url: &str, nonce: &str) -> Result<Vec<Turn>, String> {
    let mut messages = vec![msg(
        "system",
        &format!("Session {nonce}. You are a helpful assistant."),
    )];
    let mut out = Vec::new();
    for q in testkit::openwebui::TEN_TURNS {
        messages.push(msg("user", q));
        let t = chat(c, url, json!({"max_tokens": 48, "messages": messages})).await?;
        messages.push(msg("assistant", &t.text));
        out.push(t);
    }
    Ok(out)
}

/// A ~1,500-token prompt read cold, then the same prompt again.
pub async fn long(c: &reqwest::Client, url: &str, nonce: &str) -> Result<(Turn, Turn), String> {
    let body = json!({"max_tokens": 16, "messages": [
        msg("system", &format!("Session {nonce}. Answer from the documents.{}", documents(1450, 7))),
        msg("user", "Which document mentions a lantern first?"),
    ]});
    let cold = chat(c, url, body.clone()).await?;
    let again = chat(c, url, body).await?;
    Ok((cold, again))
}

/// `clients` clients at once, `rounds` chats each: the answers and the wall time.
pub async fn clients(
    c: &reqwest::Client,
    url: &str,
    nonce: &str,
    clients: usize,
    rounds: usize,
) -> Result<(Vec<Turn>, Duration), String> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (c, url, nonce) = (c.clone(), url.to_owned(), format!("{nonce}-c{k}"));
        tasks.push(tokio::spawn(async move {
            short(&c, &url, &nonce, rounds).await
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok((all, started.elapsed()))
}

/// An agent's tools: ~800 tokens of definitions.
fn tools() -> Value {
    let tool = |name: &str, what: &str, params: Value| json!({"type": "function", "function": {"name": name, "description": what, "parameters": params}});
    let text = |d: &str| json!({"type": "string", "description": d});
    json!([
        tool(
            "web_search",
            "Search the web through the homelab's SearXNG instance and return the top results with their titles, addresses and a short excerpt of each page. Use it when the question needs facts that may have changed recently.",
            json!({"type": "object", "properties": {"query": text("What to search for, in a few words."), "max_results": {"type": "integer", "description": "How many results to return, 1 to 10."}, "language": text("A language code such as en or fr.")}, "required": ["query"]})
        ),
        tool(
            "fetch",
            "Fetch a web page and return its main text as Markdown, without navigation, scripts or advertisements. Use it to read a page that a search result or the user pointed to.",
            json!({"type": "object", "properties": {"url": text("The address of the page, http or https."), "max_length": {"type": "integer", "description": "The most characters to return."}, "start_index": {"type": "integer", "description": "Where to start reading, for a long page read in parts."}}, "required": ["url"]})
        ),
        tool(
            "remember",
            "Store a fact about the user in long-term memory, so that later conversations can use it. Only store what the user said about themselves.",
            json!({"type": "object", "properties": {"text": text("The fact, as one sentence."), "user_id": text("Whose memory it is.")}, "required": ["text"]})
        ),
        tool(
            "recall",
            "Search the user's long-term memory for facts related to the question and return the closest ones with their dates.",
            json!({"type": "object", "properties": {"query": text("What to look for."), "limit": {"type": "integer", "description": "How many memories to return."}}, "required": ["query"]})
        ),
        tool(
            "turn_on_light",
            "Turn on a light of the house through Home Assistant. Only lights the homelab's policy allows can be switched.",
            json!({"type": "object", "properties": {"entity_id": text("The light's entity, such as light.kitchen."), "brightness": {"type": "integer", "description": "0 to 255."}}, "required": ["entity_id"]})
        ),
        tool(
            "homelab_status",
            "Report what the homelab's system monitor knows: services up, degraded or down, the models loaded on each machine, queue depths and recent errors.",
            json!({"type": "object", "properties": {"service": text("One service to report on, or nothing for all.")}})
        ),
    ])
}

/// Five steps of an agent with ~800 tokens of tools: each step's answer. Each step resends
/// the history with a scripted tool call and its result appended, as an agent loop does.
/// The tools are written into the system prompt (in the Hermes format), not sent as
/// `tools`, so that every server reads the same prompt whatever its template knows of tools.
pub async fn agent(c: &reqwest::Client, url: &str, nonce: &str) -> Result<Vec<Turn>, String> {
    let defs: Vec<String> = tools()
        .as_array()
        .map(|a| a.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    let system = format!(
        "Session {nonce}. You are a research assistant. Use the tools to find facts, then answer briefly.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.",
        defs.join("\n")
    );
    let mut messages = vec![
        msg("system", &system),
        msg(
            "user",
            "Find out when the Eiffel Tower was built and how tall it is.",
        ),
    ];
    let mut out = Vec::new();
    for step in 0..5 {
        let t = chat(c, url, json!({"max_tokens": 24, "messages": messages})).await?;
        out.push(t);
        let (name, args, result) = match step % 2 {
            0 => ("web_search", json!({"query": format!("Eiffel Tower facts {step}")}), format!("1. Eiffel Tower - Wikipedia: wrought-iron lattice tower in Paris, built 1887 to 1889 for the World's Fair, {} metres tall including antennas. 2. Official site: visits, tickets and history.", 300 + step)),
            _ => ("fetch", json!({"url": format!("https://example.org/eiffel/{step}")}), "# Eiffel Tower\nThe tower was built from 1887 to 1889 by Gustave Eiffel's company. It is 330 metres tall since a new antenna was added.".to_owned()),
        };
        let call = json!({"name": name, "arguments": args});
        messages.push(msg(
            "assistant",
            &format!("<tool_call>\n{call}\n</tool_call>"),
        ));
        messages.push(msg(
            "user",
            &format!("<tool_response>\n{result}\n</tool_response>"),
        ));
    }
    Ok(out)
}
