//! `bench engine`: the engine served over HTTP, as clients use it, by each of its backends
//! (orin-llm-server with candle and llama.cpp, ov-llm-server with OpenVINO on an IR derived
//! from the same GGUF) and by llama.cpp's own server (`python -m llama_cpp.server`, from the
//! PyPI package `llama-cpp-python`) as the anchor, all in one run with the same model, prompt,
//! thread count and client. Each server runs in its own process, one after the other, so none
//! shares the two cores with another.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use contract::sse::SseDecoder;

use crate::{free_port, percentile, rss_kb};

/// What serves the model in one row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Contender {
    /// orin-llm-server with the pure-Rust candle backend.
    Candle,
    /// orin-llm-server with the llama.cpp backend (built with `--features llama-cpp`).
    LlamaCpp,
    /// ov-llm-server: OpenVINO at the device's own inference precision (bf16 on a CPU with
    /// AMX or AVX-512 BF16, else f32).
    #[value(name = "openvino")]
    OpenVino,
    /// ov-llm-server with `--precision f32`.
    #[value(name = "openvino-f32")]
    OpenVinoF32,
    /// llama.cpp's own server through llama-cpp-python: the anchor.
    LlamaCppServer,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Candle => "candle",
            Contender::LlamaCpp => "llama-cpp",
            Contender::OpenVino => "openvino",
            Contender::OpenVinoF32 => "openvino f32",
            Contender::LlamaCppServer => "llama.cpp server",
        }
    }

    fn is_openvino(self) -> bool {
        matches!(self, Contender::OpenVino | Contender::OpenVinoF32)
    }
}

#[derive(clap::Args)]
pub struct EngineArgs {
    /// The GGUF model (e.g. var/models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: PathBuf,
    /// What to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "candle,llama-cpp,openvino,openvino-f32,llama-cpp-server"
    )]
    servers: Vec<Contender>,
    /// Concurrent clients (the engine runs this many sequences at once).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    concurrency: Vec<usize>,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 128)]
    tokens: u32,
    /// Requests per client.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU threads for every server (default: all cores; llama-cpp-python would use half).
    #[arg(long)]
    threads: Option<usize>,
    /// Context length for every server.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// The orin-llm-server binary (default: beside this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The ov-llm-server binary (default: beside this one).
    #[arg(long)]
    ov_server_bin: Option<PathBuf>,
    /// The OpenVINO IR folder of the same model (default: derived from `--model` by
    /// openvino-genai into a temporary folder, `pip install openvino openvino-genai`). The
    /// library comes from `OPENVINO_LIB_PATH`, else the `openvino` wheel.
    #[arg(long)]
    ov_model: Option<PathBuf>,
    /// The Python that has `llama-cpp-python[server]` installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// How long a server may take to load before the row is given up.
    #[arg(long, default_value = "180s", value_parser = contract::units::parse_duration)]
    load_timeout: Duration,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One request's measurements.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    ttft_us: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// From the first to the last generated token.
    decode_s: f64,
}

/// One row of the table.
#[derive(Debug, Default, Clone, Copy)]
struct Row {
    ttft_p50_ms: f64,
    prefill_tps: f64,
    decode_tps_seq: f64,
    decode_tps_all: f64,
    completion_tokens: u64,
    errors: usize,
}

const SYSTEM: &str = "You are a helpful assistant.";
const USER: &str = "Write a short story about a lighthouse keeper.";

