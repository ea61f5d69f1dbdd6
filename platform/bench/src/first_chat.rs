//! `bench first-chat`: what a new user sees on the embedded default. `homelab up` runs as
//! deployed (its own process, the default model SmolLM2-135M, with each engine backend in
//! turn), and the bench times, as a client does:
//!
//! - **cold**: a request sent the moment the gateway's port accepts, before the model loaded
//!   (time from `up`'s start to the answer), and the time until `up` says it is up;
//! - **curl**: the README's "Try it" command, exactly as written, run by `sh`;
//! - **alone**: Open WebUI's chat request by itself (the baseline);
//! - **turn**: one chat turn as Open WebUI 0.12.4 sends it (the chat and its title,
//!   follow-up and tags tasks at once, then the next chat as soon as the first answer is in),
//!   from `crates/contract/tests/fixtures/openwebui-0.12.4-upstream-requests.jsonl`;
//! - **turn, no priority**: the same, with the tasks sent as interactive
//!   (`x-homelab-priority: interactive`): first come, first served, as before priorities.
//!
//! Chats report time to first token (the first data event) and total time; every row is a
//! median over `--rounds`, and the ratios are against **alone**, measured in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use contract::sse::SseDecoder;
use serde_json::{Value, json};

use crate::free_port;

const README: &str = include_str!("../../../README.md");

#[derive(clap::Args)]
pub struct FirstChatArgs {
    /// Engine backends to run `up` with, in order (`llama-cpp` needs a `homelab` built with
    /// `--features llama-cpp`).
    #[arg(long, value_delimiter = ',', default_value = "candle,llama-cpp")]
    backends: Vec<String>,
    /// Rounds of each case.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where `up` keeps its DB and model cache (kept between runs, so the model is pulled
    /// once).
    #[arg(long, default_value = "target/bench-first-chat")]
    data_dir: PathBuf,
    /// The `homelab` binary (default: beside this one).
    #[arg(long)]
    homelab_bin: Option<PathBuf>,
    /// How long `up` may take to pull and load the model.
    #[arg(long, default_value = "600s", value_parser = contract::units::parse_duration)]
    load_timeout: Duration,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One request as the client saw it.
#[derive(Debug, Clone)]
struct Seen {
    status: u16,
    finish: String,
    ttft: Duration,
    total: Duration,
    done: Instant,
}

/// The README's "Try it" command.
fn readme_curl() -> Option<String> {
    let mut out = String::new();
    for l in README
        .lines()
        .skip_while(|l| !l.starts_with("curl http://127.0.0.1:4000/v1/chat/completions"))
    {
        out.push_str(l);
        out.push('\n');
        if !l.ends_with('\\') {
            return Some(out);
        }
    }
    None
}

async fn send(
    client: &reqwest::Client,
    gateway: &str,
    body: &Value,
    priority: Option<&str>,
) -> Seen {
    let t0 = Instant::now();
    let mut req = client
        .post(format!("{gateway}/v1/chat/completions"))
        .json(body);
    if let Some(p) = priority {
        req = req.header("x-homelab-priority", p);
    }
    let failed = |status: u16| Seen {
        status,
        finish: String::new(),
        ttft: t0.elapsed(),
        total: t0.elapsed(),
        done: Instant::now(),
    };
    let Ok(mut res) = req.send().await else {
        return failed(0);
    };
    let status = res.status().as_u16();
    if body["stream"] != json!(true) {
        let v: Value = res.json().await.unwrap_or(Value::Null);
        let mut s = failed(status);
        s.finish = v["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        return s;
    }
    let mut d = SseDecoder::new();
    let mut ttft = None;
    let mut finish = String::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        for ev in d.push(&chunk).unwrap_or_default() {
            if ev.is_done() {
                continue;
            }
            ttft.get_or_insert_with(|| t0.elapsed());
            if let Ok(c) = serde_json::from_str::<Value>(&ev.data)
                && let Some(f) = c["choices"][0]["finish_reason"].as_str()
            {
                finish = f.to_owned();
            }
        }
    }
    Seen {
        status,
        finish,
        ttft: ttft.unwrap_or_else(|| t0.elapsed()),
        total: t0.elapsed(),
        done: Instant::now(),
    }
}

/// One Open WebUI turn; the two chats, then the three tasks.
async fn turn(
    client: &reqwest::Client,
    gateway: &str,
    b: &[Value],
    task_priority: Option<&'static str>,
) -> (Seen, Seen, Vec<Seen>) {
    use testkit::openwebui::{CHAT, FOLLOW_UPS, NEXT_CHAT, TAGS, TITLE};
    let tasks: Vec<_> = [TITLE, FOLLOW_UPS, TAGS]
        .into_iter()
        .map(|i| {
            let (c, g, body) = (client.clone(), gateway.to_owned(), b[i].clone());
            tokio::spawn(async move { send(&c, &g, &body, task_priority).await })
        })
        .collect();
    let first = send(client, gateway, &b[CHAT], None).await;
    let second = send(client, gateway, &b[NEXT_CHAT], None).await;
    let mut done = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            done.push(s);
        }
    }
    (first, second, done)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The figures of one backend.
