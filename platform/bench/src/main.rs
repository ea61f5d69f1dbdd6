//! `bench gateway`: requests/s and latency straight to a fast upstream and through the
//! gateway, each in its own process as deployed, for plain and streaming chat at several
//! concurrencies, plus the gateway's memory. Every figure is measured in the same run, so the
//! ratios hold on a noisy machine where absolute numbers do not.
//!
//! Run: `cargo build --release -p gateway -p bench && target/release/bench gateway`
//!
//! `bench engine`: see `engine.rs`. `bench monitor`: see `monitor.rs`. `bench first-chat`:
//! see `first_chat.rs`. `bench vector`: see `vector.rs`. `bench optillm`: see `optillm.rs`.
//! `bench soak`: see `soak.rs`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod engine;
mod first_chat;
mod monitor;
mod optillm;
mod peers;
mod soak;
mod vector;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use docsdb::spec::{HandleSpec, SystemSpec, TargetSpec};

#[derive(Parser)]
#[command(name = "bench", about = "homelab-llm benchmarks")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The gateway against direct-to-upstream.
    Gateway(GatewayArgs),
    /// The engine's backends and llama.cpp's own C++ server: a short chat, ten turns of one
    /// chat, a long prompt cold and again, four clients, an agent loop; over HTTP.
    Engine(engine::EngineArgs),
    /// Build llama.cpp's `llama-server` (the anchor of `bench engine`) from the llama.cpp
    /// sources inside the `llama-cpp-python` sdist on PyPI.
    EngineAnchor(engine::AnchorArgs),
    /// `homelab up` on the default model as a new user meets it: the README's curl, and
    /// Open WebUI's chat turn (a chat and its background tasks) against the chat alone.
    FirstChat(first_chat::FirstChatArgs),
    /// The system monitor's reads over a week of traffic against the same reads over empty
    /// logs, on SQLite and Postgres.
    Monitor(monitor::MonitorArgs),
    /// The vector store against Chroma and sqlite-vec (insert rate, search latency at
    /// concurrency 1 and 8, recall@10, memory), and the embedding model against
    /// sentence-transformers.
    Vector(vector::VectorArgs),
    /// OptiLLM's approaches on the local model (accuracy and wall time on generated word
    /// problems against `none`), and the proxy's own overhead per backend call.
    Optillm(optillm::OptillmArgs),
    /// The gateway under an hour-equivalent of mixed traffic (plain, streamed, clients that
    /// leave mid-stream, failing upstreams, cache hits, bad requests) with its memory sampled.
    Soak(soak::SoakArgs),
    /// Serve the fast upstream on a port (the gateway benchmark runs this as its own process,
    /// so that neither path shares a process with the load generator).
    #[command(hide = true)]
    Upstream {
        #[arg(long)]
        port: u16,
    },
}

#[derive(clap::Args)]
struct GatewayArgs {
    /// How long each case runs.
    #[arg(long, default_value = "3s", value_parser = contract::units::parse_duration)]
    duration: Duration,
    /// Concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    #[command(flatten)]
    gateway: GatewayProcess,
    /// Drive the cases with wrk (an external load generator) instead of the built-in one
    /// (no time-to-first-byte column then).
    #[arg(long)]
    wrk: bool,
    /// Also measure nginx as a reverse proxy in front of the same upstream: a peer.
    #[arg(long)]
    nginx: bool,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Which gateway a benchmark starts, and how.
#[derive(clap::Args)]
struct GatewayProcess {
    /// The gateway binary (default: beside this one).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Extra flags for the gateway (space-separated), e.g. `--log-queue 1`.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    gateway_args: String,
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    ttfb_p50_us: f64,
    errors: usize,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

/// The chat request every case sends.
fn chat_body(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}],
    })
    .to_string()
}