pub async fn run(a: EngineArgs) -> Result<(), String> {
    if !a.model.is_file() {
        return Err(format!(
            "{} is not a file (homelab models pull smollm2-135m)",
            a.model.display()
        ));
    }
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let beside = |name: &str| -> Result<PathBuf, String> {
        Ok(std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name(name))
    };
    let mut skipped = Vec::new();
    let ir_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let wants_ov = a.servers.iter().any(|s| s.is_openvino());
    let bins = Bins {
        orin: a
            .server_bin
            .clone()
            .map_or_else(|| beside("orin-llm-server"), Ok)?,
        ov: a
            .ov_server_bin
            .clone()
            .map_or_else(|| beside("ov-llm-server"), Ok)?,
        ov_model: match (&a.ov_model, wants_ov) {
            (Some(m), _) => Some(m.clone()),
            (None, false) => None,
            (None, true) => {
                let stem = a.model.file_stem().unwrap_or_default();
                match testkit::openvino::try_derive_ir(&a.model, &ir_dir.path().join(stem)) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        skipped.push(format!("openvino: {e}"));
                        None
                    }
                }
            }
        },
        ov_lib: std::env::var_os("OPENVINO_LIB_PATH")
            .map(PathBuf::from)
            .or_else(|| wants_ov.then(testkit::openvino::wheel_libs).flatten()),
    };
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "{}\n{} tokens per request, greedy, {} requests per client, {threads} threads, context {}\n",
        a.model.display(),
        a.tokens,
        a.rounds,
        a.context
    );
    println!(
        "{:>16} {:>4} | {:>9} {:>11} {:>14} {:>14} {:>9}",
        "server", "conc", "TTFT p50", "prefill t/s", "decode t/s/seq", "decode t/s all", "peak RSS"
    );
    let mut results: Vec<(Contender, usize, Row, u64)> = Vec::new();
    for &server in &a.servers {
        if server.is_openvino() && bins.ov_model.is_none() {
            continue;
        }
        for &c in &a.concurrency {
            let port = free_port().await?;
            let mut child = match spawn(server, &a, &bins, threads, c, port) {
                Ok(ch) => ch,
                Err(e) => {
                    skipped.push(format!("{}: {e}", server.label()));
                    break;
                }
            };
            let base = format!("http://127.0.0.1:{port}/v1/chat/completions");
            let prompt_tokens = match wait_ready(&client, &base, &mut child, a.load_timeout).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = child.kill().await;
                    skipped.push(format!("{}: {e}", server.label()));
                    break;
                }
            };
            let pid = child.id().unwrap_or(0);
            let row = measure(&client, &base, c, a.rounds, a.tokens, prompt_tokens).await;
            let hwm = rss_kb(pid, "VmHWM:").unwrap_or(0);
            let _ = child.kill().await;
            let _ = child.wait().await;
            print_row(server, c, &row, hwm);
            results.push((server, c, row, hwm));
        }
    }
    // Every row against the anchor, once all are measured (the anchor runs last by default).
    if results
        .iter()
        .any(|(s, ..)| *s == Contender::LlamaCppServer)
    {
        println!("\ndecode tokens/s (all sequences) against llama.cpp's own server:");
        for (s, c, r, _) in &results {
            if let Some((_, _, anchor, _)) = results
                .iter()
                .find(|(s2, c2, ..)| *s2 == Contender::LlamaCppServer && c2 == c)
                && anchor.decode_tps_all > 0.0
            {
                println!(
                    "  {:>16} c={c}: {:>5.0}%",
                    s.label(),
                    100.0 * r.decode_tps_all / anchor.decode_tps_all
                );
            }
        }
    }
    for s in &skipped {
        println!("not measured: {s}");
    }
    if let Some(path) = a.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(s, c, r, hwm)| {
                serde_json::json!({
                    "server": s.label(), "concurrency": c,
                    "ttft_p50_ms": r.ttft_p50_ms, "prefill_tps": r.prefill_tps,
                    "decode_tps_per_sequence": r.decode_tps_seq,
                    "decode_tps_all": r.decode_tps_all,
                    "completion_tokens": r.completion_tokens,
                    "errors": r.errors, "peak_rss_kb": hwm,
                })
            })
            .collect();
        let doc = serde_json::json!({"model": a.model, "tokens": a.tokens, "threads": threads,
            "rows": rows, "not_measured": skipped});
        crate::write_json(&path, &doc)?;
    }
    Ok(())
}

