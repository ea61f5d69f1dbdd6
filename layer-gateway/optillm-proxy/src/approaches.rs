//! The approaches, each OptiLLM's algorithm with its defaults and temperatures (the prompts
//! in this project's words, the same instructions). Each gets the conversation — the real
//! turns where it is the first stage and can keep them, else OptiLLM's flattened query — and
//! answers with a text; calls go to the backend. Each offers the candidates it has as it
//! goes, so that when the request's budget runs out the best one so far is the answer.

use std::sync::Mutex;

use mcp_kit::client::ToolClient;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{self, Backend, Reply};
use crate::config::Config;
use crate::error::Error;
use crate::similarity;

/// What an approach works with.
pub struct Ctx<'a> {
    pub backend: &'a Backend,
    pub model: &'a str,
    pub config: &'a Config,
    /// The request's other fields (`temperature`, `max_tokens`, `k`, …), as OptiLLM's
    /// `request_config`.
    pub request: &'a Map<String, Value>,
    /// The request's user and assistant turns, when this stage answers the conversation
    /// itself (not a previous stage's answer).
    pub turns: Option<&'a [Value]>,
    /// The request's `response_format` (for `json`).
    pub response_format: Option<&'a Value>,
    /// The web-fetch tool (for `readurls`).
    pub web: Option<&'a ToolClient>,
    /// Progress lines for a streaming client.
    pub progress: Option<&'a UnboundedSender<String>>,
    /// The best candidate offered so far, with its score.
    best: Mutex<Option<(f64, String)>>,
    rng: Mutex<fastrand::Rng>,
}

impl<'a> Ctx<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: &'a Backend,
        model: &'a str,
        config: &'a Config,
        request: &'a Map<String, Value>,
        turns: Option<&'a [Value]>,
        response_format: Option<&'a Value>,
        web: Option<&'a ToolClient>,
        progress: Option<&'a UnboundedSender<String>>,
    ) -> Ctx<'a> {
        // The request's `seed` makes the tree searches' random choices repeatable.
        let rng = match request.get("seed").and_then(Value::as_u64) {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        Ctx {
            backend,
            model,
            config,
            request,
            turns: turns.filter(|t| !t.is_empty()),
            response_format,
            web,
            progress,
            best: Mutex::new(None),
            rng: Mutex::new(rng),
        }
    }

    fn say(&self, line: impl Into<String>) {
        if let Some(p) = self.progress {
            let _ = p.send(line.into());
        }
    }

    /// Offers `text` as an answer with `score`: the best offered (the first among equals) is
    /// the answer when the budget runs out.
    fn offer(&self, score: f64, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        let mut b = self.best.lock().unwrap_or_else(|e| e.into_inner());
        if b.as_ref().is_none_or(|(s, _)| score > *s) {
            *b = Some((score, text.to_owned()));
        }
    }

    /// The best answer offered so far.
    pub fn best(&self) -> Option<String> {
        self.best
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, t)| t.clone())
    }

    /// A random index below `n` (`n` > 0).
    fn pick(&self, n: usize) -> usize {
        self.rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .usize(..n.max(1))
    }

    /// `max_tokens` as the request set it. OptiLLM sends 4096 when the request sets none;
    /// here the backend's own default applies instead (the gateway's handles bound answers —
    /// 512 on `up`'s — which a fixed 4096 would override, letting a small model ramble).
    fn max_tokens(&self) -> Option<u64> {
        self.request.get("max_tokens").and_then(Value::as_u64)
    }

    /// The request's `max_tokens` held to `cap` (`cap` when it sets none).
    fn max_tokens_up_to(&self, cap: u64) -> Option<u64> {
        Some(self.max_tokens().map_or(cap, |m| m.min(cap)))
    }

    fn temperature(&self, default: f64) -> f64 {
        self.request
            .get("temperature")
            .and_then(Value::as_f64)
            .unwrap_or(default)
    }

    fn params(&self, temperature: Option<f64>, max_tokens: Option<u64>) -> Value {
        let mut p = json!({ "model": self.model });
        if let Some(t) = temperature {
            p["temperature"] = json!(t);
        }
        if let Some(m) = max_tokens {
            p["max_tokens"] = json!(m);
        }
        p
    }

    /// The conversation to answer: the system prompt and the real turns when this stage has
    /// them, else the system prompt and the query as one user message (OptiLLM's shape).
    fn conversation(&self, system: &str, query: &str) -> Vec<Value> {
        match self.turns {
            Some(turns) => {
                let mut m = Vec::with_capacity(turns.len() + 1);
                if !system.is_empty() {
                    m.push(json!({"role": "system", "content": system}));
                }
                m.extend(turns.iter().cloned());
                m
            }
            None => messages(system, query),
        }
    }

    /// The earlier turns and the last user message's text, when this stage has real turns;
    /// else no history and the query.
    fn history_and_question(&self, query: &str) -> (Vec<Value>, String) {
        if let Some(turns) = self.turns
            && let Some(last) = turns.iter().rposition(|m| m["role"] == "user")
        {
            let mut history = turns.to_vec();
            let q = history.remove(last);
            history.truncate(last);
            return (history, backend::text(&q));
        }
        (Vec::new(), query.to_owned())
    }
}

fn messages(system: &str, user: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": user}),
    ]
}

/// Runs `approach` on the conversation; its answers (one, or with the server's `--n` for
/// `re2` and `plansearch`, as many). `readurls` answers with the query, pages read in.
pub async fn run(
    approach: &str,
    ctx: &Ctx<'_>,
    system: &str,
    query: &str,
) -> Result<Vec<String>, Error> {
    ctx.say(format!("{approach}: started"));
    let one = |a: String| vec![a];
    let answers = match approach {
        "bon" => bon(ctx, system, query).await.map(one),
        "moa" => moa(ctx, system, query).await.map(one),
        "mcts" => mcts(ctx, system, query).await.map(one),
        "self_consistency" => self_consistency(ctx, system, query).await.map(one),
        "cot_reflection" => cot_reflection(ctx, system, query).await.map(one),
        "re2" => re2(ctx, system, query).await,
        "majority_voting" => majority_voting(ctx, system, query).await.map(one),
        "rto" => rto(ctx, system, query).await.map(one),
        "plansearch" => plansearch(ctx, system, query).await,
        "genselect" => genselect(ctx, system, query).await.map(one),
        "leap" => leap(ctx, system, query).await.map(one),
        "pvg" => pvg(ctx, system, query).await.map(one),
        "rstar" => rstar(ctx, query).await.map(one),
        "memory" => memory(ctx, system, query).await.map(one),
        "readurls" => readurls(ctx, query).await.map(one),
        "json" => json_format(ctx, system, query).await.map(one),
        "none" => ctx
            .backend
            .one(ctx.conversation(system, query), ctx.params(None, None))
            .await
            .map(one),
        other => Err(Error::NotRun(format!("approach `{other}` is not run here"))),
    }?;
    ctx.say(format!("{approach}: done"));
    Ok(answers)
}

