//! The models this supervisor may start: the system-docs DB's models on this host, in the
//! formats it serves.

use std::collections::BTreeMap;

use docsdb::spec::ModelSpec;

use crate::error::Error;

/// One model the supervisor can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub model_id: String,
    /// What `{path}` becomes in the command: the cache path, else the source path.
    pub path: String,
    /// Memory the running model takes (its registered footprint, else its size on disk).
    pub memory_bytes: u64,
    pub format: Option<String>,
    pub context_length: Option<i64>,
}

impl ModelEntry {
    fn from_spec(m: &ModelSpec) -> Option<Self> {
        let path = m.cache_path.clone().or_else(|| m.source_path.clone())?;
        Some(ModelEntry {
            model_id: m.model_id.clone(),
            path,
            memory_bytes: m
                .memory_footprint_bytes
                .or(m.size_on_disk_bytes)
                .map_or(0, |b| b.0),
            format: m.format.clone(),
            context_length: m.context_length,
        })
    }
}

/// Reads the models registered on `host` whose format is one of `formats` (any format when
/// `formats` is empty) and that have a path.
pub async fn load(
    db: &docsdb::Db,
    host: &str,
    formats: &[String],
) -> Result<BTreeMap<String, ModelEntry>, Error> {
    let mut conn = db.pool().acquire().await.map_err(docsdb::Error::from)?;
    let models = docsdb::read::models(&mut conn).await?;
    Ok(models
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.host.as_deref() == Some(host))
        .filter(|m| {
            formats.is_empty()
                || m.format
                    .as_deref()
                    .is_some_and(|f| formats.iter().any(|w| w.eq_ignore_ascii_case(f)))
        })
        .filter_map(ModelEntry::from_spec)
        .map(|e| (e.model_id.clone(), e))
        .collect())
}