fn print_row(server: Contender, c: usize, r: &Row, hwm_kb: u64) {
    println!(
        "{:>16} {:>4} | {:>7.0}ms {:>11.0} {:>14.1} {:>14.1} {:>7.0}MB{}",
        server.label(),
        c,
        r.ttft_p50_ms,
        r.prefill_tps,
        r.decode_tps_seq,
        r.decode_tps_all,
        hwm_kb as f64 / 1024.0,
        if r.errors > 0 {
            format!("  ({} failed)", r.errors)
        } else {
            String::new()
        }
    );
}

/// The servers' binaries, and the OpenVINO IR and library.
struct Bins {
    orin: PathBuf,
    ov: PathBuf,
    ov_model: Option<PathBuf>,
    ov_lib: Option<PathBuf>,
}

fn spawn(
    server: Contender,
    a: &EngineArgs,
    bins: &Bins,
    threads: usize,
    parallel: usize,
    port: u16,
) -> Result<tokio::process::Child, String> {
    let model = a.model.display().to_string();
    let engine = |bin: &std::path::Path, model: &str| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--model", model, "--bind", &format!("127.0.0.1:{port}")])
            .args(["--parallel", &parallel.to_string()])
            .args(["--queue", &(parallel * 4).to_string()])
            .args(["--context", &a.context.to_string()])
            .args(["--threads", &threads.to_string()])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .env("RUST_LOG", "warn");
        cmd
    };
    let (mut cmd, bin) = match server {
        Contender::Candle | Contender::LlamaCpp => {
            let mut cmd = engine(&bins.orin, &model);
            cmd.args(["--backend", server_label_flag(server)]);
            (cmd, &bins.orin)
        }
        Contender::OpenVino | Contender::OpenVinoF32 => {
            let ir = bins.ov_model.as_deref().unwrap_or(a.model.as_path());
            let mut cmd = engine(&bins.ov, &ir.display().to_string());
            if server == Contender::OpenVinoF32 {
                cmd.args(["--precision", "f32"]);
            }
            if let Some(lib) = &bins.ov_lib {
                cmd.env("OPENVINO_LIB_PATH", lib);
            }
            (cmd, &bins.ov)
        }
        Contender::LlamaCppServer => {
            let mut cmd = tokio::process::Command::new(&a.python);
            cmd.args(["-m", "llama_cpp.server", "--model", &model])
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--n_ctx", &a.context.to_string()])
                .args(["--n_threads", &threads.to_string()])
                .args(["--n_threads_batch", &threads.to_string()])
                // By default a new request cuts off the one being generated; queue instead.
                .args(["--interrupt_requests", "false"])
                .args(["--verbose", "false"]);
            (cmd, &bins.orin)
        }
    };
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().map_err(|e| match server {
        Contender::LlamaCppServer => format!(
            "cannot run {}: {e} (pip install 'llama-cpp-python[server]')",
            a.python
        ),
        _ => format!(
            "cannot run {}: {e} (cargo build --release -p orin-llm-server -p ov-llm-server --features orin-llm-server/llama-cpp)",
            bin.display()
        ),
    })
}

fn server_label_flag(server: Contender) -> &'static str {
    match server {
        Contender::LlamaCpp => "llama-cpp",
        _ => "candle",
    }
}

/// Waits until a one-token chat succeeds (which also warms the server up), or the process
/// exits (its last stderr line is the reason), or the timeout passes. Returns the prompt's
/// length in tokens, for servers that send no usage when streaming.
async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    let body = request_body(1, false, 0);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!("exited while loading: {last}"));
        }
        if let Ok(r) = client.post(url).json(&body).send().await {
            if r.status().is_success() {
                // Stop reading stderr from here on: an unread pipe must not fill up and block.
                drop(child.stderr.take());
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                return Ok(v["usage"]["prompt_tokens"].as_u64().unwrap_or(0));
            }
            // Our servers stay up after a failed load and say why.
            let text = r.text().await.unwrap_or_default();
            if text.contains("failed to load") {
                return Err(text);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("not ready after {timeout:?}"))
}

