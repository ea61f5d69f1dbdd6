//! The model in the system-docs DB: with `--db`, the server registers the model it loaded
//! (what the files say: format, quantisation, parameters, context length, size on disk,
//! memory footprint, path) as a model of this host, and records it loaded by this service
//! (`model_residency`) until it stops, so `homelab models list` and the monitor show what
//! is in memory on each host. A registered footprint or source an operator wrote is kept.

use std::path::Path;

use docsdb::spec::{ByteSize, ModelSpec};
use llm_engine::embed::Embedder;
use llm_engine::{Backend, Engine};

/// Where the server records its model.
#[derive(Debug, Clone)]
pub struct Registration {
    pub db: docsdb::Db,
    pub host: docsdb::spec::HostSpec,
    /// The name residency rows carry (the service's name in the registry).
    pub service: String,
}

impl Registration {
    /// Opens the DB at `url` (migrating it, as every service does).
    pub async fn open(
        url: &str,
        host: Option<&str>,
        service: &str,
    ) -> Result<Registration, docsdb::Error> {
        Ok(Registration {
            db: docsdb::Db::open(url).await?,
            host: docsdb::register::this_machine(host, &format!("registered by {service}")),
            service: service.to_owned(),
        })
    }

    /// Records `model_id` of this host not loaded (at start: a previous run may have died
    /// without saying so; and at stop). Only this model's row: another server on this host
    /// may run under the same service name with another model.
    pub async fn unloaded(&self, model_id: &str) {
        if let Err(e) = docsdb::residency::mark_unloaded(&self.db, &self.host.name, model_id).await
        {
            tracing::warn!(model = %model_id, error = %e, "could not record the model unloaded");
        }
    }

    /// Registers the loaded chat model and records it loaded; a failure is logged (the model
    /// still serves).
    pub async fn loaded(&self, engine: &Engine, path: &Path) {
        self.record(model_spec(engine, path, &self.host.name)).await;
    }

    /// Registers the loaded embedding model (its folder) and records it loaded.
    pub async fn loaded_embedder(&self, embedder: &Embedder, dir: &Path) {
        self.record(embedder_spec(embedder, dir, &self.host.name))
            .await;
    }

    async fn record(&self, found: ModelSpec) {
        let model_id = found.model_id.clone();
        let written = match docsdb::register::found_models(&self.db, &self.host, vec![found]).await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(model = %model_id, error = %e, "could not register the model");
                return;
            }
        };
        // The registered footprint (an operator's measurement wins over the estimate).
        let memory = written
            .first()
            .and_then(|m| m.memory_footprint_bytes)
            .map_or(0, |b| i64::try_from(b.0).unwrap_or(i64::MAX));
        match docsdb::residency::mark_loaded(
            &self.db,
            &self.host.name,
            &model_id,
            &self.service,
            memory,
        )
        .await
        {
            Ok(_) => {
                tracing::info!(model = %model_id, host = %self.host.name, "model registered and recorded loaded")
            }
            Err(e) => {
                tracing::warn!(model = %model_id, error = %e, "could not record the model loaded")
            }
        }
    }
}

/// What the loaded files say about the model.
fn model_spec(engine: &Engine, path: &Path, host: &str) -> ModelSpec {
    let info = &engine.info;
    // An OpenVINO model is an IR (its folder, or its `.xml`); any other is the GGUF itself.
    let ir = match engine.backend {
        Backend::OpenVino => llm_engine::ir::files(path).ok(),
        _ => None,
    };
    let (format, location, size_on_disk, weights, quantization) = match &ir {
        Some((xml, bin)) => {
            let folder = xml.parent().unwrap_or(path);
            (
                "openvino-ir",
                folder,
                folder_size(folder),
                std::fs::metadata(bin).map_or(0, |m| m.len()),
                llm_engine::ir::weight_type(&std::fs::read_to_string(xml).unwrap_or_default()),
            )
        }
        None => (
            "gguf",
            path,
            info.file_size,
            info.file_size,
            info.quantization().map(str::to_owned),
        ),
    };
    // The footprint of the weights actually loaded plus the KV cache at the served context.
    let footprint = info.memory_footprint(engine.context as u64) - info.file_size + weights;
    let cache = std::fs::canonicalize(location).unwrap_or_else(|_| location.to_owned());
    ModelSpec {
        model_id: engine.model_id.clone(),
        host: Some(host.to_owned()),
        family: info.architecture().map(str::to_owned),
        format: Some(format.into()),
        quantization,
        params: i64::try_from(info.parameter_count())
            .ok()
            .filter(|p| *p > 0),
        context_length: info.context_length().and_then(|c| i64::try_from(c).ok()),
        size_on_disk_bytes: Some(ByteSize(size_on_disk)),
        memory_footprint_bytes: Some(ByteSize(footprint)),
        source_path: None,
        cache_path: Some(cache.display().to_string()),
    }
}

/// What an embedding model's folder says: safetensors weights (f32), the encoder's family,
/// its input limit as the context, and a footprint of the weights (activations of a batch
/// are a few MB).
pub fn embedder_spec(embedder: &Embedder, dir: &Path, host: &str) -> ModelSpec {
    let info = &embedder.info;
    let cache = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    ModelSpec {
        model_id: embedder.model_id.clone(),
        host: Some(host.to_owned()),
        family: Some(info.family.clone()),
        format: Some("safetensors".into()),
        quantization: Some("f32".into()),
        params: i64::try_from(info.parameters).ok().filter(|p| *p > 0),
        context_length: i64::try_from(info.max_tokens).ok(),
        size_on_disk_bytes: Some(ByteSize(info.size_on_disk)),
        memory_footprint_bytes: Some(ByteSize(info.weights_bytes)),
        source_path: None,
        cache_path: Some(cache.display().to_string()),
    }
}

/// The files of a model folder, in bytes (not descending into sub-folders).
fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    })
}