/// [`run`], except that when the budget runs out the best answer offered so far is the
/// answer (an error only when there is none).
pub async fn run_or_best(
    approach: &str,
    ctx: &Ctx<'_>,
    system: &str,
    query: &str,
) -> Result<Vec<String>, Error> {
    match run(approach, ctx, system, query).await {
        Err(Error::Budget(why)) => match ctx.best() {
            Some(b) => {
                ctx.say(format!(
                    "{approach}: the budget ran out ({}); answering with the best so far",
                    why.as_str()
                ));
                Ok(vec![b])
            }
            None => Err(Error::Budget(why)),
        },
        r => r,
    }
}

/// Usable candidates: the texts not cut by the token limit; when every one was cut (a
/// request's small `max_tokens`), the cut ones rather than no answer at all.
fn usable(replies: Vec<Reply>) -> Vec<String> {
    let whole: Vec<String> = replies
        .iter()
        .filter(|r| !r.text.is_empty() && r.finish_reason != "length")
        .map(|r| r.text.clone())
        .collect();
    if !whole.is_empty() {
        return whole;
    }
    replies
        .into_iter()
        .filter(|r| !r.text.is_empty())
        .map(|r| r.text)
        .collect()
}

/// Best of n: `--best-of-n` samples at temperature 1, each rated 0–10 by the model at 0.1
/// (256 tokens); the best rated wins (the first among equals).
async fn bon(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let n = ctx.config.best_of_n.max(1);
    let base = ctx.conversation(system, query);
    let candidates = usable(
        ctx.backend
            .samples(base.clone(), ctx.params(Some(1.0), ctx.max_tokens()), n)
            .await?,
    );
    if candidates.is_empty() {
        return Err(Error::Backend("no usable candidate came back".into()));
    }
    ctx.say(format!("bon: {} candidates", candidates.len()));
    for c in &candidates {
        ctx.offer(-1.0, c);
    }
    let mut best = (f64::MIN, 0usize);
    for (i, c) in candidates.iter().enumerate() {
        let mut rating = base.clone();
        rating.push(json!({"role": "system", "content": "Rate the following response from 0 to 10, where 0 is poor and 10 is excellent, for relevance, coherence and helpfulness. Reply with the number only."}));
        rating.push(json!({"role": "assistant", "content": c}));
        rating.push(json!({"role": "user", "content": "Rate the above response:"}));
        let said = ctx
            .backend
            .complete(rating, ctx.params(Some(0.1), Some(256)))
            .await?;
        let score = said
            .first()
            .filter(|r| r.finish_reason != "length")
            .and_then(|r| r.text.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        ctx.say(format!("bon: candidate {} rated {score}", i + 1));
        ctx.offer(score, c);
        if score > best.0 {
            best = (score, i);
        }
    }
    Ok(candidates[best.1].clone())
}

/// Mixture of agents: three candidates at temperature 1 (padded with the first when fewer
/// come back), one critique of all three at 0.1 (512 tokens), one final answer at 0.1 from
/// the candidates and the critique (the first candidate if that fails).
async fn moa(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let mut c = usable(
        ctx.backend
            .samples(
                ctx.conversation(system, query),
                ctx.params(Some(1.0), ctx.max_tokens()),
                3,
            )
            .await?,
    );
    if c.is_empty() {
        return Err(Error::Backend("no usable candidate came back".into()));
    }
    ctx.offer(0.0, &c[0]);
    while c.len() < 3 {
        c.push(c[0].clone());
    }
    ctx.say("moa: 3 candidates; critiquing");
    let listed = format!(
        "Candidate 1:\n{}\n\nCandidate 2:\n{}\n\nCandidate 3:\n{}",
        c[0], c[1], c[2]
    );
    let critique_prompt = format!(
        "Original query: {query}\n\nHere are three candidate responses to the original query. Critique each one separately: its strengths and its weaknesses.\n\n{listed}\n\nYour critique of each candidate:"
    );
    let critiques = match ctx
        .backend
        .complete(
            messages(system, &critique_prompt),
            ctx.params(Some(0.1), Some(512)),
        )
        .await?
        .first()
    {
        Some(r) if !r.text.is_empty() && r.finish_reason != "length" => r.text.clone(),
        _ => "All candidates show reasonable approaches to the problem.".to_owned(),
    };
    ctx.say("moa: writing the final answer");
    let final_prompt = format!(
        "Original query: {query}\n\nFrom the candidate responses below and their critiques, write one final response to the original query.\n\n{listed}\n\nCritiques of the candidates:\n{critiques}\n\nThe final, best response to the original query:"
    );
    let last = ctx
        .backend
        .complete(
            messages(system, &final_prompt),
            ctx.params(Some(0.1), ctx.max_tokens()),
        )
        .await?;
    Ok(match last.first() {
        Some(r) if !r.text.is_empty() && r.finish_reason != "length" => r.text.clone(),
        _ => c[0].clone(),
    })
}

/// Self-consistency: five samples at temperature 1, one call each; answers whose similarity
/// (difflib's ratio) to a cluster's first reaches 0.8 join it; the largest cluster's first
/// answer wins.
async fn self_consistency(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let mut answers: Vec<String> = Vec::new();
    for _ in 0..5 {
        let a = ctx
            .backend
            .one(
                ctx.conversation(system, query),
                ctx.params(Some(1.0), ctx.max_tokens()),
            )
            .await?;
        // Offered by how many answers so far are like it.
        let alike = answers
            .iter()
            .filter(|b| similarity::ratio(&a, b) >= 0.8)
            .count();
        ctx.offer(alike as f64, &a);
        answers.push(a);
    }
    let mut clusters: Vec<Vec<&String>> = Vec::new();
    for a in &answers {
        match clusters
            .iter_mut()
            .find(|c| similarity::ratio(a, c[0]) >= 0.8)
        {
            Some(c) => c.push(a),
            None => clusters.push(vec![a]),
        }
    }
    // The largest; the earliest among equals (a stable sort, as Python's).
    clusters.sort_by_key(|c| std::cmp::Reverse(c.len()));
    ctx.say(format!(
        "self_consistency: {} answers in {} clusters; the largest has {}",
        answers.len(),
        clusters.len(),
        clusters.first().map_or(0, Vec::len)
    ));
    clusters
        .first()
        .map(|c| c[0].clone())
        .ok_or_else(|| Error::Backend("no answer came back".into()))
}

/// Chain of thought with reflection: one call (temperature from the request, else 0.6)
/// asked to think in `<thinking>`, check itself in `<reflection>` and answer in `<output>`;
/// the answer is what `<output>` holds (everything with `--return-full-response`).
async fn cot_reflection(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let prompt = format!(
        "{system}\n\nYou answer with a chain of thought and a reflection on it:\n1. Reason step by step inside <thinking> tags.\n2. Inside <reflection> tags (within the thinking), check that reasoning for mistakes and improvements.\n3. Adjust your thinking after the reflection.\n4. Give the final, concise answer inside <output> tags.\nThe thinking and the reflection are your private reasoning: the answer itself goes only in the output.\nUse this format:\n<thinking>\n[step-by-step reasoning]\n<reflection>\n[checking the reasoning]\n</reflection>\n[adjustments]\n</thinking>\n<output>\n[the final, concise answer: the only part the user sees]\n</output>"
    );
    let full = ctx
        .backend
        .one(
            ctx.conversation(&prompt, query),
            ctx.params(Some(ctx.temperature(0.6)), ctx.max_tokens()),
        )
        .await?;
    if ctx.config.return_full_response {
        return Ok(full);
    }
    let output = regex::Regex::new(r"(?s)<output>(.*?)(?:</output>|$)")
        .ok()
        .and_then(|re| re.captures(&full).map(|c| c[1].trim().to_owned()));
    Ok(output.unwrap_or(full))
}

/// Re-reading: the question twice ("…\nRead the question again: …"), one call with the
/// server's `--n` (the first choice is the answer).
async fn re2(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<Vec<String>, Error> {
    let (history, q) = ctx.history_and_question(query);
    let prompt = format!("{q}\nRead the question again: {q}");
    let mut asked = ctx.conversation(system, &prompt);
    if ctx.turns.is_some() {
        asked.retain(|m| m["role"] == "system");
        asked.extend(history);
        asked.push(json!({"role": "user", "content": prompt}));
    }
    let mut params = ctx.params(None, ctx.max_tokens());
    params["n"] = json!(ctx.config.n.max(1));
    let replies = ctx.backend.complete(asked, params).await?;
    if replies.is_empty() {
        return Err(Error::Backend("the backend answered no choice".into()));
    }
    Ok(replies
        .into_iter()
        .map(|r| r.text.trim().to_owned())
        .collect())
}

/// The code inside the first fenced block of `text`, else all of it.
fn code_of(text: &str) -> String {
    regex::Regex::new(r"(?s)```(?:[\w-]+)?\n(.*?)```")
        .ok()
        .and_then(|re| re.captures(text).map(|c| c[1].trim().to_owned()))
        .unwrap_or_else(|| text.to_owned())
}

/// Round-trip optimisation (for code): C1 answers the query; the model turns C1 back into an
/// instruction (Q2, 1024 tokens); C2 answers Q2; equal code is the answer, else C3 merges
/// C1 and C2. All at temperature 0.1.
async fn rto(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let low = |max: Option<u64>| ctx.params(Some(0.1), max);
    let mut conversation = ctx.conversation(system, query);
    let c1 = ctx
        .backend
        .one(conversation.clone(), low(ctx.max_tokens()))
        .await?;
    ctx.offer(0.0, &code_of(&c1));
    conversation.push(json!({"role": "assistant", "content": c1}));
    conversation.push(json!({"role": "user", "content": "Describe the code you just wrote as an instruction: one from which you could write that same code again."}));
    let q2 = ctx.backend.one(conversation, low(Some(1024))).await?;
    ctx.say("rto: the code turned back into an instruction; answering it again");
    let c2 = ctx
        .backend
        .one(messages(system, &q2), low(ctx.max_tokens()))
        .await?;
    let (c1, c2) = (code_of(&c1), code_of(&c2));
    ctx.offer(0.5, &c2);
    if c1.trim() == c2.trim() {
        ctx.say("rto: both rounds gave the same code");
        return Ok(c1);
    }
    ctx.say("rto: the rounds differ; merging them");
    let merge = format!(
        "Initial query: {query}\n\nFirst generated code (C1):\n{c1}\n\nSecond generated code (C2):\n{c2}\n\nFrom the query and these two implementations, write one final, improved version of the code. Reply with the final code only."
    );
    ctx.backend
        .one(messages(system, &merge), low(ctx.max_tokens()))
        .await
}

/// PlanSearch (for code), the server's `--n` times: three observations about the problem,
/// two more derived from them, a solution in words from all of them, then its Python
/// implementation — the answer.
async fn plansearch(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<Vec<String>, Error> {
    let ask = |prompt: String| {
        let m = messages(system, &prompt);
        async move { ctx.backend.one(m, ctx.params(None, ctx.max_tokens())).await }
    };
    let lines = |text: String| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut out = Vec::new();
    for run in 0..ctx.config.n.max(1) {
        let first = lines(ask(format!(
            "You are an expert Python programmer. You will be given a competitive programming question (problem specification). Write 3 useful, non-obvious and correct observations about the problem, like hints to solve it, one per line. Do NOT write code.\n\n{query}"
        ))
        .await?);
        let listed: String = first
            .iter()
            .enumerate()
            .map(|(i, o)| format!("{}. {o}\n", i + 1))
            .collect();
        let derived = lines(ask(format!(
            "You are an expert Python programmer. Here is a competitive programming question and some observations about it. Combine them into 2 new, useful, non-obvious and correct observations, one per line. Do NOT write code.\n\n{query}\n\nObservations:\n{listed}"
        ))
        .await?);
        let all: String = first
            .iter()
            .chain(&derived)
            .enumerate()
            .map(|(i, o)| format!("Observation {}: {o}\n", i + 1))
            .collect();
        ctx.say(format!(
            "plansearch: run {}: {} observations",
            run + 1,
            first.len() + derived.len()
        ));
        let solution = ask(format!(
            "Here is a competitive programming question and observations about it. Using them, describe a solution in plain language, step by step. Do NOT write code.\n\n{query}\n\n{all}"
        ))
        .await?;
        let code = ask(format!(
            "You are an expert Python programmer. Here is a competitive programming question and a solution in plain language. Implement it as a Python program that reads standard input and writes standard output, and passes all tests. Reply with the program in a markdown code block and nothing else.\n\n{query}\n\nSolution:\n{solution}"
        ))
        .await?;
        ctx.offer(0.0, code.trim());
        out.push(code.trim().to_owned());
    }
    Ok(out)
}

/// GenSelect: `num_candidates` (request, 4) samples at the request's temperature (0.7); one
/// comparison of all of them at `comparison_temperature` (0.3, 2048 tokens) that must name
/// "BEST CANDIDATE: N"; that candidate (the first when the choice cannot be read; the only
/// one when fewer than two came back).
async fn genselect(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let get = |k: &str| ctx.request.get(k);
    let k = get("num_candidates")
        .and_then(Value::as_u64)
        .map_or(4, |k| k as usize)
        .clamp(1, 16);
    let candidates: Vec<String> = ctx
        .backend
        .samples(
            ctx.conversation(system, query),
            ctx.params(Some(ctx.temperature(0.7)), ctx.max_tokens()),
            k,
        )
        .await?
        .into_iter()
        .map(|r| r.text)
        .collect();
    for c in &candidates {
        ctx.offer(0.0, c);
    }
    match candidates.len() {
        0 => return Err(Error::Backend("no candidate came back".into())),
        1 => return Ok(candidates[0].clone()),
        _ => {}
    }
    let mut prompt = format!(
        "Choose the best response to this query:\n\n{query}\n\nHere are {} candidate responses. Weigh how correct, complete, clear and relevant each one is.\n\n",
        candidates.len()
    );
    for (i, c) in candidates.iter().enumerate() {
        prompt.push_str(&format!("=== Candidate {} ===\n{c}\n\n", i + 1));
    }
    prompt.push_str("Compare them, then answer in this format:\nBEST CANDIDATE: [number]\nREASONING: [why it is the best]");
    let temperature = get("comparison_temperature")
        .and_then(Value::as_f64)
        .unwrap_or(0.3);
    let verdict = ctx
        .backend
        .one(
            vec![
                json!({"role": "system", "content": "You are an expert evaluator who compares responses and picks the best."}),
                json!({"role": "user", "content": prompt}),
            ],
            ctx.params(Some(temperature), Some(2048)),
        )
        .await?;
    let picked = [
        r"(?i)BEST CANDIDATE:\s*(\d+)",
        r"[Cc]andidate\s+(\d+)\s+is\s+(?:the\s+)?best",
        r"[Ii]\s+(?:would\s+)?select\s+[Cc]andidate\s+(\d+)",
        r"[Tt]he\s+best\s+(?:response|candidate)\s+is\s+(?:number\s+)?(\d+)",
    ]
    .iter()
    .find_map(|p| {
        regex::Regex::new(p)
            .ok()?
            .captures(&verdict)?
            .get(1)?
            .as_str()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=candidates.len()).contains(n))
    })
    .unwrap_or(1);
    ctx.say(format!(
        "genselect: {} candidates; candidate {picked} chosen",
        candidates.len()
    ));
    Ok(candidates[picked - 1].clone())
}

/// The final answer a response states ("Answer: …", "the answer is …", "### …", a lone
/// letter A–E), else the whole response; `<think>` blocks left out.
fn final_answer(response: &str) -> String {
    let no_think = regex::Regex::new(r"(?s)<think>.*?</think>")
        .map(|re| re.replace_all(response, "").trim().to_owned())
        .unwrap_or_else(|_| response.to_owned());
    for pattern in [
        r"(?im)(?:final answer|answer):\s*(.+?)(?:\n|$)",
        r"(?im)(?:the answer is|answer is)\s*(.+?)(?:\n|$)",
        r"(?im)###\s*(.+?)(?:\n|$)",
        r"(?im)^([A-E])\b",
        r"(?im)\b([A-E])\b\s*$",
    ] {
        if let Some(c) = regex::Regex::new(pattern)
            .ok()
            .and_then(|re| re.captures(&no_think))
        {
            return c[1].trim().to_owned();
        }
    }
    no_think
}

/// For voting: lower case, trailing punctuation and extra spaces gone.
fn normalise(answer: &str) -> String {
    let t = answer.trim().to_lowercase();
    let t = t.trim_end_matches(['.', ',', ';', ':', '!', '?']);
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Majority voting: `k` (the request's, else 8) samples at the request's temperature (else
/// 0.6); each one's final answer, normalised, is a vote; the first response of the most
/// voted answer wins (the first candidate when none has an answer).
async fn majority_voting(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let k = ctx
        .request
        .get("k")
        .and_then(Value::as_u64)
        .map_or(8, |k| k as usize)
        .clamp(1, 64);
    let candidates: Vec<String> = ctx
        .backend
        .samples(
            ctx.conversation(system, query),
            ctx.params(Some(ctx.temperature(0.6)), ctx.max_tokens()),
            k,
        )
        .await?
        .into_iter()
        .map(|r| r.text)
        .collect();
    let mut votes: Vec<(String, usize, usize)> = Vec::new(); // answer, votes, first candidate
    for (i, c) in candidates.iter().enumerate() {
        let n = normalise(&final_answer(c));
        if n.is_empty() {
            continue;
        }
        match votes.iter_mut().find(|v| v.0 == n) {
            Some(v) => v.1 += 1,
            None => votes.push((n, 1, i)),
        }
    }
    // Most votes; the earliest seen among equals (Counter.most_common's order).
    let winner = votes
        .iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| a.1.cmp(&b.1).then(ib.cmp(ia)));
    ctx.say(format!(
        "majority_voting: {} candidates, {} distinct answers",
        candidates.len(),
        votes.len()
    ));
    match winner {
        Some((_, v)) => Ok(candidates[v.2].clone()),
        None => candidates
            .into_iter()
            .next()
            .ok_or_else(|| Error::Backend("no candidate came back".into())),
    }
}

/// The first of the highest by `key` (Python's `max`, which keeps the first among equals).
fn first_max<T>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> f64) -> Option<T> {
    let mut best: Option<(f64, T)> = None;
    for item in items {
        let k = key(&item);
        if best.as_ref().is_none_or(|(b, _)| k > *b) {
            best = Some((k, item));
        }
    }
    best.map(|(_, t)| t)
}

/// A dialogue state of [`mcts`]: the turns so far and the user's next message.
#[derive(Clone)]
struct Dialogue {
    history: Vec<Value>,
    query: String,
}

struct MctsNode {
    state: Dialogue,
    parent: Option<usize>,
    children: Vec<usize>,
    visits: f64,
    value: f64,
}

/// Monte Carlo tree search over the dialogue: a state is the conversation so far and the
/// user's next message. Each of `mcts_simulations` (request, else `--mcts-simulations`, 2)
/// simulations selects a child of the root by UCB (`mcts_exploration`, 0.2), expands it
/// with three replies at temperature 1 — each followed by the user's likely next message
/// (at 1, ≤ 1024 tokens) — then plays one of them on for `mcts_depth` (1) turns and rates
/// the conversation from 0 to 1 (at 0.1, 256 tokens). The answer is the most visited first
/// reply.
async fn mcts(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let get = |k: &str| ctx.request.get(k);
    let simulations = get("mcts_simulations")
        .and_then(Value::as_u64)
        .map_or(ctx.config.mcts_simulations, |v| v as usize)
        .clamp(1, 32);
    let depth = get("mcts_depth")
        .and_then(Value::as_u64)
        .map_or(ctx.config.mcts_depth, |v| v as usize)
        .min(8);
    let exploration = get("mcts_exploration")
        .and_then(Value::as_f64)
        .unwrap_or(ctx.config.mcts_exploration);
    let conversation = |s: &Dialogue, last: &str| {
        let mut m = vec![json!({"role": "system", "content": system})];
        m.extend(s.history.iter().cloned());
        m.push(json!({"role": "user", "content": last}));
        m
    };
    let terminal =
        |s: &Dialogue| s.history.len() > 10 || s.query.to_lowercase().contains("goodbye");
    let actions = |s: Dialogue| async move {
        let replies = ctx
            .backend
            .samples(
                conversation(&s, &s.query),
                ctx.params(Some(1.0), ctx.max_tokens()),
                3,
            )
            .await?;
        Ok::<_, Error>(
            replies
                .into_iter()
                .map(|r| r.text.trim().to_owned())
                .collect::<Vec<_>>(),
        )
    };
    let apply = |s: Dialogue, action: String| async move {
        let mut history = s.history.clone();
        history.push(json!({"role": "assistant", "content": action}));
        let next = Dialogue {
            history: history.clone(),
            query: String::new(),
        };
        let said = ctx
            .backend
            .complete(
                conversation(&next, "Based on this conversation, what might the user ask or say next? Give one likely user message."),
                ctx.params(Some(1.0), ctx.max_tokens_up_to(1024)),
            )
            .await?;
        let query = match said.first() {
            Some(r) if !r.text.is_empty() && r.finish_reason != "length" => r.text.clone(),
            _ => "Please continue.".to_owned(),
        };
        Ok::<_, Error>(Dialogue { history, query })
    };
    let evaluate = |s: Dialogue| async move {
        let said = ctx
            .backend
            .complete(
                conversation(&s, "Rate the quality of this conversation from 0 to 1, where 0 is poor and 1 is excellent, for coherence, relevance and engagement. Reply with the number only."),
                ctx.params(Some(0.1), Some(256)),
            )
            .await?;
        Ok::<_, Error>(
            said.first()
                .filter(|r| r.finish_reason != "length")
                .and_then(|r| r.text.trim().parse::<f64>().ok())
                .map_or(0.5, |v| v.clamp(0.0, 1.0)),
        )
    };

    let (history, question) = ctx.history_and_question(query);
    let mut tree = vec![MctsNode {
        state: Dialogue {
            history,
            query: question,
        },
        parent: None,
        children: Vec::new(),
        visits: 0.0,
        value: 0.0,
    }];
    for sim in 0..simulations {
        // Select: a child of the root by UCB (the root while it has none).
        let root_visits = tree[0].visits;
        let mut node = first_max(tree[0].children.clone(), |&c| {
            let c = &tree[c];
            c.value / (c.visits + 1e-8)
                + exploration * ((root_visits + 1.0).ln() / (c.visits + 1e-8)).sqrt()
        })
        .unwrap_or(0);
        // Expand.
        if !terminal(&tree[node].state) {
            let replies = actions(tree[node].state.clone()).await?;
            for a in replies {
                if node == 0 {
                    ctx.offer(-1.0, &a);
                }
                let state = apply(tree[node].state.clone(), a).await?;
                tree.push(MctsNode {
                    state,
                    parent: Some(node),
                    children: Vec::new(),
                    visits: 0.0,
                    value: 0.0,
                });
                let child = tree.len() - 1;
                tree[node].children.push(child);
            }
            if !tree[node].children.is_empty() {
                node = tree[node].children[ctx.pick(tree[node].children.len())];
            }
        }
        // Simulate.
        let mut state = tree[node].state.clone();
        for _ in 0..depth {
            if terminal(&state) {
                break;
            }
            let mut replies = actions(state.clone()).await?;
            if replies.is_empty() {
                break;
            }
            let a = replies.swap_remove(ctx.pick(replies.len()));
            state = apply(state, a).await?;
        }
        let value = evaluate(state).await?;
        // Backpropagate.
        let mut at = Some(node);
        while let Some(i) = at {
            tree[i].visits += 1.0;
            tree[i].value += value;
            at = tree[i].parent;
        }
        ctx.say(format!("mcts: simulation {} rated {value}", sim + 1));
        for &c in &tree[0].children {
            let c = &tree[c];
            if let Some(Value::String(reply)) = c.state.history.last().map(|m| &m["content"]) {
                ctx.offer(c.visits, reply);
            }
        }
    }
    let best = first_max(tree[0].children.clone(), |&c| tree[c].visits)
        .ok_or_else(|| Error::Backend("no reply came back".into()))?;
    Ok(tree[best]
        .state
        .history
        .last()
        .map(backend::text)
        .unwrap_or_default())
}

/// What `<output>` holds (to the end when it is not closed), else nothing.
fn output_of(text: &str) -> String {
    regex::Regex::new(r"(?s)<output>(.*?)(?:</output>|$)")
        .ok()
        .and_then(|re| re.captures(text).map(|c| c[1].trim().to_owned()))
        .unwrap_or_default()
}

/// LEAP, learning principles from few-shot examples: the model lists the query's examples
/// (as JSON in `<output>`); for each, it answers wrongly on purpose (at 0.7); from each
/// mistake it derives a principle; the principles are condensed to at most eight; the query
/// is answered with them in mind. Without examples, only the last step.
async fn leap(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let ask = |prompt: String, temperature: Option<f64>| {
        let m = messages(system, &prompt);
        async move {
            ctx.backend
                .one(m, ctx.params(temperature, ctx.max_tokens()))
                .await
        }
    };
    let listed = ask(
        format!(
            "Does the following query contain few-shot examples (questions with their answers)? If it does, list them as a JSON array of objects with the fields \"question\" and \"answer\"; if not, an empty array. Put only the JSON array inside <output></output> tags, nothing else.\n\nExample of the format:\n<output>\n[\n  {{\"question\": \"What is 2+2?\", \"answer\": \"4\"}},\n  {{\"question\": \"What is the capital of France?\", \"answer\": \"Paris\"}}\n]\n</output>\n\nQuery: {query}"
        ),
        None,
    )
    .await?;
    let examples: Vec<(String, String)> = serde_json::from_str::<Vec<Value>>(&output_of(&listed))
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let text = |v: &Value| match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            };
            Some((text(&e["question"])?, text(&e["answer"])?))
        })
        .collect();
    ctx.say(format!("leap: {} examples in the query", examples.len()));
    let mut principles = String::new();
    if !examples.is_empty() {
        let mut mistakes = Vec::new();
        for (question, answer) in &examples {
            let reasoning = ask(
                format!(
                    "Answer the following question step by step, but make a deliberate mistake in your reasoning or calculation.\nQuestion: {question}\nGive your step-by-step reasoning, then your final answer inside <output></output> tags."
                ),
                Some(0.7),
            )
            .await?;
            let given = output_of(&reasoning);
            if given != *answer {
                mistakes.push((question, reasoning, given, answer));
            }
        }
        let mut low = Vec::new();
        for (question, reasoning, given, answer) in mistakes {
            let insight = ask(
                format!(
                    "Question: {question}\nGenerated reasoning: {reasoning}\nGenerated answer: {given}\nCorrect answer: {answer}\nCompare the generated answer with the correct one, and the generated reasoning with the right reasoning. Find the discrepancies, misunderstandings and errors, and derive general principles or guidelines that would improve future answers — not about this one question, but in general.\nReasoning: <why the generated answer is wrong>\nInsights: put ONLY the principles inside <output></output> tags."
                ),
                None,
            )
            .await?;
            low.push(output_of(&insight));
        }
        ctx.say(format!("leap: {} principles from mistakes", low.len()));
        let condensed = ask(
            format!(
                "Low-level principles: {}\nFrom them, write a numbered list of unique, insightful principles for better answers: keep what matters, drop repetition, keep each point clear, concise and drawn from the analysis, keep specific details. At most 8 principles. Put the list inside <output></output> tags.",
                low.join("\n")
            ),
            None,
        )
        .await?;
        principles = output_of(&condensed);
    }
    ask(
        format!(
            "Answer the following query, keeping these principles in mind:\n\n{principles}\n\nQuery: {query}"
        ),
        None,
    )
    .await
}

