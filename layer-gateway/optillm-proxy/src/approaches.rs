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

/// Runs `approach` on the conversation; its answer.
pub async fn run(
    approach: &str,
    ctx: &Ctx<'_>,
    system: &str,
    query: &str,
) -> Result<String, Error> {
    ctx.say(format!("{approach}: started"));
    let answer = match approach {
        "bon" => bon(ctx, system, query).await,
        "moa" => moa(ctx, system, query).await,
        "self_consistency" => self_consistency(ctx, system, query).await,
        "cot_reflection" => cot_reflection(ctx, system, query).await,
        "re2" => re2(ctx, system, query).await,
        "majority_voting" => majority_voting(ctx, system, query).await,
        "none" => {
            ctx.backend
                .one(messages(system, query), ctx.params(None, None))
                .await
        }
        other => Err(Error::NotRun(format!("approach `{other}` is not run here"))),
    }?;
    ctx.say(format!("{approach}: done"));
    Ok(answer)
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
async fn re2(ctx: &Ctx<'_>, system: &str, query: &str) -> Result<String, Error> {
    let prompt = format!("{query}\nRead the question again: {query}");
    let mut params = ctx.params(None, ctx.max_tokens());
    params["n"] = json!(ctx.config.n.max(1));
    let replies = ctx
        .backend
        .complete(messages(system, &prompt), params)
        .await?;
    replies
        .into_iter()
        .next()
        .map(|r| r.text.trim().to_owned())
        .ok_or_else(|| Error::Backend("the backend answered no choice".into()))
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
