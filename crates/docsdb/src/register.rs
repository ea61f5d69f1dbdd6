//! Self-registration: what an inference service finds on its own machine (the host, the
//! model files it serves) written into the registry, without overwriting what an operator
//! said. `homelab models pull`, mlx-launch and the engine servers all register through here.

use crate::db::Db;
use crate::error::Result;
use crate::spec::{ByteSize, HostSpec, ModelSpec, SystemSpec};

/// This machine's host name: `name` when given, else the system's node name (without the
/// `.local` macOS adds).
pub fn host_name(name: Option<&str>) -> String {
    match name {
        Some(n) => n.to_owned(),
        None => {
            let uname = rustix::system::uname();
            let node = uname.nodename().to_string_lossy().into_owned();
            let node = node.trim_end_matches(".local");
            if node.is_empty() {
                "local".to_owned()
            } else {
                node.to_owned()
            }
        }
    }
}

/// This machine as a host of the registry: its name (see [`host_name`]), OS, architecture and
/// memory (where the system says: `/proc/meminfo` on Linux).
pub fn this_machine(name: Option<&str>, description: &str) -> HostSpec {
    let memory = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(ByteSize(kb * 1024))
    });
    HostSpec {
        name: host_name(name),
        description: Some(description.to_owned()),
        address: None,
        os: Some(std::env::consts::OS.to_owned()),
        arch: Some(std::env::consts::ARCH.to_owned()),
        accelerator: None,
        memory_bytes: memory,
    }
}

/// `host` if the registry does not know it yet (registering it again would overwrite an
/// operator's description of it).
pub async fn new_host(db: &Db, host: &HostSpec) -> Result<Option<HostSpec>> {
    let mut conn = db.pool().acquire().await?;
    let known = crate::read::hosts(&mut conn)
        .await?
        .iter()
        .any(|(_, h)| h.name == host.name);
    Ok((!known).then(|| host.clone()))
}

/// Registers `found` as models of `host` (and `host` itself when the registry does not know
/// it), in one transaction. What the files say about themselves — format, size on disk,
/// where they are — replaces the registered values; for the rest (family, quantisation,
/// parameters, context length, memory footprint, source) a registered value wins over what
/// was read or estimated, so a footprint an operator measured is kept. Returns the models as
/// written.
pub async fn found_models(
    db: &Db,
    host: &HostSpec,
    found: Vec<ModelSpec>,
) -> Result<Vec<ModelSpec>> {
    let mut conn = db.pool().acquire().await?;
    let known = crate::read::models(&mut conn).await?;
    drop(conn);
    let mut spec = SystemSpec {
        hosts: new_host(db, host).await?.into_iter().collect(),
        ..Default::default()
    };
    for f in found {
        let old = known
            .iter()
            .map(|(_, m)| m)
            .find(|m| m.model_id == f.model_id && m.host.as_deref() == Some(&host.name));
        let keep = |old_value: Option<&Option<String>>, new: Option<String>| {
            old_value.and_then(Clone::clone).or(new)
        };
        spec.models.push(ModelSpec {
            family: keep(old.map(|m| &m.family), f.family),
            quantization: keep(old.map(|m| &m.quantization), f.quantization),
            params: old.and_then(|m| m.params).or(f.params),
            context_length: old.and_then(|m| m.context_length).or(f.context_length),
            memory_footprint_bytes: old
                .and_then(|m| m.memory_footprint_bytes)
                .or(f.memory_footprint_bytes),
            source_path: keep(old.map(|m| &m.source_path), f.source_path),
            host: Some(host.name.clone()),
            model_id: f.model_id,
            format: f.format,
            size_on_disk_bytes: f.size_on_disk_bytes,
            cache_path: f.cache_path,
        });
    }
    crate::apply::apply(db, &spec, false).await?;
    Ok(spec.models)
}
