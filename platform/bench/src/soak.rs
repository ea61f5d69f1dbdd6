//! `bench soak`: the gateway under an hour-equivalent of mixed traffic, its memory sampled.
//!
//! A busy small lab sends about 50 requests a second; an hour of that (180,000 requests by
//! default) goes through the gateway at full speed, mixed as it comes in practice: plain and
//! streamed chats, clients that leave in the middle of a slow stream, a handle whose first
//! target always fails (a fallback on every request, then its breaker's cycles), answers from
//! the response cache, bad JSON and unknown handles. The gateway's RSS is sampled every
//! second; it must stay flat — the second half of the run may not grow it — and every
//! request must have its request-log row.
//!
//! Run: `cargo build --release -p gateway -p bench && target/release/bench soak`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use docsdb::spec::{HandleSpec, Strategy, TargetSpec};

use crate::{GatewayProcess, Stack, cpu_ms, rss_kb};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Requests in all (180,000: an hour at 50 requests a second).
    #[arg(long, default_value_t = 180_000)]
    requests: u64,
    /// Clients at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[command(flatten)]
    gateway: GatewayProcess,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One request of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Stream,
    /// A slow stream the client leaves after its first chunk.
    Leave,
    /// A handle whose first target answers 500.
    Fallback,
    /// Deterministic, one of a thousand bodies: mostly cache hits.
    Cached,
    BadJson,
    UnknownHandle,
}

/// Out of every 20 requests: 8 plain, 5 streamed, 2 left mid-stream, 2 falling back, 1
/// cached, 1 bad JSON, 1 unknown handle.
const MIX: [Kind; 20] = [
    Kind::Plain,
    Kind::Stream,
    Kind::Plain,
    Kind::Leave,
    Kind::Plain,
    Kind::Fallback,
    Kind::Stream,
    Kind::Plain,
    Kind::Cached,
    Kind::Stream,
    Kind::Plain,
    Kind::BadJson,
    Kind::Leave,
    Kind::Plain,
    Kind::Stream,
    Kind::Fallback,
    Kind::Plain,
    Kind::UnknownHandle,
    Kind::Stream,
    Kind::Plain,
];

fn request(kind: Kind, i: u64) -> String {
    let chat = |model: &str, stream: bool| {
        serde_json::json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": format!("Say hello ({i})")}]})
        .to_string()
    };
    match kind {
        Kind::Plain => chat("soak", false),
        Kind::Stream => chat("soak", true),
        Kind::Leave => chat("slow", true),
        Kind::Fallback => chat("flaky", false),
        Kind::Cached => serde_json::json!({"model": "cached", "temperature": 0,
            "messages": [{"role": "user", "content": format!("Say hello ({})", i % 1000)}]})
        .to_string(),
        Kind::BadJson => "{\"model\": \"soak\", \"messages\": [".into(),
        Kind::UnknownHandle => chat("no-such-handle", false),
    }
}

fn handles() -> Vec<HandleSpec> {
    let t = |name: &str, path: &str| {
        let mut t = TargetSpec::on_endpoint(name, "fast-model");
        t.base_url = Some(format!("http://{{upstream}}{path}"));
        t
    };
    let mut second = t("fast", "/v1");
    second.priority = 1;
    let mut cached = HandleSpec::new("cached", vec![t("fast", "/v1")]);
    cached.cache_ttl_ms = Some(3_600_000);
    vec![
        HandleSpec::new("soak", vec![t("fast", "/v1")]),
        HandleSpec::new("slow", vec![t("slow", "/slow/v1")]),
        HandleSpec {
            strategy: Strategy::Priority,
            ..HandleSpec::new("flaky", vec![t("failing", "/fail/v1"), second])
        },
        cached,
    ]
}