#[derive(Debug, Default)]
struct Figures {
    up_s: f64,
    cold_s: f64,
    curl: Vec<Duration>,
    alone: Vec<(Duration, Duration)>,
    turn: Vec<(Duration, Duration, Duration, Duration, Duration)>,
    fifo: Vec<(Duration, Duration, Duration, Duration, Duration)>,
    answers: usize,
    stopped: usize,
    errors: usize,
}

impl Figures {
    fn count(&mut self, s: &Seen) {
        self.answers += 1;
        if s.status != 200 {
            self.errors += 1;
        }
        if s.finish == "stop" {
            self.stopped += 1;
        }
    }
}

pub async fn run(a: FirstChatArgs) -> Result<(), String> {
    let bin = match &a.homelab_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("homelab"),
    };
    let curl = readme_curl().ok_or("the README has no Try it curl")?;
    let b = testkit::openwebui::bodies_for("local");
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let mut json_rows = Vec::new();
    println!(
        "homelab up, default model, {} rounds per case; medians; ratios against the chat alone\n",
        a.rounds
    );
    for backend in &a.backends {
        let f = match one_backend(&a, &bin, backend, &client, &curl, &b).await {
            Ok(f) => f,
            Err(e) => {
                println!("{backend}: skipped ({e})\n");
                continue;
            }
        };
        print(backend, &f);
        json_rows.push(json!({
            "backend": backend,
            "up_s": f.up_s,
            "cold_request_s": f.cold_s,
            "curl_s": median(f.curl.clone()).as_secs_f64(),
            "alone_ttft_s": median(f.alone.iter().map(|x| x.0).collect()).as_secs_f64(),
            "alone_total_s": median(f.alone.iter().map(|x| x.1).collect()).as_secs_f64(),
            "turn_chat_ttft_s": median(f.turn.iter().map(|x| x.0).collect()).as_secs_f64(),
            "turn_chat_total_s": median(f.turn.iter().map(|x| x.1).collect()).as_secs_f64(),
            "turn_next_ttft_s": median(f.turn.iter().map(|x| x.2).collect()).as_secs_f64(),
            "turn_next_total_s": median(f.turn.iter().map(|x| x.3).collect()).as_secs_f64(),
            "turn_tasks_s": median(f.turn.iter().map(|x| x.4).collect()).as_secs_f64(),
            "fifo_chat_ttft_s": median(f.fifo.iter().map(|x| x.0).collect()).as_secs_f64(),
            "fifo_chat_total_s": median(f.fifo.iter().map(|x| x.1).collect()).as_secs_f64(),
            "fifo_next_ttft_s": median(f.fifo.iter().map(|x| x.2).collect()).as_secs_f64(),
            "fifo_next_total_s": median(f.fifo.iter().map(|x| x.3).collect()).as_secs_f64(),
            "answers": f.answers, "stopped": f.stopped, "errors": f.errors,
        }));
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&json_rows).unwrap_or_default())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn print(backend: &str, f: &Figures) {
    let med = |v: &[(Duration, Duration, Duration, Duration, Duration)], k: usize| {
        median(v.iter().map(|x| [x.0, x.1, x.2, x.3, x.4][k]).collect())
    };
    let alone_ttft = median(f.alone.iter().map(|x| x.0).collect());
    let alone_total = median(f.alone.iter().map(|x| x.1).collect());
    let ratio = |d: Duration, base: Duration| {
        if base.is_zero() {
            String::new()
        } else {
            format!("{:.1}×", d.as_secs_f64() / base.as_secs_f64())
        }
    };
    println!("{backend}");
    println!(
        "  up until ready {:.1} s; a request sent at start answered after {:.1} s",
        f.up_s, f.cold_s
    );
    println!(
        "  README curl                  total {}",
        secs(median(f.curl.clone()))
    );
    println!(
        "  chat alone                   TTFT {}  total {}",
        secs(alone_ttft),
        secs(alone_total)
    );
    for (name, v) in [("turn", &f.turn), ("turn, no priority", &f.fifo)] {
        println!(
            "  {name:<18} chat       TTFT {} ({})  total {} ({})",
            secs(med(v, 0)),
            ratio(med(v, 0), alone_ttft),
            secs(med(v, 1)),
            ratio(med(v, 1), alone_total)
        );
        println!(
            "  {:<18} next chat  TTFT {} ({})  total {} ({})   tasks done after {}",
            "",
            secs(med(v, 2)),
            ratio(med(v, 2), alone_ttft),
            secs(med(v, 3)),
            ratio(med(v, 3), alone_total),
            secs(med(v, 4))
        );
    }
    println!(
        "  {} answers, {} ended with stop, {} errors\n",
        f.answers, f.stopped, f.errors
    );
}