async fn run_case(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    conc: usize,
    dur: Duration,
) -> Stats {
    // Warm the connections up first.
    let warm_until = Instant::now() + Duration::from_millis(300);
    let deadline = warm_until + dur;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let client = client.clone();
        let url = url.to_owned();
        let body = body.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ttfb = Vec::new();
            let mut errors = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match r {
                    Ok(mut res) if res.status().is_success() => {
                        let first = Instant::now();
                        let mut ok = true;
                        loop {
                            match res.chunk().await {
                                Ok(Some(_)) => {}
                                Ok(None) => break,
                                Err(_) => {
                                    ok = false;
                                    break;
                                }
                            }
                        }
                        if ok && t0 >= warm_until {
                            lat.push(t0.elapsed().as_micros() as u64);
                            ttfb.push((first - t0).as_micros() as u64);
                        }
                        ok
                    }
                    _ => false,
                };
                if !ok {
                    errors += 1;
                }
            }
            (lat, ttfb, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut ttfb = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, f, e)) = t.await {
            lat.extend(l);
            ttfb.extend(f);
            errors += e;
        }
    }
    lat.sort_unstable();
    ttfb.sort_unstable();
    Stats {
        rps: lat.len() as f64 / dur.as_secs_f64(),
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        ttfb_p50_us: percentile(&ttfb, 0.50),
        errors,
    }
}

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A process's CPU time so far (user + system), in milliseconds (`/proc/PID/stat`, in the
/// kernel's 100 Hz user ticks).
fn cpu_ms(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields count from the closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// CPU milliseconds per 1,000 requests of `pid` over a case, from its CPU time before and
/// after.
fn cpu_per_1k(pid: u32, before: Option<f64>, requests: f64) -> f64 {
    match (before, cpu_ms(pid)) {
        (Some(b), Some(a)) if requests > 0.0 => (a - b) / requests * 1000.0,
        _ => f64::NAN,
    }
}

/// Writes a benchmark's figures as pretty JSON, and says where.
fn write_json(path: &std::path::Path, doc: &serde_json::Value) -> Result<(), String> {
    std::fs::write(path, serde_json::to_string_pretty(doc).unwrap_or_default())
        .map_err(|e| e.to_string())?;
    println!("wrote {}", path.display());
    Ok(())
}

async fn free_port() -> Result<u16, String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The fast upstream and a gateway in front of it, each its own process, over a fresh
/// system-docs DB holding `handles` (targets' `base_url`s may use `{upstream}`).
struct Stack {
    up_child: tokio::process::Child,
    child: tokio::process::Child,
    pid: u32,
    up_pid: u32,
    /// The gateway's base URL.
    gw: String,
    /// The upstream's `host:port`.
    upstream: String,
    db_url: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(handles: Vec<HandleSpec>, gateway: &GatewayProcess) -> Result<Stack, String> {
        let (gateway_bin, gateway_args) = (gateway.gateway_bin.clone(), &gateway.gateway_args);
        let up_port = free_port().await?;
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let up_child = tokio::process::Command::new(&me)
            .args(["upstream", "--port", &up_port.to_string()])
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the upstream: {e}"))?;
        let upstream = format!("127.0.0.1:{up_port}");
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
        let db = docsdb::Db::open(&db_url).await.map_err(|e| e.to_string())?;
        let mut handles = handles;
        for t in handles.iter_mut().flat_map(|h| h.targets.iter_mut()) {
            t.base_url = t
                .base_url
                .as_ref()
                .map(|u| u.replace("{upstream}", &upstream));
        }
        let spec = SystemSpec {
            handles,
            ..Default::default()
        };
        docsdb::apply::apply(&db, &spec, false)
            .await
            .map_err(|e| e.to_string())?;
        db.close().await;

        let bin = match gateway_bin {
            Some(b) => b,
            None => me.with_file_name("gateway"),
        };
        let port = free_port().await?;
        let child = tokio::process::Command::new(&bin)
            .args(["--db", &db_url, "--bind", &format!("127.0.0.1:{port}")])
            .args(gateway_args.split_whitespace())
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {}: {e} (cargo build --release -p gateway)",
                    bin.display()
                )
            })?;
        let pid = child.id().ok_or("gateway exited")?;
        let up_pid = up_child.id().ok_or("the upstream exited")?;
        let gw = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        let mut ready = false;
        for _ in 0..100 {
            if client
                .get(format!("{gw}/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !ready {
            return Err("the gateway did not become ready".into());
        }
        let mut up_ready = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&upstream).await.is_ok() {
                up_ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !up_ready {
            return Err("the upstream did not start".into());
        }
        Ok(Stack {
            up_child,
            child,
            pid,
            up_pid,
            gw,
            upstream,
            db_url,
            client,
            _dir: dir,
        })
    }

    /// Request-log rows written so far.
    async fn log_rows(&self) -> i64 {
        use sqlx::Row;
        let Ok(db) = docsdb::Db::open(&self.db_url).await else {
            return -1;
        };
        sqlx::query("SELECT COUNT(*) AS n FROM request_log")
            .fetch_one(db.pool())
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .unwrap_or(-1)
    }

    /// The gateway's `/metrics` text.
    async fn metrics(&self) -> String {
        match self.client.get(format!("{}/metrics", self.gw)).send().await {
            Ok(m) => m.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Stops the gateway as systemd does (SIGTERM, waiting for its drain), then the upstream.
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.up_child.kill().await;
    }
}

async fn bench_gateway(args: GatewayArgs) -> Result<(), String> {
    let mut t = TargetSpec::on_endpoint("fast", "fast-model");
    t.base_url = Some("http://{upstream}/v1".into());
    let stack = Stack::start(vec![HandleSpec::new("bench", vec![t])], &args.gateway).await?;
    let (pid, up_pid, client) = (stack.pid, stack.up_pid, stack.client.clone());
    let (gw, upstream) = (stack.gw.clone(), stack.upstream.clone());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let wrk = match args.wrk {
        true => Some(peers::Wrk::new(dir.path())?),
        false => None,
    };
    let nginx = match args.nginx {
        true => Some(peers::Nginx::start(dir.path(), &upstream).await?),
        false => None,
    };
    let measure = async |url: &str, stream: bool, c: usize| -> Result<Stats, String> {
        let body = chat_body("bench", stream);
        match &wrk {
            Some(w) => w.run(url, &body, c, args.duration).await,
            None => Ok(run_case(&client, url, &body, c, args.duration).await),
        }
    };
    let rss_idle = rss_kb(pid, "VmRSS:").unwrap_or(0);
    println!(
        "gateway pid {pid}, idle RSS {:.1} MB; each case runs {:?}\n",
        rss_idle as f64 / 1024.0,
        args.duration
    );
    println!(
        "{:<10} {:>4} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9} {:>9} | {:>6} {:>9} {:>9} | {:>8} {:>8}",
        "mode",
        "conc",
        "direct r/s",
        "p50 µs",
        "p99 µs",
        "gw r/s",
        "p50 µs",
        "p99 µs",
        "ttfb µs",
        "ratio",
        "+p50 µs",
        "+p99 µs",
        "gw cpu",
        "up cpu"
    );
    if nginx.is_some() {
        println!(
            "{:>24} nginx r/s, its ratio to direct, its CPU ms per 1,000",
            "|"
        );
    }
    let direct_url = format!("http://{upstream}/v1/chat/completions");
    let gw_url = format!("{gw}/v1/chat/completions");
    let mut results = Vec::new();
    let mut peak_rss = rss_idle;
    for stream in [false, true] {
        for &c in &args.concurrency {
            let d = measure(&direct_url, stream, c).await?;
            let sampler = {
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let s2 = stop.clone();
                let h = tokio::spawn(async move {
                    let mut peak = 0;
                    while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                        peak = peak.max(rss_kb(pid, "VmRSS:").unwrap_or(0));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    peak
                });
                (stop, h)
            };
            let (gw_cpu, up_cpu) = (cpu_ms(pid), cpu_ms(up_pid));
            let g = measure(&gw_url, stream, c).await?;
            // CPU ms per 1,000 requests through the gateway: the gateway's own, and the
            // upstream's for the same requests.
            let requests = g.rps * args.duration.as_secs_f64();
            let (gw_cpu, up_cpu) = (
                cpu_per_1k(pid, gw_cpu, requests),
                cpu_per_1k(up_pid, up_cpu, requests),
            );
            sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
            peak_rss = peak_rss.max(sampler.1.await.unwrap_or(0));
            let peer = match &nginx {
                Some(n) => {
                    let before = n.cpu_ms();
                    let p = measure(&format!("{}/v1/chat/completions", n.url), stream, c).await?;
                    let cpu = match (before, n.cpu_ms()) {
                        (Some(b), Some(a)) if p.rps > 0.0 => {
                            (a - b) / (p.rps * args.duration.as_secs_f64()) * 1000.0
                        }
                        _ => f64::NAN,
                    };
                    Some((p, cpu))
                }
                None => None,
            };
            let mode = if stream { "stream" } else { "json" };
            println!(
                "{:<10} {:>4} | {:>10.0} {:>9.0} {:>9.0} | {:>10.0} {:>9.0} {:>9.0} {:>9.0} | {:>5.0}% {:>9.0} {:>9.0} | {:>8.0} {:>8.0}{}{}",
                mode,
                c,
                d.rps,
                d.p50_us,
                d.p99_us,
                g.rps,
                g.p50_us,
                g.p99_us,
                g.ttfb_p50_us,
                100.0 * g.rps / d.rps,
                g.p50_us - d.p50_us,
                g.p99_us - d.p99_us,
                gw_cpu,
                up_cpu,
                match &peer {
                    Some((p, cpu)) => format!(
                        " | {:>10.0} {:>5.0}% {:>8.0}",
                        p.rps,
                        100.0 * p.rps / d.rps,
                        cpu
                    ),
                    None => String::new(),
                },
                if d.errors + g.errors > 0 {
                    format!("  ({} errors)", d.errors + g.errors)
                } else {
                    String::new()
                }
            );
            results.push(serde_json::json!({
                "mode": mode, "concurrency": c,
                "direct": {"rps": d.rps, "p50_us": d.p50_us, "p99_us": d.p99_us, "errors": d.errors},
                "gateway": {"rps": g.rps, "p50_us": g.p50_us, "p99_us": g.p99_us, "ttfb_p50_us": g.ttfb_p50_us, "errors": g.errors},
                "throughput_ratio": g.rps / d.rps,
                "added_p50_us": g.p50_us - d.p50_us,
                "added_p99_us": g.p99_us - d.p99_us,
                "gateway_cpu_ms_per_1k": gw_cpu,
                "upstream_cpu_ms_per_1k": up_cpu,
                "nginx": peer.map(|(p, cpu)| serde_json::json!({
                    "rps": p.rps, "p50_us": p.p50_us, "p99_us": p.p99_us, "errors": p.errors,
                    "throughput_ratio": p.rps / d.rps, "cpu_ms_per_1k": cpu,
                })),
            }));
        }
    }
    let hwm = rss_kb(pid, "VmHWM:").unwrap_or(peak_rss);
    println!(
        "\ngateway RSS: idle {:.1} MB, peak under load {:.1} MB (VmHWM {:.1} MB)",
        rss_idle as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    // The log writer flushes every 200 ms; let it catch up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "request-log rows written during the run: {}",
        stack.log_rows().await
    );
    // The gateway's own account of its time (its overhead histogram), over the whole run.
    let text = stack.metrics().await;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    if let (Some(sum), Some(count)) = (
        value("homelab_gateway_overhead_seconds_sum{route=\"chat\"}"),
        value("homelab_gateway_overhead_seconds_count{route=\"chat\"}"),
    ) && count > 0.0
    {
        println!(
            "gateway's own time per request (its overhead histogram): mean {:.1} µs over {count} requests",
            sum / count * 1e6
        );
    }
    stack.stop().await;
    if let Some(n) = nginx {
        n.stop().await;
    }
    if let Some(path) = args.json {
        let doc = serde_json::json!({"load": if args.wrk { "wrk" } else { "built-in" }, "cases": results, "rss_idle_kb": rss_idle, "rss_peak_kb": peak_rss, "vm_hwm_kb": hwm});
        crate::write_json(&path, &doc)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.what {
        What::Gateway(a) => bench_gateway(a).await,
        What::Upstream { port } => testkit::fast::serve(port).await,
        What::Engine(a) => engine::run(a).await,
        What::EngineAnchor(a) => engine::anchor(a).await,
        What::Monitor(a) => monitor::run(a).await,
        What::FirstChat(a) => first_chat::run(a).await,
        What::Vector(a) => vector::run(a).await,
        What::Optillm(a) => optillm::run(a).await,
        What::Soak(a) => soak::run(a).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
