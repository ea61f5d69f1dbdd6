//! `bench vector`: the vector store against the stores a homelab user would pick instead,
//! on the same vectors in one run — Chroma (`chromadb`, its HNSW index, embedded the way
//! Open WebUI embeds it by default) and `sqlite-vec` (a `vec0` table, exact) — at 10k and
//! 100k points of 384 dimensions: insert rate, search p50/p99 at concurrency 1 and 8,
//! recall@10 against the exact answer, and resident memory against the raw vector bytes.
//! Then the embedding model: sentences per second at batch 32 over HTTP, against
//! sentence-transformers on the same CPU.
//!
//! The vectors are clustered (like sentence embeddings, unlike uniform noise, which no index
//! finds neighbours in), seeded, written once to files that every store reads. vector-db runs
//! as its own process (the release binary beside this one) and is asked over HTTP; the
//! anchors run in-process in Python, which spares them HTTP — the comparison favours them.
//!
//! Needs a Python with the anchors: `pip install chromadb==1.5.9 sqlite-vec==0.1.9
//! sqlean.py sentence-transformers==6.3.0` (`--python` points at it; `sqlean.py` is SQLite
//! with extension loading, which some CPython builds leave out).
//!
//! Run: `cargo build --release -p bench -p vector-db -p orin-llm-server &&
//! target/release/bench vector --python /path/to/venv/bin/python`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{free_port, percentile, rss_kb};

