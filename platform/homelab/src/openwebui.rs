//! `homelab openwebui env`: Open WebUI's environment file, filled from the registry, so that
//! Open WebUI reaches everything through this stack — models, embeddings, the vector store,
//! web search and the MCP tools — and the gateway can account for its users.
//!
//! The names and shapes are Open WebUI 0.12.4's (`open_webui/config.py`, `env.py`): a
//! tool-server entry is `{type: "mcp", url, path, auth_type, key, config: {enable,
//! access_grants}, info: {id, name, description}}`, and an entry without `access_grants` is
//! for admins only.

use docsdb::spec::{Api, EndpointSpec, Layer, Lifecycle, ServiceKind, ServiceSpec, SystemSpec};
use serde_json::{Value, json};

use crate::Error;

/// The handle Open WebUI embeds documents with, when the registry has it (`homelab up`'s).
pub const EMBED_HANDLE: &str = "embed";
/// The service name Open WebUI is registered under.
pub const SERVICE: &str = "open-webui";
/// The pinned release every name here was read from.
pub const VERSION: &str = "0.12.4";

/// What goes into the file besides the registry.
#[derive(Debug, Clone)]
pub struct EnvInputs {
    /// The gateway's base URL as Open WebUI reaches it (no `/v1`).
    pub gateway: String,
    /// The virtual key's name and secret.
    pub key_name: String,
    pub secret: String,
}

/// MCP tool servers every Open WebUI user may call; any other (home-assistant: it switches
/// things in the house) is left to admins, who can grant it further in Open WebUI.
const PUBLIC_TOOLS: &[&str] = &["web-fetch", "web-search"];

/// Open WebUI's tool-server entries for the registry's MCP endpoints (no secret in them: a
/// tool server that wants a key gets `auth_type: "bearer"` with an empty key to fill in).
pub fn tool_servers(spec: &SystemSpec, keyed: bool) -> Vec<Value> {
    let mut mcp: Vec<&EndpointSpec> = spec
        .endpoints
        .iter()
        .filter(|e| e.api == Api::Mcp)
        .collect();
    // By name, as the registry lists them.
    mcp.sort_by(|a, b| a.name.cmp(&b.name));
    mcp.into_iter()
        .map(|e| {
            let service = e
                .service
                .as_deref()
                .and_then(|s| spec.services.iter().find(|x| x.name == s));
            let id = e.service.clone().unwrap_or_else(|| e.name.clone());
            let description = service
                .and_then(|s| s.description.clone())
                .unwrap_or_else(|| format!("MCP tool server {id}"));
            let mut config = json!({ "enable": true });
            if PUBLIC_TOOLS.contains(&id.as_str()) {
                config["access_grants"] =
                    json!([{"principal_type": "user", "principal_id": "*", "permission": "read"}]);
            }
            json!({
                "type": "mcp",
                "url": e.base_url,
                "path": "",
                "auth_type": if keyed { "bearer" } else { "none" },
                "key": "",
                "config": config,
                "info": { "id": id, "name": id, "description": description },
            })
        })
        .collect()
}

/// What the registry offers Open WebUI, read once for the file and its summary.
struct Offers<'a> {
    embed: bool,
    /// The vector store's URL.
    vector_db: Option<&'a str>,
    search: bool,
    tools: Vec<Value>,
}

fn offers(spec: &SystemSpec, keyed_tools: bool) -> Offers<'_> {
    Offers {
        embed: spec.handles.iter().any(|h| h.handle == EMBED_HANDLE),
        vector_db: service(spec, "vector-db").and_then(|s| s.base_url.as_deref()),
        search: spec.endpoints.iter().any(|e| e.api == Api::Searxng),
        tools: tool_servers(spec, keyed_tools),
    }
}

fn service<'a>(spec: &'a SystemSpec, name: &str) -> Option<&'a ServiceSpec> {
    spec.services
        .iter()
        .find(|s| s.name == name && s.lifecycle == Lifecycle::Active)
}