pub async fn run(args: SoakArgs) -> Result<(), String> {
    let stack = Stack::start(handles(), &args.gateway).await?;
    let pid = stack.pid;
    let url = format!("{}/v1/chat/completions", stack.gw);
    let rss_idle = rss_kb(pid, "VmRSS:").unwrap_or(0);
    let cpu_before = cpu_ms(pid);
    println!(
        "gateway pid {pid}, idle RSS {:.1} MB; {} requests at concurrency {}",
        rss_idle as f64 / 1024.0,
        args.requests,
        args.concurrency
    );
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let unexpected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url) = (stack.client.clone(), url.clone());
        let (next, done, unexpected) = (next.clone(), done.clone(), unexpected.clone());
        let total = args.requests;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let kind = MIX[(i % MIX.len() as u64) as usize];
                let body = request(kind, i);
                let res = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let expected = match res {
                    Ok(mut r) => {
                        let status = r.status().as_u16();
                        if kind == Kind::Leave {
                            // Read the first chunk, then hang up.
                            let _ = r.chunk().await;
                            drop(r);
                            status == 200
                        } else {
                            while let Ok(Some(_)) = r.chunk().await {}
                            match kind {
                                Kind::BadJson => status == 400,
                                Kind::UnknownHandle => status == 404,
                                _ => status == 200,
                            }
                        }
                    }
                    Err(_) => false,
                };
                if !expected {
                    unexpected.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // RSS once a second, with how many requests were done by then.
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let n = done.load(Ordering::Relaxed);
        samples.push((n, rss_kb(pid, "VmRSS:").unwrap_or(0)));
        if n >= args.requests {
            break;
        }
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let requests = done.load(Ordering::Relaxed);
    let cpu = match (cpu_before, cpu_ms(pid)) {
        (Some(b), Some(a)) => (a - b) / requests.max(1) as f64 * 1000.0,
        _ => f64::NAN,
    };
    // RSS where a quarter, half and all of the requests were done.
    let at = |share: f64| {
        let want = (requests as f64 * share) as u64;
        samples
            .iter()
            .find(|(n, _)| *n >= want)
            .or(samples.last())
            .map_or(0, |s| s.1)
    };
    let (q1, half, end) = (at(0.25), at(0.5), at(1.0));
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let hwm = rss_kb(pid, "VmHWM:").unwrap_or(peak);
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "{requests} requests in {:.1} s ({:.0}/s), {} unexpected answers; gateway CPU {cpu:.0} ms per 1,000",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        unexpected.load(Ordering::Relaxed),
    );
    println!(
        "RSS: idle {:.1} MB, at 25% {:.1} MB, at 50% {:.1} MB, at the end {:.1} MB, peak {:.1} MB (VmHWM {:.1} MB)",
        mb(rss_idle),
        mb(q1),
        mb(half),
        mb(end),
        mb(peak),
        mb(hwm)
    );
    let growth = end as f64 - half as f64;
    println!(
        "second half: {:+.1} MB ({})",
        growth / 1024.0,
        if growth <= 1024.0 { "flat" } else { "GROWING" }
    );
    // Let the log writer catch up before counting.
    let mut rows = 0;
    for _ in 0..50 {
        rows = stack.log_rows().await;
        if rows >= requests as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("request-log rows: {rows} of {requests} requests");
    let metrics = stack.metrics().await;
    let value = |prefix: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    println!(
        "cache hits {:.0}, fallbacks {:.0}, targets skipped (circuit open) {:.0}, clients gone {:.0}",
        value("homelab_gateway_cache_requests_total{handle=\"cached\",result=\"hit\"}"),
        value("homelab_gateway_fallbacks_total"),
        value("homelab_gateway_skipped_targets_total"),
        value(
            "homelab_gateway_errors_total{route=\"chat\",handle=\"slow\",kind=\"client_closed\"}"
        ),
    );
    stack.stop().await;
    if let Some(path) = args.json {
        let doc = serde_json::json!({
            "requests": requests, "seconds": elapsed.as_secs_f64(),
            "unexpected": unexpected.load(Ordering::Relaxed), "cpu_ms_per_1k": cpu,
            "rss_kb": {"idle": rss_idle, "q1": q1, "half": half, "end": end, "peak": peak, "hwm": hwm},
            "log_rows": rows,
            "samples": samples,
        });
        crate::write_json(&path, &doc)?;
    }
    Ok(())
}
