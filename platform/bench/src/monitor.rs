//! `bench monitor`: how long the system monitor takes to answer `/api/status`, the page and
//! the other reads when the DB holds a week of traffic (by default 1,000,000 request-log rows
//! and a week of probes of every service at the default interval), against the same monitor
//! and registry with empty logs, measured in the same run. Runs on SQLite (a temp file) and,
//! with `--postgres URL`, on a fresh schema of a real Postgres too. The full DB is measured as
//! a running monitor keeps it: with its complete hours folded into the rollups (the time that
//! first fold takes is printed too).
//!
//! Run: `cargo build --release -p bench && target/release/bench monitor`

use std::time::{Duration, Instant};

use docsdb::Db;
use docsdb::request_log::RequestLogRow;
use docsdb::spec::{
    ByteSize, HandleSpec, HostSpec, Layer, ModelSpec, ServiceSpec, Strategy, SystemSpec, TargetSpec,
};

#[derive(clap::Args)]
pub struct MonitorArgs {
    /// Request-log rows to write, spread over the last `--days`.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Days the rows (and the probes) cover; the monitor keeps 7 days of raw rows.
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// Probe interval of the simulated week of health checks, per service.
    #[arg(long, default_value = "15s", value_parser = contract::units::parse_duration)]
    probe_interval: Duration,
    /// Requests per endpoint and case.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Keep the SQLite DB in this file (it must not exist) instead of a temp folder.
    #[arg(long)]
    sqlite_file: Option<std::path::PathBuf>,
    /// Also run on a fresh schema of this Postgres server.
    #[arg(long)]
    postgres: Option<String>,
    /// Leave the Postgres schema in place (its name is printed), to look at query plans.
    #[arg(long)]
    keep_schema: bool,
}

const HANDLES: usize = 8;
const SERVICES: &[(&str, Layer)] = &[
    ("open-webui", Layer::Interface),
    ("shortcuts", Layer::Interface),
    ("gateway", Layer::Gateway),
    ("system-monitor", Layer::Gateway),
    ("optillm-proxy", Layer::Gateway),
    ("local-engine", Layer::Inference),
    ("ov-llm-server", Layer::Inference),
    ("mlx-launch", Layer::Inference),
    ("orin-llm-server", Layer::Inference),
    ("web-fetch", Layer::Tools),
    ("web-search", Layer::Tools),
    ("searxng", Layer::Tools),
    ("vector-db", Layer::Data),
    ("memory", Layer::Data),
];
const VIEWS: &[&str] = &[
    "v_service_status",
    "v_service_uptime",
    "v_service_latency",
    "v_service_hourly",
    "v_handle_stats",
    "v_host_capacity",
    "v_model_inventory",
    "v_recent_errors",
];
const PATHS: &[&str] = &[
    "/api/status",
    "/",
    "/api/handles",
    "/metrics",
    "/api/errors",
];

fn spec() -> SystemSpec {
    let host = |name: &str, gib: u64| HostSpec {
        name: name.into(),
        description: None,
        address: None,
        os: Some("linux".into()),
        arch: Some("x86_64".into()),
        accelerator: None,
        memory_bytes: Some(ByteSize(gib << 30)),
    };
    SystemSpec {
        hosts: vec![host("mini", 64), host("studio", 192), host("orin", 64)],
        services: SERVICES
            .iter()
            .enumerate()
            .map(|(i, (name, layer))| ServiceSpec {
                name: (*name).into(),
                layer: *layer,
                host: Some("mini".into()),
                kind: Default::default(),
                // Nothing listens there: the monitor runs with probing off, the week of probes
                // is written by the benchmark.
                base_url: Some(format!("http://127.0.0.1:{}", 45000 + i)),
                health_path: Some("/health".into()),
                unit: None,
                lifecycle: Default::default(),
                description: None,
                probe_interval_ms: None,
                fail_threshold: None,
                docs: Vec::new(),
            })
            .collect(),
        endpoints: Vec::new(),
        models: (0..12)
            .map(|i| ModelSpec {
                model_id: format!("model-{i}"),
                host: Some(["mini", "studio", "orin"][i % 3].into()),
                family: Some("qwen2.5".into()),
                format: Some("gguf".into()),
                quantization: Some("q4_k_m".into()),
                params: None,
                context_length: Some(32768),
                size_on_disk_bytes: Some(ByteSize((i as u64 + 1) << 30)),
                memory_footprint_bytes: Some(ByteSize((i as u64 + 2) << 30)),
                source_path: None,
                cache_path: None,
            })
            .collect(),
        handles: (0..HANDLES)
            .map(|i| HandleSpec {
                context_fallback: None,
                cache_ttl_ms: None,
                handle: format!("handle-{i}"),
                description: None,
                strategy: Strategy::default(),
                targets: vec![TargetSpec {
                    endpoint: None,
                    base_url: Some(format!("http://127.0.0.1:{}/v1", 46000 + i)),
                    ..TargetSpec::on_endpoint("", "m")
                }],
            })
            .collect(),
    }
}

