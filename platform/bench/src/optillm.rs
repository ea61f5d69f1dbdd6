//! `bench optillm`: what OptiLLM's approaches buy on the local model, and what the proxy
//! itself costs.
//!
//! - **accuracy**: `homelab up` runs as deployed (its own process, the default model), and
//!   each approach answers the same fixed set of generated arithmetic word problems through
//!   the proxy (`<approach>-local`, one question at a time): share answered right (the
//!   number after "the answer is", else the last number), median and total wall time, and
//!   backend calls per question. `none` is the baseline, measured in the same run.
//! - **overhead**: the proxy as its own process in front of the fast upstream; requests/s,
//!   p50 latency and the proxy's CPU per request straight to the upstream, through `none`
//!   (passed through) and through `re2` (one backend call on the approaches' path).
//!
//! Run: `cargo build --release -p homelab --features llama-cpp -p optillm-proxy -p bench &&
//! target/release/bench optillm`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{chat_body, free_port, run_case};

#[derive(clap::Args)]
pub struct OptillmArgs {
    /// How many questions (generated, the same for every approach and run).
    #[arg(long, default_value_t = 50)]
    questions: usize,
    /// Approaches to measure, `none` first as the baseline.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,re2,cot_reflection,self_consistency,majority_voting,bon,moa"
    )]
    approaches: Vec<String>,
    /// New tokens per backend call (the request's `max_tokens`, which the approaches pass
    /// on; ratings and critiques keep their own).
    #[arg(long, default_value_t = 160)]
    max_tokens: u64,
    /// The engine backend `up` runs.
    #[arg(long, default_value = "llama-cpp")]
    backend: String,
    /// Where `up` keeps its DB and model cache (kept between runs).
    #[arg(long, default_value = "target/bench-optillm")]
    data_dir: PathBuf,
    /// Skip the accuracy part (only the proxy's overhead).
    #[arg(long)]
    overhead_only: bool,
    /// How long each overhead case runs.
    #[arg(long, default_value = "3s", value_parser = contract::units::parse_duration)]
    duration: Duration,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One generated question and its answer.
struct Question {
    text: String,
    answer: i64,
}

/// `n` word problems with small whole-number answers, the same every run.
fn questions(n: usize) -> Vec<Question> {
    let mut rng = fastrand::Rng::with_seed(2026);
    let names = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ben", "Zoe"];
    (0..n)
        .map(|i| {
            let name = names[rng.usize(..names.len())];
            let (a, b, c) = (rng.i64(2..20), rng.i64(2..10), rng.i64(2..10));
            match i % 5 {
                0 => Question {
                    text: format!("{name} has {a} apples and buys {b} more. How many apples does {name} have now?"),
                    answer: a + b,
                },
                1 => Question {
                    text: format!("{name} had {} marbles and gave {b} to a friend. How many marbles does {name} have left?", a + b),
                    answer: a,
                },
                2 => Question {
                    text: format!("A box holds {b} pencils. How many pencils are in {c} boxes?"),
                    answer: b * c,
                },
                3 => Question {
                    text: format!("{name} reads {b} pages a day. How many pages does {name} read in {c} days?"),
                    answer: b * c,
                },
                _ => Question {
                    text: format!("There are {} birds on a tree. {b} fly away and then {c} more arrive. How many birds are on the tree now?", a + b),
                    answer: a + c,
                },
            }
        })
        .collect()
}

/// The number an answer gives: the one after "answer is" (or "answer:"), else the last.
fn stated(answer: &str) -> Option<i64> {
    let lower = answer.to_lowercase();
    let numbers = |s: &str| -> Vec<i64> {
        s.split(|c: char| !c.is_ascii_digit() && c != '-')
            .filter_map(|t| t.trim_matches('-').parse().ok())
            .collect()
    };
    for marker in ["answer is", "answer:"] {
        if let Some(at) = lower.rfind(marker)
            && let Some(n) = numbers(&lower[at + marker.len()..]).first()
        {
            return Some(*n);
        }
    }
    numbers(&lower).last().copied()
}

#[derive(Default)]
struct Tally {
    right: usize,
    errors: usize,
    times: Vec<Duration>,
    calls: u64,
}

pub async fn run(a: OptillmArgs) -> Result<(), String> {
    let mut doc = json!({});
    if !a.overhead_only {
        doc["accuracy"] = accuracy(&a).await?;
    }
    doc["overhead"] = overhead(&a).await?;
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&doc).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn beside_me(name: &str) -> Result<PathBuf, String> {
    Ok(std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name(name))
}