/// A verifier's `Score: N` (0 when it gives none).
fn score_of(rating: &str) -> f64 {
    regex::Regex::new(r"Score:\s*(\d+(?:\.\d+)?)")
        .ok()
        .and_then(|re| re.captures(rating).and_then(|c| c[1].parse().ok()))
        .unwrap_or(0.0)
}

/// The prover–verifier game: two rounds; in each, three helpful and three sneaky solutions
/// (at 0.7, then 0.6), each scored 0–10 by a verifier (at 0.2, 1024 tokens); the best scored
/// so far is the answer. Between rounds the model refines the query from the best solution
/// (at 0.5, ≤ 1024 tokens), and the next round answers that.
async fn pvg(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    const ROUNDS: usize = 2;
    const SOLUTIONS: usize = 3;
    let roles = "You solve the problem you are given.\nIn 'helpful' mode:\n- Give a correct, detailed, step-by-step solution.\n- Explain your reasoning clearly and logically.\n- Make sure the final answer is accurate and well supported.\n- Use the field's terms and notation where they fit.\nIn 'sneaky' mode:\n- Give a solution that looks correct but holds subtle errors.\n- Make the explanation seem logical and convincing.\n- Make the final answer wrong, in a way that is not obvious.\n- Keep the look of expertise in the field.";
    let verifier = format!(
        "{system}\nYou verify solutions to the given problem for correctness and clarity. Rate the solution from 0 to 10, where 0 is entirely wrong or incomprehensible, 5 is partly correct or unclear, and 10 is correct, clear and well explained. Weigh: the accuracy of the final answer, the correctness of each step, the clarity and logic of the explanation, the use of the field's concepts, and completeness. Look hard for subtle errors.\n\nAnswer in this format:\n\nScore: [a number from 0 to 10]\nExplanation: [why, with the solution's strengths and weaknesses]\n\nThe score is one number between 0 and 10; the explanation starts on a new line."
    );
    let mut question = query.to_owned();
    let mut best = (String::new(), -1.0);
    for round in 0..ROUNDS {
        let temperature = (0.7 - round as f64 * 0.1).max(0.2);
        let mut solutions = Vec::new();
        for mode in ["helpful", "sneaky"] {
            let m = messages(
                &format!("{system}\n{roles}\nYou are in {mode} mode."),
                &question,
            );
            let got = ctx
                .backend
                .samples(
                    m,
                    ctx.params(Some(temperature), ctx.max_tokens()),
                    SOLUTIONS,
                )
                .await?;
            solutions.extend(got.into_iter().map(|r| r.text));
        }
        let mut scored = Vec::new();
        for s in &solutions {
            let rating = ctx
                .backend
                .one(
                    messages(&verifier, &format!("Problem: {question}\n\nSolution: {s}")),
                    ctx.params(Some(0.2), Some(1024)),
                )
                .await?;
            let score = score_of(&rating);
            ctx.offer(score, s);
            scored.push((s.clone(), score));
        }
        if let Some((s, score)) = first_max(scored, |(_, sc)| *sc)
            && score > best.1
        {
            best = (s, score);
        }
        ctx.say(format!(
            "pvg: round {}: best score so far {}",
            round + 1,
            best.1
        ));
        if round + 1 < ROUNDS {
            let refine = format!(
                "From the original query and the best solution so far, suggest a refined query that could lead to an even better solution. Address what was hard or not fully answered in the best solution; keep the query's intent, adding specifics or context that would help.\n\nOriginal query: {question}\n\nBest solution so far: {}\n\nRefined query:",
                best.0
            );
            question = ctx
                .backend
                .one(
                    messages(system, &refine),
                    ctx.params(Some(0.5), ctx.max_tokens_up_to(1024)),
                )
                .await?;
        }
    }
    Ok(best.0)
}