/// A week of traffic: `rows` requests spread evenly, 3% failed, latencies and token counts
/// varied deterministically.
async fn write_requests(db: &Db, rows: u64, span_ms: i64, now: i64) -> Result<(), String> {
    const BATCH: u64 = 5_000;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut done = 0;
    while done < rows {
        let n = BATCH.min(rows - done);
        let batch: Vec<RequestLogRow> = (done..done + n)
            .map(|i| {
                let at = now - span_ms + (i as i64 * span_ms) / rows as i64;
                let failed = rng.u32(0..100) < 3;
                let latency = 50.0 + rng.f64() * 4000.0;
                RequestLogRow {
                    request_id: format!("bench-{i}"),
                    started_at_ms: at,
                    key_name: Some(format!("key-{}", i % 5)),
                    route: "/v1/chat/completions".into(),
                    handle: Some(format!("handle-{}", rng.usize(0..HANDLES))),
                    target: Some("t0".into()),
                    upstream_model: Some("m".into()),
                    status: if failed { 502 } else { 200 },
                    error_type: failed.then(|| "upstream_error".into()),
                    attempts: 1,
                    latency_ms: latency,
                    ttft_ms: Some(latency * 0.1),
                    prompt_tokens: Some(rng.u64(10..2000)),
                    completion_tokens: (!failed).then(|| rng.u64(1..800)),
                    streamed: i % 2 == 0,
                    request_bytes: None,
                    response_bytes: None,
                    usage_source: None,
                    cache_hit: false,
                    generation_ms: None,
                    user: Default::default(),
                }
            })
            .collect();
        docsdb::request_log::insert_batch(db, &batch)
            .await
            .map_err(|e| e.to_string())?;
        done += n;
    }
    Ok(())
}

/// A week of probes of every service at `interval`, 1% failed, in one statement per batch.
async fn write_checks(db: &Db, interval_ms: i64, span_ms: i64, now: i64) -> Result<u64, String> {
    use sqlx::Row;
    let ids: Vec<i64> = sqlx::query("SELECT id FROM services ORDER BY id")
        .fetch_all(db.pool())
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|r| r.try_get::<i64, _>("id").ok())
        .collect();
    let per_service = span_ms / interval_ms.max(1);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut written = 0u64;
    let mut values = Vec::with_capacity(2_000);
    let flush = |values: &mut Vec<String>| {
        let sql = format!(
            "INSERT INTO health_checks (service_id, checked_at_ms, ok, status_code, latency_ms, error) VALUES {}",
            values.join(",")
        );
        values.clear();
        sql
    };
    let ok_true = if db.backend() == docsdb::Backend::Postgres {
        ("TRUE", "FALSE")
    } else {
        ("1", "0")
    };
    for k in 0..per_service {
        let at = now - span_ms + k * interval_ms;
        for id in &ids {
            let ok = rng.u32(0..100) != 0;
            let (flag, code, err) = if ok {
                (ok_true.0, "200", "NULL")
            } else {
                (ok_true.1, "NULL", "'cannot connect: Connection refused'")
            };
            values.push(format!(
                "({id},{},{flag},{code},{:.2},{err})",
                at + rng.i64(0..1000),
                1.0 + rng.f64() * 20.0
            ));
            if values.len() == 2_000 {
                let sql = flush(&mut values);
                sqlx::query(&sql)
                    .execute(db.pool())
                    .await
                    .map_err(|e| e.to_string())?;
                written += 2_000;
            }
        }
    }
    if !values.is_empty() {
        let n = values.len() as u64;
        let sql = flush(&mut values);
        sqlx::query(&sql)
            .execute(db.pool())
            .await
            .map_err(|e| e.to_string())?;
        written += n;
    }
    Ok(written)
}

struct Running {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), system_monitor::Error>>,
}

async fn start_monitor(db: &Db) -> Result<Running, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let mut config = system_monitor::Config::new(db.url(), "127.0.0.1:0");
    config.no_probe = true;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(system_monitor::serve_with_db(
        listener,
        config,
        db.clone(),
        async {
            let _ = rx.await;
        },
    ));
    Ok(Running { url, stop, task })
}