async fn accuracy(a: &OptillmArgs) -> Result<Value, String> {
    let bin = beside_me("homelab")?;
    let optillm_port = free_port().await?;
    let mut up = tokio::process::Command::new(&bin);
    up.args([
        "up",
        "--no-tools",
        "--no-data",
        "--no-shortcuts",
        "--data-dir",
    ])
    .arg(&a.data_dir)
    .args(["--gateway-port", &free_port().await?.to_string()])
    .args(["--engine-port", &free_port().await?.to_string()])
    .args(["--monitor-port", &free_port().await?.to_string()])
    .args(["--optillm-port", &optillm_port.to_string()]);
    let (mut child, up_rx) = crate::first_chat::spawn_up(up, &a.backend)?;
    tokio::time::timeout(Duration::from_secs(900), up_rx)
        .await
        .map_err(|_| "up never said it was up")?
        .map_err(|_| "up stopped (is the engine backend built in?)")?;

    let url = format!("http://127.0.0.1:{optillm_port}/v1/chat/completions");
    let client = reqwest::Client::new();
    let qs = questions(a.questions);
    println!(
        "{} arithmetic word problems on the local model (SmolLM2-135M, {}), one at a time; max_tokens {}\n",
        qs.len(),
        a.backend,
        a.max_tokens
    );
    println!(
        "{:<18} {:>8} {:>10} {:>10} {:>10} {:>12} {:>7}",
        "approach", "right", "p50 s", "total s", "× none", "calls/q", "errors"
    );
    let mut rows = Vec::new();
    let mut base_total = None;
    for approach in &a.approaches {
        let mut t = Tally::default();
        for q in &qs {
            let body = json!({
                "model": format!("{approach}-local"),
                "max_tokens": a.max_tokens,
                "messages": [
                    {"role": "system", "content": "Solve the problem step by step. End with: The answer is N."},
                    {"role": "user", "content": q.text},
                ],
            });
            let t0 = Instant::now();
            let res = client.post(&url).json(&body).send().await;
            let Ok(res) = res else {
                t.errors += 1;
                continue;
            };
            let calls: u64 = res
                .headers()
                .get("x-backend-calls")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let ok = res.status().is_success();
            let v: Value = res.json().await.unwrap_or(Value::Null);
            t.times.push(t0.elapsed());
            t.calls += calls;
            if !ok {
                t.errors += 1;
                continue;
            }
            let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
            if stated(text) == Some(q.answer) {
                t.right += 1;
            }
        }
        let total: Duration = t.times.iter().sum();
        let base = *base_total.get_or_insert(total);
        let mut sorted = t.times.clone();
        sorted.sort();
        let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
        println!(
            "{:<18} {:>3}/{:<4} {:>10.2} {:>10.1} {:>9.1}× {:>12.1} {:>7}",
            approach,
            t.right,
            qs.len(),
            p50.as_secs_f64(),
            total.as_secs_f64(),
            total.as_secs_f64() / base.as_secs_f64().max(1e-9),
            t.calls as f64 / qs.len() as f64,
            t.errors
        );
        rows.push(json!({
            "approach": approach, "right": t.right, "questions": qs.len(),
            "p50_s": p50.as_secs_f64(), "total_s": total.as_secs_f64(),
            "calls_per_question": t.calls as f64 / qs.len() as f64, "errors": t.errors,
        }));
    }
    let _ = child.kill().await;
    println!();
    Ok(json!(rows))
}

/// The process's CPU time so far (user + system).
fn cpu(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

async fn overhead(a: &OptillmArgs) -> Result<Value, String> {
    let up_port = free_port().await?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut upstream = tokio::process::Command::new(&me)
        .args(["upstream", "--port", &up_port.to_string()])
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the upstream: {e}"))?;
    let port = free_port().await?;
    let bin = beside_me("optillm-proxy")?;
    let mut proxy = tokio::process::Command::new(&bin)
        .args(["--base-url", &format!("http://127.0.0.1:{up_port}/v1")])
        .args(["--port", &port.to_string()])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e} (cargo build --release -p optillm-proxy)",
                bin.display()
            )
        })?;
    let pid = proxy.id().ok_or("the proxy exited")?;
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let mut ready = false;
    for _ in 0..100 {
        let proxy_up = client
            .get(format!("http://127.0.0.1:{port}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if proxy_up {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        return Err("the proxy (or the upstream behind it) did not become ready".into());
    }
    let direct = format!("http://127.0.0.1:{up_port}/v1/chat/completions");
    let through = format!("http://127.0.0.1:{port}/v1/chat/completions");
    println!(
        "the proxy's own cost, in front of a fast upstream; concurrency 1, {:?} per case\n",
        a.duration
    );
    println!(
        "{:<24} {:>10} {:>10} {:>12} {:>16}",
        "path", "req/s", "p50 µs", "+p50 µs", "proxy CPU/req µs"
    );
    let base = run_case(&client, &direct, &chat_body("bench", false), 1, a.duration).await;
    println!(
        "{:<24} {:>10.0} {:>10.0} {:>12} {:>16}",
        "direct", base.rps, base.p50_us, "", ""
    );
    let mut rows = vec![json!({"path": "direct", "rps": base.rps, "p50_us": base.p50_us})];
    for (label, model) in [
        ("proxy, none", "bench"),
        ("proxy, re2 (1 call)", "re2-bench"),
    ] {
        let before = cpu(pid).unwrap_or_default();
        let s = run_case(&client, &through, &chat_body(model, false), 1, a.duration).await;
        let used = cpu(pid).unwrap_or_default().saturating_sub(before);
        let requests = s.rps * a.duration.as_secs_f64();
        let per = used.as_secs_f64() * 1e6 / requests.max(1.0);
        println!(
            "{:<24} {:>10.0} {:>10.0} {:>12.0} {:>16.0}{}",
            label,
            s.rps,
            s.p50_us,
            s.p50_us - base.p50_us,
            per,
            if s.errors > 0 {
                format!("  ({} errors)", s.errors)
            } else {
                String::new()
            }
        );
        rows.push(json!({
            "path": label, "rps": s.rps, "p50_us": s.p50_us,
            "added_p50_us": s.p50_us - base.p50_us, "cpu_us_per_request": per, "errors": s.errors,
        }));
    }
    let _ = proxy.kill().await;
    let _ = upstream.kill().await;
    Ok(json!(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_stated() {
        assert_eq!(stated("3 + 4 = 7. The answer is 7."), Some(7));
        assert_eq!(stated("So 12 apples. Answer: 12"), Some(12));
        assert_eq!(stated("He has 9 left"), Some(9));
        assert_eq!(stated("no idea"), None);
        let qs = questions(50);
        assert_eq!(qs.len(), 50);
        assert!(qs.iter().all(|q| q.answer > 0));
    }
}
