//! The approaches, each OptiLLM's algorithm with its defaults and temperatures (the prompts
//! in this project's words, the same instructions). Each gets the flattened conversation —
//! the system prompt and the query — and answers with a text; calls go to the backend.

use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{Backend, Reply};
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
    /// Progress lines for a streaming client.
    pub progress: Option<&'a UnboundedSender<String>>,
}

impl Ctx<'_> {
    fn say(&self, line: impl Into<String>) {
        if let Some(p) = self.progress {
            let _ = p.send(line.into());
        }
    }

    /// `max_tokens` as the request set it. OptiLLM sends 4096 when the request sets none;
    /// here the backend's own default applies instead (the gateway's handles bound answers —
    /// 512 on `up`'s — which a fixed 4096 would override, letting a small model ramble).
    fn max_tokens(&self) -> Option<u64> {
        self.request.get("max_tokens").and_then(Value::as_u64)
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
}

fn messages(system: &str, user: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": user}),
    ]
}

/// Runs `approach` on the conversation; its answers (one, or with the server's `--n` for
/// `re2` and `plansearch`, as many).
pub async fn run(
    approach: &str,
    ctx: &Ctx<'_>,
    system: &str,
    query: &str,
) -> Result<Vec<String>, Error> {
    ctx.say(format!("{approach}: started"));
    let answers = match approach {
        "bon" => bon(ctx, system, query).await.map(|a| vec![a]),
        "moa" => moa(ctx, system, query).await.map(|a| vec![a]),
        "self_consistency" => self_consistency(ctx, system, query).await.map(|a| vec![a]),
        "cot_reflection" => cot_reflection(ctx, system, query).await.map(|a| vec![a]),
        "re2" => re2(ctx, system, query).await,
        "majority_voting" => majority_voting(ctx, system, query).await.map(|a| vec![a]),
        "rto" => rto(ctx, system, query).await.map(|a| vec![a]),
        "plansearch" => plansearch(ctx, system, query).await,
        "genselect" => genselect(ctx, system, query).await.map(|a| vec![a]),
        "none" => ctx
            .backend
            .one(messages(system, query), ctx.params(None, None))
            .await
            .map(|a| vec![a]),
        other => Err(Error::NotRun(format!("approach `{other}` is not run here"))),
    }?;
    ctx.say(format!("{approach}: done"));
    Ok(answers)
}

/// Usable candidates: a text, not cut by the token limit.
fn usable(replies: Vec<Reply>) -> Vec<String> {
    replies
        .into_iter()
        .filter(|r| !r.text.is_empty() && r.finish_reason != "length")
        .map(|r| r.text)
        .collect()
}

/// Best of n: `--best-of-n` samples at temperature 1, each rated 0–10 by the model at 0.1
/// (256 tokens); the best rated wins (the first among equals).
async fn bon(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let n = ctx.config.best_of_n.max(1);
    let base = messages(system, query);
    let candidates = usable(
        ctx.backend
            .samples(base.clone(), ctx.params(Some(1.0), ctx.max_tokens()), n)
            .await?,
    );
    if candidates.is_empty() {
        return Err(Error::Backend("no usable candidate came back".into()));
    }
    ctx.say(format!("bon: {} candidates", candidates.len()));
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
                messages(system, query),
                ctx.params(Some(1.0), ctx.max_tokens()),
                3,
            )
            .await?,
    );
    if c.is_empty() {
        return Err(Error::Backend("no usable candidate came back".into()));
    }
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
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(
            ctx.backend
                .one(
                    messages(system, query),
                    ctx.params(Some(1.0), ctx.max_tokens()),
                )
                .await?,
        );
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
            messages(&prompt, query),
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
    let prompt = format!("{query}\nRead the question again: {query}");
    let mut params = ctx.params(None, ctx.max_tokens());
    params["n"] = json!(ctx.config.n.max(1));
    let replies = ctx
        .backend
        .complete(messages(system, &prompt), params)
        .await?;
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
    let mut conversation = messages(system, query);
    let c1 = ctx
        .backend
        .one(conversation.clone(), low(ctx.max_tokens()))
        .await?;
    conversation.push(json!({"role": "assistant", "content": c1}));
    conversation.push(json!({"role": "user", "content": "Describe the code you just wrote as an instruction: one from which you could write that same code again."}));
    let q2 = ctx.backend.one(conversation, low(Some(1024))).await?;
    ctx.say("rto: the code turned back into an instruction; answering it again");
    let c2 = ctx
        .backend
        .one(messages(system, &q2), low(ctx.max_tokens()))
        .await?;
    let (c1, c2) = (code_of(&c1), code_of(&c2));
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
            messages(system, query),
            ctx.params(Some(ctx.temperature(0.7)), ctx.max_tokens()),
            k,
        )
        .await?
        .into_iter()
        .map(|r| r.text)
        .collect();
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
            messages(system, query),
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