/// The same chat every time but for a request number in the system message, so that no
/// server can answer from a cached prompt (llama-cpp-python keeps the previous prompt's KV).
fn request_body(max_tokens: u32, stream: bool, n: u64) -> serde_json::Value {
    serde_json::json!({
        "model": "bench",
        "messages": [
            {"role": "system", "content": format!("Request {n}. {SYSTEM}")},
            {"role": "user", "content": USER},
        ],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

async fn measure(
    client: &reqwest::Client,
    url: &str,
    conc: usize,
    rounds: usize,
    tokens: u32,
    prompt_tokens: u64,
) -> Row {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_no in 0..conc {
        let client = client.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0;
            for round in 0..rounds {
                let n = (client_no * rounds + round + 1) as u64;
                match one(&client, &url, tokens, n, prompt_tokens).await {
                    Ok(s) => samples.push(s),
                    Err(_) => errors += 1,
                }
            }
            (samples, errors)
        }));
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((s, e)) => {
                samples.extend(s);
                errors += e;
            }
            Err(_) => errors += rounds,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let mut ttfts: Vec<u64> = samples.iter().map(|s| s.ttft_us).collect();
    ttfts.sort_unstable();
    let completion: u64 = samples.iter().map(|s| s.completion_tokens).sum();
    let prompt: u64 = samples.iter().map(|s| s.prompt_tokens).sum();
    let ttft_total_s: f64 = samples.iter().map(|s| s.ttft_us as f64 / 1e6).sum();
    let per_seq: Vec<f64> = samples
        .iter()
        .filter(|s| s.completion_tokens > 1 && s.decode_s > 0.0)
        .map(|s| (s.completion_tokens - 1) as f64 / s.decode_s)
        .collect();
    Row {
        ttft_p50_ms: percentile(&ttfts, 0.5) / 1000.0,
        // Prompt tokens over the time to the first token: prefill plus one decode step and
        // the HTTP round trip, the same overheads for every server.
        prefill_tps: if ttft_total_s > 0.0 {
            prompt as f64 / ttft_total_s
        } else {
            0.0
        },
        decode_tps_seq: per_seq.iter().sum::<f64>() / per_seq.len().max(1) as f64,
        decode_tps_all: completion as f64 / wall,
        completion_tokens: completion,
        errors,
    }
}

/// One streamed chat; token counts from the final usage chunk, or — when a server sends no
/// usage — one per content chunk and the prompt length the warm-up request reported.
async fn one(
    client: &reqwest::Client,
    url: &str,
    tokens: u32,
    n: u64,
    prompt_tokens: u64,
) -> Result<Sample, String> {
    let t0 = Instant::now();
    let mut res = client
        .post(url)
        .json(&request_body(tokens, true, n))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status()));
    }
    let mut dec = SseDecoder::new();
    let mut first: Option<Instant> = None;
    let mut last = t0;
    let mut chunks = 0u64;
    let mut usage: Option<(u64, u64)> = None;
    while let Some(bytes) = res.chunk().await.map_err(|e| e.to_string())? {
        for ev in dec.push(&bytes).map_err(|e| e.to_string())? {
            if ev.is_done() {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else {
                continue;
            };
            let text = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if !text.is_empty() {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                chunks += 1;
            }
            if let (Some(p), Some(c)) = (
                v["usage"]["prompt_tokens"].as_u64(),
                v["usage"]["completion_tokens"].as_u64(),
            ) {
                usage = Some((p, c));
            }
        }
    }
    let first = first.ok_or("no tokens")?;
    let (prompt_tokens, completion_tokens) = usage.unwrap_or((prompt_tokens, chunks));
    Ok(Sample {
        ttft_us: (first - t0).as_micros() as u64,
        prompt_tokens,
        completion_tokens,
        decode_s: (last - first).as_secs_f64(),
    })
}