/// Starts `homelab up` (`up`, its arguments set) on the engine `backend`; the process, and
/// the moment it says "homelab-llm is up".
pub(crate) fn spawn_up(
    mut up: tokio::process::Command,
    backend: &str,
) -> Result<
    (
        tokio::process::Child,
        tokio::sync::oneshot::Receiver<Instant>,
    ),
    String,
> {
    let mut child = up
        .env("HOMELAB_ENGINE_BACKEND", backend)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{:?}: {e}", up.as_std().get_program()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut up_tx = Some(up_tx);
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("homelab-llm is up")
                && let Some(tx) = up_tx.take()
            {
                let _ = tx.send(Instant::now());
            }
        }
    });
    Ok((child, up_rx))
}

async fn one_backend(
    a: &FirstChatArgs,
    bin: &std::path::Path,
    backend: &str,
    client: &reqwest::Client,
    curl: &str,
    b: &[Value],
) -> Result<Figures, String> {
    let port = free_port().await?;
    let started = Instant::now();
    let mut up = tokio::process::Command::new(bin);
    up.args(["up", "--no-tools", "--no-data", "--data-dir"])
        .arg(&a.data_dir)
        .args(["--gateway-port", &port.to_string()])
        .args(["--engine-port", &free_port().await?.to_string()])
        .args(["--monitor-port", &free_port().await?.to_string()]);
    let (mut child, up_rx) = spawn_up(up, backend)?;
    let gateway = format!("http://127.0.0.1:{port}");
    let mut f = Figures::default();
    // A request the moment the port accepts.
    let deadline = started + a.load_timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            return Err("up did not start (see `homelab up` alone)".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cold = send(client, &gateway, &b[testkit::openwebui::CHAT], None).await;
    if cold.status != 200 {
        return Err(format!(
            "the first request got {} (is {backend} built in?)",
            cold.status
        ));
    }
    f.cold_s = started.elapsed().as_secs_f64();
    f.count(&cold);
    let up_at = tokio::time::timeout(a.load_timeout, up_rx)
        .await
        .map_err(|_| "up never said it was up")?
        .map_err(|_| "up stopped")?;
    f.up_s = up_at.duration_since(started).as_secs_f64();
    let cmd = format!(
        "{} --silent --show-error --write-out '\\n%{{http_code}}'",
        curl.trim_end()
            .replace("127.0.0.1:4000", &format!("127.0.0.1:{port}"))
    );
    for _ in 0..a.rounds {
        let t0 = Instant::now();
        let out = tokio::process::Command::new("sh")
            .args(["-c", &cmd])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let total = t0.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        f.count(&Seen {
            status: code.trim().parse().unwrap_or(0),
            finish: v["choices"][0]["finish_reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ttft: total,
            total,
            done: Instant::now(),
        });
        f.curl.push(total);
    }
    for _ in 0..a.rounds {
        let s = send(client, &gateway, &b[testkit::openwebui::CHAT], None).await;
        f.count(&s);
        f.alone.push((s.ttft, s.total));
    }
    for (priority, into) in [(None, 0), (Some("interactive"), 1)] {
        for _ in 0..a.rounds {
            let t0 = Instant::now();
            let (first, second, tasks) = turn(client, &gateway, b, priority).await;
            for s in [&first, &second].into_iter().chain(&tasks) {
                f.count(s);
            }
            let tasks_done = tasks
                .iter()
                .map(|t| t.done.duration_since(t0))
                .max()
                .unwrap_or_default();
            let row = (
                first.ttft,
                first.total,
                second.ttft,
                second.total,
                tasks_done,
            );
            if into == 0 {
                f.turn.push(row);
            } else {
                f.fifo.push(row);
            }
        }
    }
    let _ = child.kill().await;
    Ok(f)
}
