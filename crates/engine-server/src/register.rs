//! The model in the system-docs DB: with `--db`, the server registers the model it loaded
//! (what the files say: format, quantisation, parameters, context length, size on disk,
//! memory footprint, path) as a model of this host, and records it loaded by this service
//! (`model_residency`) until it stops, so `homelab models list` and the monitor show what
//! is in memory on each host. A registered footprint or source an operator wrote is kept.

use std::path::Path;

use docsdb::spec::{ByteSize, ModelSpec};
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

    /// Registers the loaded model and records it loaded; a failure is logged (the model
    /// still serves).
    pub async fn loaded(&self, engine: &Engine, path: &Path) {
        let found = model_spec(engine, path, &self.host.name);
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
    let ir = engine.backend == Backend::OpenVino && path.is_dir();
    let (size_on_disk, weights, quantization) = if ir {
        let xml = path.join("openvino_model.xml");
        let bin = std::fs::metadata(path.join("openvino_model.bin")).map_or(0, |m| m.len());
        (
            folder_size(path),
            bin,
            ir_weight_type(&std::fs::read_to_string(xml).unwrap_or_default()),
        )
    } else {
        (
            info.file_size,
            info.file_size,
            info.quantization().map(str::to_owned),
        )
    };
    // The footprint of the weights actually loaded plus the KV cache at the served context.
    let footprint = info.memory_footprint(engine.context as u64) - info.file_size + weights;
    let cache = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    ModelSpec {
        model_id: engine.model_id.clone(),
        host: Some(host.to_owned()),
        family: info.architecture().map(str::to_owned),
        format: Some(if ir { "openvino-ir" } else { "gguf" }.into()),
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

/// The weights' element type of an IR (`openvino_model.xml`): the type of most constant
/// bytes among the weight types (index constants — `i32`, `i64` — do not count): `int4`,
/// `int8`, `f16`, `bf16` or `f32`.
pub fn ir_weight_type(xml: &str) -> Option<String> {
    let mut bytes: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for tag in xml.split("<data ").skip(1) {
        let tag = format!(" {}", tag.split('>').next().unwrap_or(""));
        let (Some(ty), Some(size)) = (attr(&tag, "element_type"), attr(&tag, "size")) else {
            continue;
        };
        let name = match ty {
            "u4" | "i4" | "nf4" => "int4",
            "u8" | "i8" => "int8",
            "f16" => "f16",
            "bf16" => "bf16",
            "f32" => "f32",
            _ => continue,
        };
        *bytes.entry(name).or_default() += size.parse::<u64>().unwrap_or(0);
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .filter(|(_, b)| *b > 0)
        .map(|(n, _)| n.to_owned())
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let rest = &tag[start..];
    Some(&rest[..rest.find('"')?])
}

#[cfg(test)]
mod tests {
    use super::ir_weight_type;

    #[test]
    fn the_weight_type_is_the_one_with_the_most_bytes() {
        let xml = r#"<layer type="Const"><data element_type="i64" shape="1" offset="0" size="80000" /></layer>
            <layer type="Const"><data element_type="u4" shape="576,576" offset="8" size="165888" /></layer>
            <layer type="Const"><data element_type="f16" shape="576,18" offset="9" size="20736" /></layer>
            <layer type="Parameter"><data shape="?,?" element_type="i64" /></layer>"#;
        assert_eq!(ir_weight_type(xml).as_deref(), Some("int4"));
        let f16 = xml.replace("\"u4\"", "\"f32\"").replace("165888", "100");
        assert_eq!(ir_weight_type(&f16).as_deref(), Some("f16"));
        assert_eq!(ir_weight_type("<net></net>"), None);
    }
}
