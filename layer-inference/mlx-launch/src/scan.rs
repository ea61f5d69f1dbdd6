//! Registration on start: MLX model folders found under `--models-dir` become models of this
//! host in the system-docs DB, with what the files tell (size on disk, quantisation, context
//! length, family) and a memory estimate where the registry has none.
//!
//! Two layouts are read: plain folders (`DIR/NAME/config.json`, model id `NAME`) and the
//! Hugging Face cache (`DIR/models--ORG--NAME/snapshots/REV/config.json`, model id
//! `ORG/NAME`, the newest snapshot). A folder counts as a model when it has a `config.json`
//! and at least one `*.safetensors` file.

use std::path::{Path, PathBuf};

use docsdb::spec::{ByteSize, ModelSpec};
use serde_json::Value;

use crate::error::Error;

/// Memory beyond the weights a loaded model needs (KV cache, activations, the runtime), as a
/// share of the weights plus a fixed part. An estimate: a registered footprint wins.
const OVERHEAD_SHARE: f64 = 0.15;
const OVERHEAD_FIXED: u64 = 512 << 20;

/// A model folder found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub model_id: String,
    pub path: PathBuf,
    pub size_on_disk: u64,
    pub family: Option<String>,
    pub quantization: Option<String>,
    pub context_length: Option<i64>,
}

impl Found {
    /// The memory estimate: the weights plus overhead.
    pub fn memory_estimate(&self) -> u64 {
        self.size_on_disk + (self.size_on_disk as f64 * OVERHEAD_SHARE) as u64 + OVERHEAD_FIXED
    }
}

/// The model folders under `dir` (unreadable entries are skipped with a warning).
pub fn scan(dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "cannot read the models folder");
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let (id, folder) = match name.strip_prefix("models--") {
            Some(repo) => match newest_snapshot(&path) {
                Some(snap) => (repo.replacen("--", "/", 1), snap),
                None => continue,
            },
            None => (name, path),
        };
        if let Some(f) = read_model(&id, &folder) {
            found.push(f);
        }
    }
    found.sort_by(|a, b| a.model_id.cmp(&b.model_id));
    found
}

fn newest_snapshot(repo: &Path) -> Option<PathBuf> {
    std::fs::read_dir(repo.join("snapshots"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("config.json").exists())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn read_model(id: &str, folder: &Path) -> Option<Found> {
    let config: Value = serde_json::from_slice(&std::fs::read(folder.join("config.json")).ok()?)
        .map_err(|e| tracing::warn!(model = id, error = %e, "config.json is not JSON; skipped"))
        .ok()?;
    let mut size = 0u64;
    let mut weights = false;
    for e in std::fs::read_dir(folder).ok()?.flatten() {
        // Hugging Face snapshots are symlinks into the blob store: follow them.
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if meta.is_file() {
            size += meta.len();
            weights |= e.file_name().to_string_lossy().ends_with(".safetensors");
        }
    }
    if !weights {
        return None;
    }
    let quantization = config
        .get("quantization")
        .or_else(|| config.get("quantization_config"))
        .and_then(|q| q.get("bits"))
        .and_then(Value::as_u64)
        .map(|b| format!("{b}bit"));
    Some(Found {
        model_id: id.to_owned(),
        path: folder.to_owned(),
        size_on_disk: size,
        family: config
            .get("model_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        quantization,
        context_length: config
            .get("max_position_embeddings")
            .and_then(Value::as_i64),
    })
}

/// Registers what `dirs` hold as `mlx` models of `host` (see `docsdb::register::found_models`:
/// a footprint an operator measured is not overwritten by the estimate). The host is
/// registered if it is not. How many models were written.
pub async fn register(db: &docsdb::Db, host: &str, dirs: &[PathBuf]) -> Result<usize, Error> {
    let found: Vec<Found> = dirs.iter().flat_map(|d| scan(d)).collect();
    if found.is_empty() {
        return Ok(0);
    }
    let host = docsdb::register::this_machine(Some(host), "registered by mlx-launch");
    let models = found
        .iter()
        .map(|f| ModelSpec {
            model_id: f.model_id.clone(),
            host: Some(host.name.clone()),
            family: f.family.clone(),
            format: Some("mlx".into()),
            quantization: f.quantization.clone(),
            params: None,
            context_length: f.context_length,
            size_on_disk_bytes: Some(ByteSize(f.size_on_disk)),
            memory_footprint_bytes: Some(ByteSize(f.memory_estimate())),
            source_path: None,
            cache_path: Some(f.path.display().to_string()),
        })
        .collect();
    Ok(docsdb::register::found_models(db, &host, models)
        .await?
        .len())
}
