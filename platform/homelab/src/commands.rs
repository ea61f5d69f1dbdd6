//! One function per command: read input, call `docsdb`, print.

use std::io::Read;

use docsdb::formats::{self, jsonl, system_yaml};
use docsdb::{Db, keys, read};
use serde::Serialize;

use crate::output::{self, bytes, opt, table, time};
use crate::{
    CreateKeyArgs, Error, ExportArgs, ExportFormat, ImportArgs, ListArgs, ListKind,
    OpenWebUiEnvArgs, PullArgs, openwebui,
};

fn io_err(path: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `homelab db migrate`
pub async fn migrate(db: &Db) -> Result<(), Error> {
    // `run` has opened and migrated already; report where things stand.
    let version = db.schema_version().await?;
    output::line(&format!(
        "system-docs DB at {} is up to date (schema version {})",
        db.url(),
        opt(&version)
    ));
    Ok(())
}

/// `homelab registry import FILE [--dry-run]`
pub async fn import(db: &Db, args: &ImportArgs) -> Result<(), Error> {
    let file = args.file.as_str();
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(io_err("<stdin>"))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(io_err(file))?
    };
    let parsed = formats::parse(&text, file)?;
    for w in &parsed.warnings {
        output::warning(&format!("{file}: {w}"));
    }
    let report = match docsdb::apply::apply(db, &parsed.spec, args.dry_run).await {
        Ok(r) => r,
        Err(docsdb::Error::Input(e)) => return Err(parsed.locate(e, file).into()),
        Err(e) => return Err(e.into()),
    };
    let mode = if args.dry_run {
        " (dry run: nothing was written)"
    } else {
        ""
    };
    output::line(&format!("{file} read as {}{mode}", parsed.format.name()));
    output::line(&report.to_string());
    Ok(())
}

/// `homelab registry export --format jsonl|yaml [--out FILE]`
pub async fn export(db: &Db, args: &ExportArgs) -> Result<(), Error> {
    let mut conn = db.pool().acquire().await.map_err(docsdb::Error::from)?;
    let text = match args.format {
        ExportFormat::Yaml => system_yaml::write(&read::load_spec(&mut conn).await?),
        ExportFormat::Jsonl => {
            let handles: Vec<_> = read::handles(&mut conn, true)
                .await?
                .into_iter()
                .map(|(_, h)| h)
                .collect();
            jsonl::write(&handles)
        }
    };
    drop(conn);
    if let Some(shown) = write_out(args.out.as_deref(), &text, 0o666)? {
        output::line(&format!("wrote {shown}"));
    }
    Ok(())
}

/// `text` to standard output, or to `out`: written beside it with `mode` (less the umask)
/// and renamed into place, so a reader never sees half a file. The path written, if any.
fn write_out(
    out: Option<&std::path::Path>,
    text: &str,
    mode: u32,
) -> Result<Option<String>, Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = out else {
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        return Ok(None);
    };
    let shown = path.display().to_string();
    let tmp = path.with_extension("tmp-write");
    // A stale one would keep its old permissions.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&shown))?;
    f.write_all(text.as_bytes()).map_err(io_err(&shown))?;
    f.sync_all().map_err(io_err(&shown))?;
    std::fs::rename(&tmp, path).map_err(io_err(&shown))?;
    Ok(Some(shown))
}