/// A numeric answer stated in `text` ("the answer is 12", else its last number) and the
/// confidence in it (1, or 0.5 for a bare last number).
fn numeric_answer(text: &str) -> Option<(String, f64)> {
    let stated = regex::Regex::new(
        r"(?:The answer is|The final answer is|Therefore, the answer is|So, the answer is|Thus, the answer is|In conclusion, the answer is) (\d+)",
    )
    .ok()
    .and_then(|re| re.captures(text).map(|c| c[1].to_owned()));
    if let Some(a) = stated {
        return Some((a, 1.0));
    }
    regex::Regex::new(r"\d+").ok().and_then(|re| {
        re.find_iter(text)
            .last()
            .map(|m| (m.as_str().to_owned(), 0.5))
    })
}

/// rStar: `--rstar-num-rollouts` (5) rollouts run side by side from the question, as
/// OptiLLM's run them, each a chain of `--rstar-max-depth` + 1 (4) steps — each step one of
/// five actions at random (next step, the rest of the steps, a sub-question, re-examine,
/// rephrase), at 0.2 — valued by the numeric answer its last step states. Each chain is
/// checked for mutual consistency (the model completes it from a random point; more than
/// 70 % word overlap with the rest passes); the best valued consistent chain (any, when none
/// is) gives the answer: its steps' most confident, then most frequent, number. A chain's
/// value is its rollout's (OptiLLM reads it from the last step, which its backpropagation
/// never reaches, so every chain there scores 0).
async fn rstar(ctx: &Ctx<'_>, query: &str) -> Result<String, Error> {
    let depth = ctx.config.rstar_max_depth.clamp(1, 8);
    let rollouts = ctx.config.rstar_num_rollouts.clamp(1, 16);
    let system = "You are a helpful assistant focused on solving mathematical problems. Stick to the given question and avoid introducing new scenarios.";
    let step = |state: String, action: usize| async move {
        let prompt = match action {
            0 => format!(
                "Given the current state: {state}\nGenerate the next logical step in solving {query}.\nYour response should be one clear thought that moves towards the solution.\nIf you can determine the final answer at this step, state it clearly."
            ),
            1 => format!(
                "Given the current state: {state}\nContinue the reasoning to solve {query}.\nGive the remaining steps needed to reach the final answer, each clear and directly related to the problem."
            ),
            2 => format!(
                "Given the current state: {state}\nIdentify a key sub-question that must be answered to solve {query}.\nState it clearly, then answer it, and explain how it helps solve the main problem."
            ),
            3 => format!(
                "Given the current state: {state}\nRe-examine the previous step in solving {query} with chain-of-thought reasoning.\nShow each logical step explicitly. If you reach a conclusion, state it clearly."
            ),
            _ => format!(
                "Given the current state: {state}\nRephrase {query} by listing all relevant conditions and unknowns.\nCapture every important detail of the original question, so as to clarify the problem and guide its solution."
            ),
        } + "\n\nIf you determine the final answer, state 'The final answer is [your numeric answer]' at the end of your response.";
        let text = ctx
            .backend
            .one(
                messages(system, &prompt),
                ctx.params(Some(0.2), ctx.max_tokens()),
            )
            .await?;
        Ok::<_, Error>(text.trim().to_owned())
    };
    let rollout = |actions: Vec<usize>| async move {
        let mut chain = vec![query.to_owned()];
        for a in actions {
            let next = step(chain[chain.len() - 1].clone(), a).await?;
            chain.push(next);
        }
        let value = chain
            .last()
            .and_then(|s| numeric_answer(s))
            .map_or(0.0, |(_, confidence)| confidence);
        if let Some((answer, confidence)) = chain.last().and_then(|s| numeric_answer(s)) {
            ctx.offer(confidence, &answer);
        }
        Ok::<_, Error>((chain, value))
    };
    let plans: Vec<Vec<usize>> = (0..rollouts)
        .map(|_| (0..=depth).map(|_| ctx.pick(5)).collect())
        .collect();
    let mut chains = Vec::new();
    for r in futures_util::future::join_all(plans.into_iter().map(rollout)).await {
        match r {
            Ok(c) => chains.push(c),
            Err(Error::Budget(_)) if ctx.best().is_some() => {}
            Err(e) => return Err(e),
        }
    }
    ctx.say(format!(
        "rstar: {} rollouts; checking their consistency",
        chains.len()
    ));
    let words = |s: &str| -> std::collections::HashSet<String> {
        s.to_lowercase()
            .replace(['.', ','], "")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let mut consistent = Vec::new();
    for (i, (chain, _)) in chains.iter().enumerate() {
        let split = 1 + ctx.pick(chain.len() - 1);
        let prompt = format!(
            "Given the partial reasoning:\n{}\nComplete the reasoning to solve the problem:",
            chain[..split].join(" ")
        );
        let completion = ctx
            .backend
            .one(
                messages(system, &prompt),
                ctx.params(Some(0.2), ctx.max_tokens()),
            )
            .await?;
        let (a, b) = (words(&completion), words(&chain[split..].join(" ")));
        let union = a.union(&b).count();
        if union > 0 && a.intersection(&b).count() as f64 / union as f64 > 0.7 {
            consistent.push(i);
        }
    }
    let pool: Vec<usize> = if consistent.is_empty() {
        (0..chains.len()).collect()
    } else {
        consistent
    };
    let Some(best) = first_max(pool, |&i| chains[i].1) else {
        return Ok("Unable to solve the question due to insufficient reasoning paths.".into());
    };
    // The steps' answers: the most confident, then the most frequent (the first seen among
    // equals).
    let mut tally: Vec<(String, usize, f64)> = Vec::new();
    for (answer, confidence) in chains[best].0.iter().filter_map(|s| numeric_answer(s)) {
        match tally.iter_mut().find(|t| t.0 == answer) {
            Some(t) => {
                t.1 += 1;
                t.2 = t.2.max(confidence);
            }
            None => tally.push((answer, 1, confidence)),
        }
    }
    Ok(first_max(tally, |t| t.2 * 1e6 + t.1 as f64)
        .map_or_else(|| "Unable to determine a valid answer.".to_owned(), |t| t.0))
}

/// The question and its context in a memory query: what follows the last `Query:`, else the
/// last sentence (else a question about the main point).
fn split_query(text: &str) -> (String, String) {
    if let Some(at) = text.rfind("Query:") {
        return (
            text[at + "Query:".len()..].trim().to_owned(),
            text[..at].trim().to_owned(),
        );
    }
    let sentences: Vec<&str> = regex::Regex::new(r"[.!?]\s+")
        .map(|re| {
            let mut out = Vec::new();
            let mut from = 0;
            for m in re.find_iter(text.trim()) {
                out.push(text.trim()[from..m.start() + 1].trim());
                from = m.end();
            }
            out.push(text.trim()[from..].trim());
            out
        })
        .unwrap_or_default();
    if sentences.len() > 1 {
        let (last, rest) = sentences.split_last().unwrap_or((&"", &[]));
        (last.to_string(), rest.join(" "))
    } else {
        (
            "What is the main point of this text?".to_owned(),
            text.to_owned(),
        )
    }
}

/// The words TF-IDF counts (scikit-learn's default: lower case, two or more word
/// characters).
fn terms(text: &str) -> Vec<String> {
    regex::Regex::new(r"\b\w\w+\b")
        .map(|re| {
            re.find_iter(&text.to_lowercase())
                .map(|m| m.as_str().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The `top` notes most like `query` by TF-IDF cosine (scikit-learn's smoothed IDF, L2
/// norm), the most alike first.
fn most_relevant(notes: &[String], query: &str, top: usize) -> Vec<String> {
    use std::collections::HashMap;
    let docs: Vec<Vec<String>> = notes.iter().map(|n| terms(n)).collect();
    let mut df: HashMap<&str, f64> = HashMap::new();
    for d in &docs {
        let mut seen: Vec<&str> = d.iter().map(String::as_str).collect();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            *df.entry(t).or_default() += 1.0;
        }
    }
    let n = docs.len() as f64;
    let vector = |words: &[String]| -> HashMap<String, f64> {
        let mut v: HashMap<String, f64> = HashMap::new();
        for w in words {
            if let Some(d) = df.get(w.as_str()) {
                *v.entry(w.clone()).or_default() += ((1.0 + n) / (1.0 + d)).ln() + 1.0;
            }
        }
        let norm = v.values().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.values_mut().for_each(|x| *x /= norm);
        }
        v
    };
    let q = vector(&terms(query));
    let mut scored: Vec<(f64, usize)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let v = vector(d);
            (q.iter().map(|(t, x)| x * v.get(t).unwrap_or(&0.0)).sum(), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    scored
        .into_iter()
        .take(top)
        .map(|(_, i)| notes[i].clone())
        .collect()
}

/// Memory ("writing in the margins"), for long contexts: the context is read in chunks of
/// 100,000 characters; for each, the model copies what bears on the question (1000 tokens;
/// kept when it starts `YES#`); the ten notes most like the question (TF-IDF, at most 100
/// kept) go with the question into the final answer.
async fn memory(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    const CHUNK: usize = 100_000;
    let (question, context) = split_query(query);
    let chars: Vec<char> = context.chars().collect();
    let mut notes: Vec<String> = Vec::new();
    for chunk in chars.chunks(CHUNK) {
        let text: String = chunk.iter().collect();
        let prompt = format!(
            "\n'''text\n{text}\n'''\nCopy over all context relevant to the query: {question}\nAnswer in the format <YES/NO>#<relevant context>.\nThe rules:\n- If you don't know how to answer the query, start your answer with NO#\n- If the text is not related to the query, start your answer with NO#\n- If you can extract relevant information, start your answer with YES#\n- If the text does not mention the person by name, start your answer with NO#\nExample answers:\n- YES#Western philosophy originated in Ancient Greece in the 6th century BCE with the pre-Socratics.\n- NO#No relevant context.\n"
        );
        let said = ctx
            .backend
            .one(messages(system, &prompt), ctx.params(None, Some(1000)))
            .await?;
        if let Some(note) = said.trim().strip_prefix("YES#") {
            if notes.len() >= 100 {
                notes.remove(0);
            }
            notes.push(note.to_owned());
        }
    }
    let relevant = most_relevant(&notes, &question, 10);
    ctx.say(format!(
        "memory: {} notes from {} chunks; {} go into the answer",
        notes.len(),
        chars.len().div_ceil(CHUNK),
        relevant.len()
    ));
    let prompt = format!(
        "\n\nI asked my assistant to read and analyse the above content page by page to help you complete this task. These are the margin notes left on each page:\n'''text\n{}\n'''\nRead the notes again, take a deep breath and answer the query.\n{question}\n",
        serde_json::to_string(&relevant).unwrap_or_default()
    );
    let answer = ctx
        .backend
        .one(
            messages(system, &prompt),
            ctx.params(None, ctx.max_tokens()),
        )
        .await?;
    Ok(answer.trim().to_owned())
}

/// The `http(s)://` addresses in `text`, trailing punctuation and quotes left off.
fn urls_in(text: &str) -> Vec<String> {
    let Ok(re) = regex::Regex::new(r#"https?://[^\s'"]+"#) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for m in re.find_iter(text) {
        let u = m
            .as_str()
            .trim_end_matches([',', '\'', '"', ')', ']'])
            .to_owned();
        if !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

/// readurls (a plugin that makes no model call): every address in the query (up to
/// `--readurls-max-pages`) is read through the web-fetch tool — its SSRF guard, robots.txt
/// and limits apply — and put into the query after the address as `[Content from host: …]`
/// (a page that cannot be read says why there, as OptiLLM's does). The answer is the query.
async fn readurls(ctx: &Ctx<'_>, query: &str) -> Result<String, Error> {
    let urls = urls_in(query);
    if urls.is_empty() {
        return Ok(query.to_owned());
    }
    let tool = ctx.web.ok_or_else(|| {
        Error::NotRun(
            "`readurls` reads pages through the web-fetch tool, and none is set (--web-fetch)"
                .into(),
        )
    })?;
    let mut out = query.to_owned();
    for (i, u) in urls.iter().enumerate() {
        let content = if i >= ctx.config.readurls_max_pages {
            format!(
                "Error fetching content: not read (at most {} pages per query)",
                ctx.config.readurls_max_pages
            )
        } else {
            let answer = tool
                .call(
                    "fetch",
                    json!({"url": u, "max_length": ctx.config.readurls_max_chars}),
                )
                .await
                .map_err(|e| Error::Tool(format!("the web-fetch tool cannot be used: {e}")))?;
            if answer.is_error {
                format!(
                    "Error fetching content: {}",
                    answer.text.lines().next().unwrap_or("refused").trim()
                )
            } else {
                answer
                    .text
                    .chars()
                    .take(ctx.config.readurls_max_chars)
                    .collect()
            }
        };
        ctx.say(format!(
            "readurls: {u}: {} characters",
            content.chars().count()
        ));
        let host = url::Url::parse(u)
            .ok()
            .and_then(|p| {
                p.host_str().map(|h| {
                    p.port()
                        .map_or_else(|| h.to_owned(), |port| format!("{h}:{port}"))
                })
            })
            .unwrap_or_default();
        out = out.replace(u.as_str(), &format!("{u} [Content from {host}: {content}]"));
    }
    Ok(out)
}

/// json: one call with the request's `response_format` passed to the backend (which
/// constrains the output itself; OptiLLM runs a local model for this instead).
async fn json_format(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let mut params = ctx.params(
        ctx.request.get("temperature").and_then(Value::as_f64),
        ctx.max_tokens(),
    );
    if let Some(f) = ctx.response_format {
        params["response_format"] = f.clone();
    }
    if let Some(seed) = ctx.request.get("seed") {
        params["seed"] = seed.clone();
    }
    ctx.backend
        .one(ctx.conversation(system, query), params)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_are_found_and_normalised() {
        assert_eq!(final_answer("Let me think.\nFinal answer: 42.\n"), "42.");
        assert_eq!(final_answer("<think>5?</think>The answer is 7"), "7");
        assert_eq!(final_answer("### 12"), "12");
        assert_eq!(final_answer("B\nbecause"), "B");
        assert_eq!(final_answer("just text"), "just text");
        assert_eq!(normalise("  Paris  Is Nice!! "), "paris is nice");
    }
}