/// A value for an environment file that systemd's `EnvironmentFile=`, a shell's `.` and
/// python-dotenv read alike: as is when plain, else in single quotes (JSON has none).
fn value(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:@,+=".contains(c))
    {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// The environment file for `spec`. `keyed_tools`: the MCP tools want a bearer key (a master
/// key is set), which is left for the operator to fill in.
pub fn render(spec: &SystemSpec, inputs: &EnvInputs, keyed_tools: bool) -> String {
    let gw = inputs.gateway.trim_end_matches('/');
    let v1 = format!("{gw}/v1");
    let key = value(&inputs.secret);
    let offers = offers(spec, keyed_tools);
    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line(&format!(
        "# Open WebUI {VERSION} against homelab-llm, written by `homelab openwebui env` from the registry."
    ));
    line(&format!(
        "# It holds the gateway key `{}`: keep it private (chmod 600).",
        inputs.key_name
    ));
    line("");
    line("# This file is the truth at every start, not Open WebUI's admin pages.");
    line("ENABLE_PERSISTENT_CONFIG=False");
    line("");
    line("# Models: every handle of the gateway, through one virtual key.");
    line("ENABLE_OPENAI_API=True");
    line(&format!("OPENAI_API_BASE_URL={}", value(&v1)));
    line(&format!("OPENAI_API_KEY={key}"));
    line("ENABLE_OLLAMA_API=False");
    line("ENABLE_DIRECT_CONNECTIONS=False");
    let handle = |name: &str| spec.handles.iter().any(|h| h.handle == name);
    if handle("local") {
        line("DEFAULT_MODELS=local");
    }
    if handle("tasks") {
        line("# Titles, tags and follow-ups on the `tasks` handle: background priority, bounded.");
        line("TASK_MODEL_EXTERNAL=tasks");
    }
    line("");
    line("# Per-user accounting: Open WebUI names its user and chat on every call, and the");
    line("# gateway keeps them in its request log (the monitor's handle view breaks it down).");
    line("ENABLE_FORWARD_USER_INFO_HEADERS=True");
    line("");
    if offers.embed {
        line(&format!(
            "# RAG: documents embedded through the gateway's `{EMBED_HANDLE}` handle."
        ));
        line("RAG_EMBEDDING_ENGINE=openai");
        line(&format!("RAG_OPENAI_API_BASE_URL={}", value(&v1)));
        line(&format!("RAG_OPENAI_API_KEY={key}"));
        line(&format!("RAG_EMBEDDING_MODEL={EMBED_HANDLE}"));
        line("# The engine embeds 32 inputs at a time.");
        line("RAG_EMBEDDING_BATCH_SIZE=32");
    } else {
        line(&format!(
            "# RAG: no `{EMBED_HANDLE}` handle is registered; Open WebUI embeds with its own model."
        ));
    }
    match offers.vector_db {
        Some(url) => {
            line(
                "# Documents, memories and web results in the data layer's vector store (Qdrant's",
            );
            line("# REST API; needs qdrant-client==1.18.0 beside open-webui).");
            line("VECTOR_DB=qdrant");
            line(&format!("QDRANT_URI={}", value(url)));
            line("QDRANT_PREFER_GRPC=False");
            if keyed_tools {
                line("# The vector store wants the key it was started with:");
                line("# QDRANT_API_KEY=");
            }
        }
        None => line(
            "# No vector store is registered; Open WebUI keeps its documents in its own Chroma.",
        ),
    }
    line("");
    if offers.search {
        line("# Web search through the gateway (SearXNG behind it), logged and limited there.");
        line("ENABLE_WEB_SEARCH=True");
        line("WEB_SEARCH_ENGINE=external");
        line(&format!(
            "EXTERNAL_WEB_SEARCH_URL={}",
            value(&format!("{v1}/search/openwebui"))
        ));
        line(&format!("EXTERNAL_WEB_SEARCH_API_KEY={key}"));
    } else {
        line("# Web search: no SearXNG is registered (homelab up --searxng URL); left off.");
        line("ENABLE_WEB_SEARCH=False");
    }
    line("");
    let tools = offers.tools;
    if tools.is_empty() {
        line("# Tools: no MCP tool server is registered.");
    } else {
        let names: Vec<&str> = tools
            .iter()
            .filter_map(|t| t["info"]["id"].as_str())
            .collect();
        line(&format!(
            "# Tools: the MCP tool servers ({}), over Streamable HTTP.",
            names.join(", ")
        ));
        if keyed_tools {
            line("# They want a bearer key: fill in each entry's \"key\".");
        }
        // An apostrophe in a description would end the quoted value: JSON spells it out.
        let json = Value::Array(tools).to_string().replace('\'', "\\u0027");
        line(&format!("TOOL_SERVER_CONNECTIONS={}", value(&json)));
    }
    s
}

/// The registry entry for Open WebUI itself: an interface-layer service the monitor probes.
pub fn service_spec(url: &str, host: Option<String>) -> ServiceSpec {
    ServiceSpec {
        name: SERVICE.into(),
        layer: Layer::Interface,
        host,
        kind: ServiceKind::External,
        base_url: Some(url.trim_end_matches('/').to_owned()),
        health_path: Some("/health".into()),
        unit: Some("homelab-open-webui.service".into()),
        lifecycle: Lifecycle::Active,
        description: Some(format!(
            "Open WebUI {VERSION}, the chat interface, pointed at the gateway"
        )),
        probe_interval_ms: None,
        fail_threshold: None,
        docs: vec![docsdb::spec::DocSpec {
            kind: "README".into(),
            location: "layer-interface/open-webui/README.md".into(),
        }],
    }
}

/// The gateway's base URL from the registry.
pub fn gateway_url(spec: &SystemSpec) -> Result<String, Error> {
    service(spec, "gateway")
        .and_then(|s| s.base_url.clone())
        .ok_or_else(|| {
            Error::Usage(
                "no gateway is registered: run `homelab up` (or import the registry) first, or pass --gateway URL"
                    .into(),
            )
        })
}

/// What the file draws on, for the summary on standard error.
pub fn summary(spec: &SystemSpec) -> String {
    let o = offers(spec, false);
    let yes = |b: bool| if b { "yes" } else { "no" };
    format!(
        "models: {} handles; embeddings: {}; vector store: {}; web search: {}; tool servers: {}",
        spec.handles.len(),
        yes(o.embed),
        yes(o.vector_db.is_some()),
        yes(o.search),
        o.tools.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// layer-interface/open-webui/open-webui.env.example is what this writes for `up`'s
    /// registry (`HOMELAB_WRITE_SPECS=1` writes it again).
    #[test]
    fn the_example_file_is_what_render_writes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(root.join("tests/fixtures/stack.yaml")).unwrap();
        let spec = docsdb::formats::system_yaml::parse(&yaml, "stack.yaml").unwrap();
        let text = render(
            &spec,
            &EnvInputs {
                gateway: gateway_url(&spec).unwrap(),
                key_name: "open-webui".into(),
                secret: "replace-with-the-key-homelab-openwebui-env-prints".into(),
            },
            false,
        );
        let path = root.join("../../layer-interface/open-webui/open-webui.env.example");
        if std::env::var("HOMELAB_WRITE_SPECS").is_ok() {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed, text,
            "open-webui.env.example is stale: HOMELAB_WRITE_SPECS=1 cargo test -p homelab --lib"
        );
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        assert_eq!(
            value("http://127.0.0.1:4000/v1"),
            "http://127.0.0.1:4000/v1"
        );
        assert_eq!(value(r#"[{"a":"b c"}]"#), r#"'[{"a":"b c"}]'"#);
        assert_eq!(value("it's"), r"'it'\''s'");
    }
}