/// `homelab registry list KIND [--json]`
pub async fn list(db: &Db, args: &ListArgs) -> Result<(), Error> {
    let mut conn = db.pool().acquire().await.map_err(docsdb::Error::from)?;
    let text = match args.kind {
        ListKind::Hosts => {
            let hosts: Vec<_> = read::hosts(&mut conn)
                .await?
                .into_iter()
                .map(|(_, h)| h)
                .collect();
            if args.json {
                json(&hosts)
            } else {
                table(
                    &["host", "os", "arch", "accelerator", "memory", "address"],
                    hosts
                        .iter()
                        .map(|h| {
                            vec![
                                h.name.clone(),
                                opt(&h.os),
                                opt(&h.arch),
                                opt(&h.accelerator),
                                bytes(h.memory_bytes.map(|b| b.as_i64())),
                                opt(&h.address),
                            ]
                        })
                        .collect(),
                )
            }
        }
        ListKind::Services => {
            let services: Vec<_> = read::services(&mut conn)
                .await?
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            if args.json {
                json(&services)
            } else {
                table(
                    &[
                        "service",
                        "layer",
                        "host",
                        "kind",
                        "lifecycle",
                        "base url",
                        "health",
                    ],
                    services
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.layer.to_string(),
                                opt(&s.host),
                                s.kind.to_string(),
                                s.lifecycle.to_string(),
                                opt(&s.base_url),
                                opt(&s.health_path),
                            ]
                        })
                        .collect(),
                )
            }
        }
        ListKind::Endpoints => {
            let endpoints: Vec<_> = read::endpoints(&mut conn)
                .await?
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            if args.json {
                json(&endpoints)
            } else {
                table(
                    &["endpoint", "api", "base url", "service", "auth env"],
                    endpoints
                        .iter()
                        .map(|e| {
                            vec![
                                e.name.clone(),
                                e.api.to_string(),
                                e.base_url.clone(),
                                opt(&e.service),
                                opt(&e.auth_env),
                            ]
                        })
                        .collect(),
                )
            }
        }
        ListKind::Models => {
            let models = read::model_inventory(&mut conn).await?;
            if args.json {
                json(&models)
            } else {
                table(
                    &[
                        "model",
                        "host",
                        "format",
                        "quant",
                        "context",
                        "on disk",
                        "memory",
                        "host memory",
                        "host headroom",
                        "loaded",
                        "host free now",
                    ],
                    models
                        .iter()
                        .map(|m| {
                            vec![
                                m.model_id.clone(),
                                opt(&m.host),
                                opt(&m.format),
                                opt(&m.quantization),
                                opt(&m.context_length),
                                bytes(m.size_on_disk_bytes),
                                bytes(m.memory_footprint_bytes),
                                bytes(m.host_memory_bytes),
                                bytes(m.host_headroom_bytes),
                                m.loaded_by
                                    .as_ref()
                                    .filter(|_| m.loaded)
                                    .map_or_else(|| "-".to_owned(), |by| format!("by {by}")),
                                bytes(m.host_free_bytes),
                            ]
                        })
                        .collect(),
                )
            }
        }
        ListKind::Handles => {
            let handles: Vec<_> = read::handles(&mut conn, false)
                .await?
                .into_iter()
                .map(|(_, h)| h)
                .collect();
            if args.json {
                json(&handles)
            } else {
                table(
                    &["handle", "strategy", "targets (in order)", "description"],
                    handles
                        .iter()
                        .map(|h| {
                            let targets = h
                                .targets
                                .iter()
                                .map(|t| {
                                    format!(
                                        "{} → {} (p{} w{})",
                                        opt(&t.endpoint),
                                        t.model,
                                        t.priority,
                                        t.weight
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("\n");
                            vec![
                                h.handle.clone(),
                                h.strategy.to_string(),
                                targets,
                                opt(&h.description),
                            ]
                        })
                        .collect(),
                )
            }
        }
    };
    output::line(&text);
    Ok(())
}

/// `homelab keys create --name NAME ...`
pub async fn create_key(db: &Db, args: &CreateKeyArgs) -> Result<(), Error> {
    let new = keys::NewKey {
        name: args.name.clone(),
        allowed_handles: args.handles.clone(),
        allowed_tools: args.tools.clone(),
        rpm: args.rpm,
        tpm: args.tpm,
        token_budget: args.budget,
    };
    let (info, secret) = keys::create(db, &new).await?;
    output::line(&format!(
        "created key `{}` (handles: {}, tools: {}, rpm: {}, tpm: {}, budget: {})",
        info.name,
        info.allowed_handles
            .as_ref()
            .map_or_else(|| "all".to_owned(), |h| h.join(",")),
        info.allowed_tools
            .as_ref()
            .map_or_else(|| "all".to_owned(), |h| h.join(",")),
        opt(&info.rpm),
        opt(&info.tpm),
        opt(&info.token_budget),
    ));
    output::line("the key is shown once; only its hash is stored:");
    output::line(&secret);
    Ok(())
}

/// `homelab keys list [--json]`
pub async fn list_keys(db: &Db, as_json: bool) -> Result<(), Error> {
    let all = keys::list(db).await?;
    let text = if as_json {
        json(&all)
    } else {
        table(
            &[
                "name", "key", "handles", "tools", "rpm", "tpm", "budget", "created", "revoked",
            ],
            all.iter()
                .map(|k| {
                    vec![
                        k.name.clone(),
                        format!("{}…", k.key_prefix),
                        k.allowed_handles
                            .as_ref()
                            .map_or_else(|| "all".to_owned(), |h| h.join(",")),
                        k.allowed_tools
                            .as_ref()
                            .map_or_else(|| "all".to_owned(), |h| h.join(",")),
                        opt(&k.rpm),
                        opt(&k.tpm),
                        opt(&k.token_budget),
                        time(k.created_at_ms),
                        k.revoked_at_ms.map_or_else(|| "-".to_owned(), time),
                    ]
                })
                .collect(),
        )
    };
    output::line(&text);
    Ok(())
}

/// `homelab keys revoke NAME`
pub async fn revoke_key(db: &Db, name: &str) -> Result<(), Error> {
    let info = keys::revoke(db, name).await?;
    output::line(&format!(
        "revoked key `{}` ({}…)",
        info.name, info.key_prefix
    ));
    Ok(())
}

/// `homelab openwebui env --key NAME`
pub async fn openwebui_env(db: &Db, args: &OpenWebUiEnvArgs) -> Result<(), Error> {
    let mut conn = db.pool().acquire().await.map_err(docsdb::Error::from)?;
    let spec = read::load_spec(&mut conn).await?;
    drop(conn);
    let gateway = match &args.gateway {
        Some(g) => g.clone(),
        None => openwebui::gateway_url(&spec)?,
    };
    let live = keys::list(db)
        .await?
        .into_iter()
        .any(|k| k.name == args.key && k.revoked_at_ms.is_none());
    if live && !args.rotate {
        return Err(Error::Usage(format!(
            "a key named `{}` exists, and its secret was shown only when it was made: pass --rotate to revoke it and make a new one (then give Open WebUI the new file), or choose another --key",
            args.key
        )));
    }
    // Open WebUI itself, for the monitor to probe; beside the gateway unless told otherwise.
    let host = spec
        .services
        .iter()
        .find(|s| s.name == "gateway")
        .and_then(|s| s.host.clone());
    let register = docsdb::spec::SystemSpec {
        hosts: spec
            .hosts
            .iter()
            .filter(|h| Some(&h.name) == host.as_ref())
            .cloned()
            .collect(),
        services: vec![openwebui::service_spec(&args.url, host)],
        ..Default::default()
    };
    docsdb::apply::apply(db, &register, false).await?;
    if live {
        keys::revoke(db, &args.key).await?;
        output::note(&format!("revoked the old key `{}`", args.key));
    }
    let (_, secret) = keys::create(
        db,
        &keys::NewKey {
            name: args.key.clone(),
            allowed_handles: None,
            allowed_tools: None,
            rpm: None,
            tpm: None,
            token_budget: None,
        },
    )
    .await?;
    let text = openwebui::render(
        &spec,
        &openwebui::EnvInputs {
            gateway,
            key_name: args.key.clone(),
            secret,
        },
        args.keyed_tools,
    );
    // It holds a key: private from the start.
    if let Some(shown) = write_out(args.out.as_deref(), &text, 0o600)? {
        output::note(&format!("wrote {shown} (mode 600)"));
    }
    output::note(&format!(
        "made key `{}` for Open WebUI; {}; registered `{}` at {} for the monitor",
        args.key,
        openwebui::summary(&spec),
        openwebui::SERVICE,
        args.url
    ));
    Ok(())
}

/// `homelab models pull SOURCE`
pub async fn pull_model(db: &Db, args: &PullArgs) -> Result<(), Error> {
    if let Some(k) = crate::models::KNOWN_FOLDERS
        .iter()
        .find(|k| k.name == args.source)
    {
        let p = crate::models::pull_folder(db, k, &args.models_dir).await?;
        let how = if p.reused {
            "already in the cache"
        } else {
            "fetched"
        };
        output::line(&format!(
            "{} {how}: {} ({}, embeddings, {} tokens per input, {} parameters, {} on disk)",
            p.model_id,
            p.cache_path.display(),
            p.family,
            p.max_tokens,
            p.parameters,
            bytes(i64::try_from(p.size_on_disk).ok()),
        ));
        output::line(&format!("sha256 {} (model.safetensors)", p.sha256));
        return Ok(());
    }
    let p = crate::models::pull(
        db,
        &crate::models::PullOptions {
            source: &args.source,
            models_dir: &args.models_dir,
            sha256: args.sha256.as_deref(),
            name: args.name.as_deref(),
            context: args.context,
        },
    )
    .await?;
    let how = if p.reused {
        "already in the cache"
    } else {
        "fetched"
    };
    output::line(&format!(
        "{} {how}: {} ({}, {}, context {}, {} parameters, {} on disk)",
        p.model_id,
        p.cache_path.display(),
        p.info.architecture().unwrap_or("?"),
        p.info.quantization().unwrap_or("?"),
        opt(&p.info.context_length()),
        p.info.parameter_count(),
        bytes(i64::try_from(p.info.file_size).ok()),
    ));
    output::line(&format!("sha256 {}", p.sha256));
    if let Some(k) = crate::models::KNOWN.iter().find(|k| k.name == p.model_id) {
        output::line(&format!("source: {}", k.provenance));
    }
    Ok(())
}

/// `homelab status`: the monitor's picture from the DB — services per layer, then handles.
pub async fn status(db: &Db, as_json: bool) -> Result<(), Error> {
    use docsdb::monitor::counts;
    let services = docsdb::monitor::services(db).await?;
    let handles = docsdb::monitor::handles(db).await?;
    let c = counts(&services);
    if as_json {
        output::line(&json(&serde_json::json!({
            "status": c.overall(),
            "at_ms": docsdb::now_ms(),
            "counts": c,
            "services": services,
            "handles": handles,
        })));
        return Ok(());
    }
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), docsdb::monitor::show_ms);
    let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{:.2}%", v * 100.0));
    let mut out = format!(
        "homelab-llm: {} ({} up, {} degraded, {} down, {} unknown)\n",
        c.overall(),
        c.up,
        c.degraded,
        c.down,
        c.unknown
    );
    for (layer, services) in docsdb::monitor::by_layer(&services) {
        let rows: Vec<Vec<String>> = services
            .iter()
            .map(|s| {
                vec![
                    s.service.clone(),
                    if s.stale {
                        format!("{} (stale)", s.status)
                    } else {
                        s.status.clone()
                    },
                    s.since_ms.map_or_else(|| "-".to_owned(), time),
                    ratio(s.uptime_24h),
                    format!("{} / {}", ms(s.latency_p50_ms), ms(s.latency_p95_ms)),
                    opt(&s.host),
                    s.current_error().unwrap_or("").chars().take(80).collect(),
                ]
            })
            .collect();
        out.push_str(&format!("\n{layer}\n"));
        out.push_str(&table(
            &[
                "service",
                "status",
                "since",
                "uptime 24h",
                "p50 / p95",
                "host",
                "last error",
            ],
            rows,
        ));
        out.push('\n');
    }
    out.push_str("\nhandles\n");
    out.push_str(&table(
        &[
            "handle",
            "req 1h",
            "errors 1h",
            "req 24h",
            "errors 24h",
            "p50 / p95",
            "TTFT",
            "tokens/s",
        ],
        handles
            .iter()
            .map(|h| {
                vec![
                    h.handle.clone(),
                    h.requests_1h.to_string(),
                    ratio(h.error_rate_1h),
                    h.requests_24h.to_string(),
                    ratio(h.error_rate_24h),
                    format!(
                        "{} / {}",
                        ms(h.p50_latency_ms_24h),
                        ms(h.p95_latency_ms_24h)
                    ),
                    ms(h.avg_ttft_ms_24h),
                    h.tokens_per_s_24h
                        .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                ]
            })
            .collect(),
    ));
    output::line(&out);
    Ok(())
}