/// Milliseconds per request for each path: (p50, max).
async fn measure(
    client: &reqwest::Client,
    url: &str,
    samples: usize,
) -> Result<Vec<(f64, f64)>, String> {
    let mut out = Vec::new();
    for path in PATHS {
        let mut ms = Vec::with_capacity(samples);
        for i in 0..samples + 2 {
            let t = Instant::now();
            let r = client
                .get(format!("{url}{path}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let body = r.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() || body.is_empty() {
                return Err(format!("GET {path}: {status}"));
            }
            // The first two warm the caches and the connection.
            if i >= 2 {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        ms.sort_by(f64::total_cmp);
        out.push((ms[ms.len() / 2], ms[ms.len() - 1]));
    }
    Ok(out)
}

async fn run_on(name: &str, db: Db, args: &MonitorArgs) -> Result<(), String> {
    docsdb::apply::apply(&db, &spec(), false)
        .await
        .map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();

    let mon = start_monitor(&db).await?;
    let empty = measure(&client, &mon.url, args.samples).await?;

    let span_ms = (args.days * 86_400_000.0) as i64 - 3_600_000;
    let now = docsdb::now_ms();
    let t = Instant::now();
    write_requests(&db, args.rows, span_ms, now).await?;
    let interval_ms = i64::try_from(args.probe_interval.as_millis()).unwrap_or(15_000);
    let checks = write_checks(&db, interval_ms, span_ms, now).await?;
    println!(
        "{name}: wrote {} request-log rows and {checks} health checks in {:.1}s",
        args.rows,
        t.elapsed().as_secs_f64()
    );
    // What the monitor does at start and every few minutes: fold the complete hours.
    let t = Instant::now();
    let r = docsdb::monitor::rollup(&db, docsdb::now_ms(), now - 7 * 86_400_000)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{name}: folded {} checks into {} service-hours and {} requests into {} handle-hours in {:.1}s (catching up on the whole span)",
        r.health_rows,
        r.health_hours,
        r.request_rows,
        r.request_hours,
        t.elapsed().as_secs_f64()
    );
    if db.backend() == docsdb::Backend::Postgres {
        // What autovacuum does within a minute of a load like this one; without statistics
        // the planner takes the tables for empty.
        sqlx::query("ANALYZE")
            .execute(db.pool())
            .await
            .map_err(|e| e.to_string())?;
    }
    let full = measure(&client, &mon.url, args.samples).await?;

    println!(
        "{:<14} | {:>12} {:>9} | {:>12} {:>9} | {:>9}",
        "GET", "empty p50 ms", "max", "full p50 ms", "max", "full/empty"
    );
    for (path, (e, f)) in PATHS.iter().zip(empty.iter().zip(full.iter())) {
        println!(
            "{:<14} | {:>12.1} {:>9.1} | {:>12.1} {:>9.1} | {:>8.1}×",
            path,
            e.0,
            e.1,
            f.0,
            f.1,
            f.0 / e.0
        );
    }
    println!("{:<22} | {:>8}", "view (full)", "ms");
    for view in VIEWS {
        let t = Instant::now();
        let n = sqlx::query(&format!("SELECT * FROM {view}"))
            .fetch_all(db.pool())
            .await
            .map_err(|e| format!("{view}: {e}"))?
            .len();
        println!(
            "{:<22} | {:>8.1}  ({n} rows)",
            view,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let _ = mon.stop.send(());
    mon.task
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub async fn run(args: MonitorArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = match &args.sqlite_file {
        Some(f) if f.exists() => return Err(format!("{} exists", f.display())),
        Some(f) => format!("sqlite://{}", f.display()),
        None => format!("sqlite://{}/system-docs.db", dir.path().display()),
    };
    let db = Db::open(&url).await.map_err(|e| e.to_string())?;
    run_on("SQLite", db, &args).await?;

    if let Some(base) = &args.postgres {
        use sqlx::Connection;
        let schema = format!("homelab_bench_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(base)
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let result = match Db::open(&url).await {
            Ok(db) => {
                println!();
                let r = run_on("Postgres", db.clone(), &args).await;
                db.close().await;
                r
            }
            Err(e) => Err(e.to_string()),
        };
        if args.keep_schema {
            println!("kept schema {schema}");
        } else {
            let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await;
        }
        result?;
    }
    Ok(())
}