#[derive(clap::Args)]
pub struct VectorArgs {
    /// Collection sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// Vector dimension (all-MiniLM-L6-v2's).
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Queries at concurrency 1 (the same queries again at 8, three times over).
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Vectors to use instead of the clustered ones: little-endian f32 rows of `--dim`
    /// (real embeddings, say); the last `--queries` rows are the queries, the rows before
    /// them the points.
    #[arg(long)]
    vectors: Option<PathBuf>,
    /// A Python with chromadb, sqlite-vec and sentence-transformers.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The all-MiniLM-L6-v2 folder (what `homelab models pull minilm-l6` makes).
    #[arg(long, default_value = "var/models/all-MiniLM-L6-v2")]
    embedding_model: PathBuf,
    /// Skip the embedding part.
    #[arg(long)]
    no_embeddings: bool,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

const SEED: u64 = 20_261_204;
const BATCH: usize = 1000;
/// vector-db's default `--approximate-above`: from this size on it builds its graph.
const APPROXIMATE_ABOVE: usize = 20_000;

/// Clustered unit vectors: `n` points around 256 centres, cosine to their centre ≈ 0.75.
fn clustered(n: usize, dim: usize, rng: &mut fastrand::Rng, centres: &[Vec<f32>]) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * dim);
    let gauss = |rng: &mut fastrand::Rng| -> f32 {
        let (u, v) = (rng.f32().max(1e-12), rng.f32());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let noise = 0.9 / (dim as f32).sqrt();
    for _ in 0..n {
        let c = &centres[rng.usize(..centres.len())];
        let mut v: Vec<f32> = c.iter().map(|x| x + noise * gauss(rng)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        out.extend(v);
    }
    out
}

fn centres(k: usize, dim: usize, rng: &mut fastrand::Rng) -> Vec<Vec<f32>> {
    (0..k)
        .map(|_| {
            let v: Vec<f32> = (0..dim).map(|_| rng.f32() - 0.5).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

/// The exact top 10 (point indexes) of each query among the first `n` points.
fn exact_top10(data: &[f32], n: usize, queries: &[f32], dim: usize) -> Vec<Vec<u64>> {
    let q_count = queries.len() / dim;
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let chunk = q_count.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for qi in t * chunk..((t + 1) * chunk).min(q_count) {
                        let q = &queries[qi * dim..(qi + 1) * dim];
                        let mut scored: Vec<(f32, u64)> = (0..n)
                            .map(|i| {
                                let p = &data[i * dim..(i + 1) * dim];
                                (p.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i as u64)
                            })
                            .collect();
                        scored.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
                        let mut top: Vec<(f32, u64)> = scored[..10].to_vec();
                        top.sort_by(|a, b| b.0.total_cmp(&a.0));
                        out.push(top.into_iter().map(|(_, i)| i).collect());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn recall(got: &[Vec<u64>], want: &[Vec<u64>]) -> f64 {
    let mut hit = 0usize;
    let mut total = 0usize;
    for (g, w) in got.iter().zip(want) {
        total += w.len();
        hit += g.iter().filter(|x| w.contains(x)).count();
    }
    hit as f64 / total.max(1) as f64
}

fn read_f32(path: &Path) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn write_f32(path: &Path, v: &[f32]) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    f.write_all(&bytes).map_err(|e| e.to_string())
}

/// One store at one size.
#[derive(Debug, Clone)]
struct Row {
    store: String,
    n: usize,
    insert_per_s: f64,
    p50_ms: [f64; 2],
    p99_ms: [f64; 2],
    recall: f64,
    rss_mb: f64,
    /// The longest a single upsert request waited for its answer (vector-db only).
    slowest_upsert_ms: Option<f64>,
}

fn stats(mut lat_us: Vec<u64>) -> (f64, f64) {
    lat_us.sort_unstable();
    (
        percentile(&lat_us, 0.5) / 1000.0,
        percentile(&lat_us, 0.99) / 1000.0,
    )
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name(name);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: cargo build --release -p {name}",
            bin.display()
        ))
    }
}

async fn wait_ready(url: &str) -> Result<(), String> {
    for _ in 0..600 {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} never answered"))
}

/// vector-db as its own process, over HTTP.
async fn ours(
    data: &[f32],
    n: usize,
    dim: usize,
    queries: &[f32],
    nq: usize,
    dir: &Path,
) -> Result<(Row, Vec<Vec<u64>>), String> {
    let port = free_port().await?;
    let db = dir.join(format!("vectors-{n}.db"));
    let mut child = std::process::Command::new(sibling("vector-db")?)
        .args([
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--db",
            &format!("sqlite://{}", db.display()),
            "--body-limit",
            "64MiB",
            "--log-format",
            "json",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let base = format!("http://127.0.0.1:{port}");
    let result = async {
        wait_ready(&format!("{base}/readyz")).await?;
        let base_rss = rss_kb(child.id(), "VmRSS:").unwrap_or(0) as f64 / 1024.0;
        let http = reqwest::Client::new();
        let c = format!("{base}/collections/bench");
        http.put(&c)
            .json(&json!({"vectors": {"size": dim, "distance": "Cosine"}}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let mut slowest = Duration::ZERO;
        for start in (0..n).step_by(BATCH) {
            let sent = Instant::now();
            let end = (start + BATCH).min(n);
            let points: Vec<Value> = (start..end)
                .map(|i| json!({"id": i, "vector": &data[i * dim..(i + 1) * dim], "payload": {"i": i}}))
                .collect();
            let res = http
                .put(format!("{c}/points?wait=true"))
                .json(&json!({"points": points}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("upsert: {}", res.text().await.unwrap_or_default()));
            }
            slowest = slowest.max(sent.elapsed());
        }
        // Past the threshold the graph is built beside the writes: the insert rate counts
        // until it holds every point, as Chroma's add returns with its index updated.
        if n >= APPROXIMATE_ABOVE {
            loop {
                let info: Value = http
                    .get(&c)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if info["result"]["indexed_vectors_count"].as_u64() == Some(n as u64) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(1800) {
                    return Err(format!("the graph was not built in 30 minutes: {info}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let insert_per_s = n as f64 / t.elapsed().as_secs_f64();
        let query = |qi: usize| {
            let http = http.clone();
            let url = format!("{c}/points/query");
            let q = queries[qi * dim..(qi + 1) * dim].to_vec();
            async move {
                let t = Instant::now();
                let v: Value = http
                    .post(&url)
                    .json(&json!({"query": q, "limit": 10}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let ids: Vec<u64> = v["result"]["points"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|x| x["id"].as_u64()).collect())
                    .unwrap_or_default();
                Ok::<_, String>((t.elapsed().as_micros() as u64, ids))
            }
        };
        // Warm-up, then c=1.
        for qi in 0..10.min(nq) {
            query(qi).await?;
        }
        let mut lat1 = Vec::new();
        let mut got = Vec::new();
        for qi in 0..nq {
            let (us, ids) = query(qi).await?;
            lat1.push(us);
            got.push(ids);
        }
        // c=8: eight clients, each through the queries (three rounds in all).
        let per = (nq * 3).div_ceil(8);
        let clients = (0..8).map(|c8| {
            let q = &query;
            async move {
                let mut lat = Vec::new();
                for k in 0..per {
                    if let Ok((us, _)) = q((c8 * per + k) % nq).await {
                        lat.push(us);
                    }
                }
                lat
            }
        });
        let lat8: Vec<u64> = futures_util::future::join_all(clients)
            .await
            .into_iter()
            .flatten()
            .collect();
        // As for the anchors: what the data added, not the idle process.
        let rss = rss_kb(child.id(), "VmRSS:").unwrap_or(0) as f64 / 1024.0 - base_rss;
        let (p50_1, p99_1) = stats(lat1);
        let (p50_8, p99_8) = stats(lat8);
        Ok((
            Row {
                store: "vector-db (HTTP)".into(),
                n,
                insert_per_s,
                p50_ms: [p50_1, p50_8],
                p99_ms: [p99_1, p99_8],
                recall: 0.0,
                rss_mb: rss,
                slowest_upsert_ms: Some(slowest.as_secs_f64() * 1000.0),
            },
            got,
        ))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

const PEER: &str = r#"
import json, os, sys, time, threading, tempfile
import numpy as np
from concurrent.futures import ThreadPoolExecutor

store, data_path, n, dim, q_path, nq, out = sys.argv[1:8]
n, dim, nq = int(n), int(dim), int(nq)

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

data = np.fromfile(data_path, dtype="<f4").reshape(-1, dim)[:n].copy()
queries = np.fromfile(q_path, dtype="<f4").reshape(-1, dim)[:nq].copy()
tmp = tempfile.mkdtemp()
if store == "chroma":
    import chromadb
    base = rss_mb()
    client = chromadb.PersistentClient(path=tmp)
    col = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
    t = time.perf_counter()
    for s in range(0, n, 1000):
        e = min(s + 1000, n)
        col.add(ids=[str(i) for i in range(s, e)], embeddings=data[s:e], metadatas=[{"i": i} for i in range(s, e)])
    insert = n / (time.perf_counter() - t)
    def search(i):
        t = time.perf_counter()
        r = col.query(query_embeddings=[queries[i]], n_results=10)
        return (time.perf_counter() - t) * 1e6, [int(x) for x in r["ids"][0]]
else:
    import sqlite_vec
    try:
        import sqlean as sqlite3  # CPython builds without extension loading (pyenv's)
    except ImportError:
        import sqlite3
    path = os.path.join(tmp, "vec.db")
    def connect():
        db = sqlite3.connect(path, check_same_thread=False)
        db.enable_load_extension(True)
        sqlite_vec.load(db)
        db.enable_load_extension(False)
        return db
    base = rss_mb()
    db = connect()
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{dim}] distance_metric=cosine, i integer)")
    t = time.perf_counter()
    for s in range(0, n, 1000):
        e = min(s + 1000, n)
        db.executemany("INSERT INTO v(rowid, embedding, i) VALUES (?, ?, ?)", [(i, data[i].tobytes(), i) for i in range(s, e)])
        db.commit()
    insert = n / (time.perf_counter() - t)
    local = threading.local()
    def search(i):
        if not hasattr(local, "db"):
            local.db = connect()
        t = time.perf_counter()
        rows = local.db.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = 10 ORDER BY distance", (queries[i].tobytes(),)).fetchall()
        return (time.perf_counter() - t) * 1e6, [r[0] for r in rows]
for i in range(min(10, nq)):
    search(i)
lat1, got = [], []
for i in range(nq):
    us, ids = search(i)
    lat1.append(us); got.append(ids)
per = (nq * 3 + 7) // 8
def client(c):
    return [search((c * per + k) % nq)[0] for k in range(per)]
with ThreadPoolExecutor(8) as ex:
    lat8 = [x for l in ex.map(client, range(8)) for x in l]
json.dump({"insert_per_s": insert, "lat1": lat1, "lat8": lat8, "ids": got, "rss_mb": rss_mb(), "base_rss_mb": base}, open(out, "w"))
"#;

const ST: &str = r#"
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, sentences_path, out = sys.argv[1:4]
groups = json.load(open(sentences_path))
m = SentenceTransformer(model_dir, device="cpu")
res = {"threads": torch.get_num_threads()}
for name, sents in groups.items():
    m.encode(sents[:64], batch_size=32)
    t = time.perf_counter()
    m.encode(sents, batch_size=32)
    res[name] = len(sents) / (time.perf_counter() - t)
json.dump(res, open(out, "w"))
"#;

async fn peer(
    args: &VectorArgs,
    store: &str,
    files: (&Path, &Path),
    n: usize,
    dir: &Path,
) -> Result<(Row, Vec<Vec<u64>>), String> {
    let script = dir.join("peer.py");
    std::fs::write(&script, PEER).map_err(|e| e.to_string())?;
    let out = dir.join(format!("{store}-{n}.json"));
    let status = std::process::Command::new(&args.python)
        .arg(&script)
        .arg(store)
        .arg(files.0)
        .arg(n.to_string())
        .arg(args.dim.to_string())
        .arg(files.1)
        .arg(args.queries.to_string())
        .arg(&out)
        .env("ANONYMIZED_TELEMETRY", "False")
        .status()
        .map_err(|e| format!("cannot run {}: {e}", args.python))?;
    if !status.success() {
        return Err(format!(
            "{store} failed ({status}); pip install chromadb==1.5.9 sqlite-vec==0.1.9 sqlean.py numpy"
        ));
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let lat = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .map(|x| x as u64)
                    .collect()
            })
            .unwrap_or_default()
    };
    let ids: Vec<Vec<u64>> = v["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    l.as_array()
                        .map(|x| x.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let (p50_1, p99_1) = stats(lat("lat1"));
    let (p50_8, p99_8) = stats(lat("lat8"));
    let name = if store == "chroma" {
        "Chroma (HNSW, in-process)"
    } else {
        "sqlite-vec (exact, in-process)"
    };
    Ok((
        Row {
            store: name.into(),
            n,
            insert_per_s: v["insert_per_s"].as_f64().unwrap_or(0.0),
            p50_ms: [p50_1, p50_8],
            p99_ms: [p99_1, p99_8],
            recall: 0.0,
            rss_mb: v["rss_mb"].as_f64().unwrap_or(0.0) - v["base_rss_mb"].as_f64().unwrap_or(0.0),
            slowest_upsert_ms: None,
        },
        ids,
    ))
}

/// Sentences of two lengths: short ones, and chunks of about 200 tokens (what RAG embeds).
fn sentences() -> (Vec<String>, Vec<String>) {
    let words = [
        "the",
        "homelab",
        "keeps",
        "its",
        "models",
        "on",
        "a",
        "small",
        "machine",
        "under",
        "desk",
        "where",
        "quiet",
        "fans",
        "spin",
        "while",
        "documents",
        "are",
        "split",
        "into",
        "chunks",
        "and",
        "each",
        "chunk",
        "becomes",
        "vector",
        "that",
        "search",
        "finds",
        "again",
        "when",
        "someone",
        "asks",
        "question",
        "about",
        "garden",
        "recipes",
        "invoices",
        "travel",
        "plans",
    ];
    let mut rng = fastrand::Rng::with_seed(SEED);
    let make = |rng: &mut fastrand::Rng, len: usize| -> String {
        let mut s: Vec<&str> = (0..len).map(|_| words[rng.usize(..words.len())]).collect();
        s.push(".");
        s.join(" ")
    };
    let short = (0..512)
        .map(|_| {
            let len = 8 + rng.usize(..10);
            make(&mut rng, len)
        })
        .collect();
    let chunks = (0..128).map(|_| make(&mut rng, 180)).collect();
    (short, chunks)
}

async fn embeddings(args: &VectorArgs, dir: &Path) -> Result<Value, String> {
    let model = std::fs::canonicalize(&args.embedding_model).map_err(|e| {
        format!(
            "{}: {e} (homelab models pull minilm-l6)",
            args.embedding_model.display()
        )
    })?;
    let (short, chunks) = sentences();
    let port = free_port().await?;
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../layer-inference/llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf");
    let mut child = std::process::Command::new(sibling("orin-llm-server")?)
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--model")
        .arg(&tiny)
        .arg("--embedding-model")
        .arg(&model)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let base = format!("http://127.0.0.1:{port}");
    let ours = async {
        wait_ready(&format!("{base}/health")).await?;
        let http = reqwest::Client::new();
        let mut out = serde_json::Map::new();
        for (name, group) in [("short", &short), ("chunks", &chunks)] {
            let send = |batch: &[String]| {
                let http = http.clone();
                let body = json!({"model": "x", "input": batch});
                let url = format!("{base}/v1/embeddings");
                async move {
                    let res = http
                        .post(url)
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if res.status().is_success() {
                        Ok(())
                    } else {
                        Err(res.text().await.unwrap_or_default())
                    }
                }
            };
            send(&group[..32]).await?;
            let t = Instant::now();
            for batch in group.chunks(32) {
                send(batch).await?;
            }
            out.insert(
                name.into(),
                json!(group.len() as f64 / t.elapsed().as_secs_f64()),
            );
        }
        Ok::<_, String>(Value::Object(out))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let ours = ours?;
    let input = dir.join("sentences.json");
    std::fs::write(
        &input,
        json!({"short": short, "chunks": chunks}).to_string(),
    )
    .map_err(|e| e.to_string())?;
    let script = dir.join("st.py");
    std::fs::write(&script, ST).map_err(|e| e.to_string())?;
    let out = dir.join("st.json");
    let status = std::process::Command::new(&args.python)
        .arg(&script)
        .arg(&model)
        .arg(&input)
        .arg(&out)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(
            "sentence-transformers failed; pip install sentence-transformers==6.3.0".into(),
        );
    }
    let st: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    Ok(json!({"ours": ours, "sentence_transformers": st}))
}

pub async fn run(args: VectorArgs) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let max = args.sizes.iter().copied().max().unwrap_or(0);
    let (data, queries, kind) = match &args.vectors {
        None => {
            let mut rng = fastrand::Rng::with_seed(SEED);
            let c = centres(256, args.dim, &mut rng);
            let data = clustered(max, args.dim, &mut rng, &c);
            let queries = clustered(args.queries, args.dim, &mut rng, &c);
            (data, queries, "clustered".to_owned())
        }
        Some(path) => {
            let all = read_f32(path)?;
            let rows = all.len() / args.dim;
            if rows < max + args.queries {
                return Err(format!(
                    "{} holds {rows} rows of {}; {max} points and {} queries need {}",
                    path.display(),
                    args.dim,
                    args.queries,
                    max + args.queries
                ));
            }
            let q0 = (rows - args.queries) * args.dim;
            let queries = all[q0..rows * args.dim].to_vec();
            let mut data = all;
            data.truncate(max * args.dim);
            (data, queries, format!("from {}", path.display()))
        }
    };
    let data_path = dir.path().join("data.f32");
    let q_path = dir.path().join("queries.f32");
    write_f32(&data_path, &data)?;
    write_f32(&q_path, &queries)?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "bench vector: {} dimensions, {kind}, {} queries (c=1; then 3 rounds at c=8), top 10, on {} ({} cores)",
        args.dim,
        args.queries,
        cpu,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!(
        "{:<32} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "store",
        "points",
        "insert/s",
        "p50 c=1",
        "p99 c=1",
        "p50 c=8",
        "p99 c=8",
        "recall",
        "RSS MB",
        "raw MB"
    );
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let want = exact_top10(&data, n, &queries, args.dim);
        let mut measured = vec![ours(&data, n, args.dim, &queries, args.queries, dir.path()).await];
        for store in ["chroma", "sqlite-vec"] {
            measured.push(peer(&args, store, (&data_path, &q_path), n, dir.path()).await);
        }
        for m in measured {
            match m {
                Ok((mut row, got)) => {
                    row.recall = recall(&got, &want);
                    let raw = (n * args.dim * 4) as f64 / (1 << 20) as f64;
                    println!(
                        "{:<32} {:>7} {:>10.0} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>8.3} {:>8.1} {:>8.1}",
                        row.store,
                        row.n,
                        row.insert_per_s,
                        row.p50_ms[0],
                        row.p99_ms[0],
                        row.p50_ms[1],
                        row.p99_ms[1],
                        row.recall,
                        row.rss_mb,
                        raw
                    );
                    if let Some(ms) = row.slowest_upsert_ms {
                        println!("{:<32} slowest upsert of {BATCH} points: {ms:.0} ms", "");
                    }
                    rows.push(row);
                }
                Err(e) => println!("  failed: {e}"),
            }
        }
    }
    let mut emb = Value::Null;
    if !args.no_embeddings {
        match embeddings(&args, dir.path()).await {
            Ok(v) => {
                println!("\nembeddings, all-MiniLM-L6-v2, batch 32 (sentences/s):");
                println!(
                    "  short (8-18 words):  engine over HTTP {:.0}, sentence-transformers {:.0} (torch threads {})",
                    v["ours"]["short"].as_f64().unwrap_or(0.0),
                    v["sentence_transformers"]["short"].as_f64().unwrap_or(0.0),
                    v["sentence_transformers"]["threads"]
                );
                println!(
                    "  chunks (~200 tokens): engine over HTTP {:.0}, sentence-transformers {:.0}",
                    v["ours"]["chunks"].as_f64().unwrap_or(0.0),
                    v["sentence_transformers"]["chunks"].as_f64().unwrap_or(0.0)
                );
                emb = v;
            }
            Err(e) => println!("embeddings failed: {e}"),
        }
    }
    if let Some(path) = &args.json {
        let v = json!({
            "rows": rows.iter().map(|r| json!({
                "store": r.store, "points": r.n, "insert_per_s": r.insert_per_s,
                "p50_ms_c1": r.p50_ms[0], "p99_ms_c1": r.p99_ms[0],
                "p50_ms_c8": r.p50_ms[1], "p99_ms_c8": r.p99_ms[1],
                "recall_at_10": r.recall, "rss_mb": r.rss_mb,
                "slowest_upsert_ms": r.slowest_upsert_ms,
            })).collect::<Vec<_>>(),
            "embeddings": emb,
        });
        std::fs::write(path, v.to_string()).map_err(|e| e.to_string())?;
    }
    Ok(())
}
