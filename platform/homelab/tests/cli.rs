//! The built `homelab` binary against real SQLite files and a real Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use sqlx::Connection;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn homelab(db: &str, args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(["--db", db])
        .args(args)
        .env_remove("HOMELAB_DB")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn ok(db: &str, args: &[&str]) -> String {
    let r = homelab(db, args);
    assert_eq!(
        r.code, 0,
        "homelab {args:?} failed:\n{}{}",
        r.stdout, r.stderr
    );
    r.stdout
}

fn ex(name: &str) -> String {
    examples().join(name).display().to_string()
}

/// The whole operator flow; `db` is a SQLite or Postgres URL.
fn operator_flow(db: &str, dir: &Path) {
    let out = ok(db, &["db", "migrate"]);
    assert!(out.contains("up to date (schema version 11)"), "{out}");

    let out = ok(db, &["registry", "import", &ex("system.yaml")]);
    assert!(out.contains("read as system.yaml"), "{out}");
    assert!(out.contains("+ handle chat"), "{out}");
    let out = ok(db, &["registry", "import", &ex("handles.jsonl")]);
    assert!(out.contains("read as handles.jsonl"), "{out}");
    let r = homelab(db, &["registry", "import", &ex("litellm-config.yaml")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("read as LiteLLM config.yaml"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("general_settings"),
        "{}",
        r.stderr
    );

    // Nothing has been probed yet: every active service is unknown, planned ones say so.
    let out = ok(db, &["status"]);
    assert!(out.starts_with("homelab-llm: unknown"), "{out}");
    assert!(
        out.contains("\ngateway\n") && out.contains("\nhandles\n"),
        "{out}"
    );
    let st: Value = serde_json::from_str(&ok(db, &["status", "--json"])).unwrap();
    assert_eq!(st["status"], "unknown");
    let services = st["services"].as_array().unwrap();
    assert!(
        services
            .iter()
            .any(|s| s["service"] == "gateway" && s["status"] == "unknown")
    );
    assert!(services.iter().any(|s| s["status"] == "planned"), "{st}");
    assert!(
        st["handles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["handle"] == "chat")
    );

    let handles: Value =
        serde_json::from_str(&ok(db, &["registry", "list", "handles", "--json"])).unwrap();
    let names: Vec<_> = handles
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["handle"].as_str().unwrap())
        .collect();
    // handles.jsonl replaced `chat` (the file is the truth for what it lists).
    assert_eq!(
        names,
        ["apple", "big", "chat", "fast", "gpt-4o-mini", "spread"]
    );
    let chat = handles
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["handle"] == "chat")
        .unwrap();
    assert_eq!(chat["targets"].as_array().unwrap().len(), 2);

    let models = ok(db, &["registry", "list", "models"]);
    let first_model_line = models
        .lines()
        .find(|l| l.contains("mlx-community"))
        .unwrap();
    assert!(
        first_model_line.contains("Qwen2.5-32B"),
        "largest footprint first:\n{models}"
    );
    assert!(models.contains("64.0 GiB"), "host memory shown:\n{models}");
    for kind in ["hosts", "services", "endpoints"] {
        let t = ok(db, &["registry", "list", kind]);
        assert!(t.lines().count() > 3, "{kind}:\n{t}");
    }

    // Export both formats; re-importing an export changes nothing.
    let yaml_path = dir.join("export.yaml");
    ok(
        db,
        &[
            "registry",
            "export",
            "--format",
            "yaml",
            "--out",
            yaml_path.to_str().unwrap(),
        ],
    );
    let jsonl = ok(db, &["registry", "export", "--format", "jsonl"]);
    assert_eq!(jsonl.lines().count(), 6);
    let jsonl_path = dir.join("export.jsonl");
    std::fs::write(&jsonl_path, &jsonl).unwrap();
    let again = ok(db, &["registry", "import", yaml_path.to_str().unwrap()]);
    assert!(again.contains("0 created, 0 updated"), "{again}");
    let again = ok(db, &["registry", "import", jsonl_path.to_str().unwrap()]);
    assert!(again.contains("0 created, 0 updated"), "{again}");

    // A broken file: one-line error naming file, line and field; non-zero exit; no change.
    let before = ok(db, &["registry", "export"]);
    let broken = dir.join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"handle\":\"fresh\",\"targets\":[{\"endpoint\":\"mini-ov\",\"model\":\"m\"}]}\n{\"handle\":\"bad\",\"targets\":[{\"endpoint\":\"mini-ov\",\"model\":\"m\",\"colour\":\"red\"}]}\n",
    )
    .unwrap();
    let r = homelab(db, &["registry", "import", broken.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!(
            "error: {}:2: targets[0].colour: unknown field `colour`",
            broken.display()
        )),
        "{}",
        r.stderr
    );
    let missing = dir.join("missing.yaml");
    std::fs::write(
        &missing,
        "handles:\n  - handle: fresh\n    targets:\n      - endpoint: nowhere\n        model: m\n",
    )
    .unwrap();
    let r = homelab(db, &["registry", "import", missing.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(
            "missing.yaml:4: handles[0].targets[0].endpoint: endpoint `nowhere` does not exist"
        ),
        "{}",
        r.stderr
    );
    let secret = dir.join("secret.yaml");
    std::fs::write(&secret, "model_list:\n  - model_name: x\n    litellm_params:\n      model: openai/x\n      api_base: http://h:1/v1\n      api_key: sk-abc\n").unwrap();
    let r = homelab(db, &["registry", "import", secret.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("secret.yaml:6:") && r.stderr.contains("os.environ/NAME"),
        "{}",
        r.stderr
    );
    assert_eq!(
        ok(db, &["registry", "export"]),
        before,
        "failed imports changed nothing"
    );

    // A dry run shows the change and writes nothing.
    let dry = dir.join("dry.yaml");
    std::fs::write(&dry, "hosts:\n  - name: mini\n    memory_bytes: 64 GiB\n").unwrap();
    let out = ok(
        db,
        &["registry", "import", "--dry-run", dry.to_str().unwrap()],
    );
    assert!(
        out.contains("~ host mini") && out.contains("memory_bytes: 34359738368 → 68719476736"),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(ok(db, &["registry", "export"]), before);

    // Keys: the secret is the last line, shown once; list never shows it.
    let out = ok(
        db,
        &[
            "keys",
            "create",
            "--name",
            "phone",
            "--handles",
            "chat,fast",
            "--rpm",
            "30",
        ],
    );
    let key = out.lines().last().unwrap().to_owned();
    assert!(key.starts_with("sk-hl-") && key.len() > 40, "{out}");
    let list = ok(db, &["keys", "list"]);
    assert!(list.contains("phone") && !list.contains(&key), "{list}");
    let list: Value = serde_json::from_str(&ok(db, &["keys", "list", "--json"])).unwrap();
    assert_eq!(
        list[0]["allowed_handles"],
        serde_json::json!(["chat", "fast"])
    );
    let r = homelab(db, &["keys", "create", "--name", "x", "--handles", "nope"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("handle `nope` does not exist"),
        "{}",
        r.stderr
    );
    assert!(ok(db, &["keys", "revoke", "phone"]).contains("revoked key `phone`"));
    let r = homelab(db, &["keys", "revoke", "phone"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("live key `phone` does not exist"),
        "{}",
        r.stderr
    );
}

#[test]
fn operator_flow_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    // A nested folder that does not exist yet: the DB and its folder are created.
    let db = format!(
        "sqlite://{}/var/nested/system-docs.db",
        dir.path().display()
    );
    operator_flow(&db, dir.path());
    assert!(dir.path().join("var/nested/system-docs.db").exists());
}

#[test]
fn operator_flow_on_postgres() {
    let base = std::env::var("HOMELAB_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let schema = format!("homelab_cli_{}", std::process::id());
    let created = rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&base).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut c)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut c)
            .await?;
        Ok::<_, sqlx::Error>(())
    });
    if let Err(e) = created {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but Postgres at {base} is unreachable: {e}");
        }
        return; // no Postgres here, outside CI
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let db = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    operator_flow(&db, dir.path());
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut c)
            .await
            .unwrap();
    });
}

#[test]
fn unreachable_db_is_one_clear_line() {
    let r = homelab(
        "postgres://postgres:hunter2@127.0.0.1:1/none",
        &["registry", "list", "hosts"],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(
            "error: cannot open the database at postgres://postgres:***@127.0.0.1:1/none"
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("hunter2"));
    let r = homelab("mysql://x/y", &["db", "migrate"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("unsupported database URL"),
        "{}",
        r.stderr
    );
}

#[test]
fn missing_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/db.sqlite", dir.path().display());
    let r = homelab(&db, &["registry", "import", "/no/such/file.yaml"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("error: /no/such/file.yaml: No such file"),
        "{}",
        r.stderr
    );
}

/// Environment variables as a shell reads the file (`set -a; . FILE`), which is how systemd's
/// `EnvironmentFile=` and python-dotenv read single-quoted values too.
fn sourced(file: &Path) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg("set -a; . \"$1\"; env -0")
        .arg("sh")
        .arg(file)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Every tool-server entry has Open WebUI 0.12.4's shape (`ToolServerConnection` plus
/// `info.id`, which its MCP code looks up) and holds no secret.
fn check_tool_servers(json: &str) -> Vec<Value> {
    let entries: Vec<Value> = serde_json::from_str(json).unwrap();
    for e in &entries {
        assert_eq!(e["type"], "mcp", "{e}");
        let url = e["url"].as_str().unwrap();
        assert!(url.starts_with("http://") && url.ends_with("/mcp"), "{e}");
        assert!(
            e["path"].is_string() && e["config"]["enable"] == true,
            "{e}"
        );
        assert!(
            ["none", "bearer"].contains(&e["auth_type"].as_str().unwrap()),
            "{e}"
        );
        assert_eq!(e["key"], "", "no secret in a tool entry: {e}");
        assert!(
            e["info"]["id"].is_string() && e["info"]["name"].is_string(),
            "{e}"
        );
    }
    entries
}

#[test]
fn openwebui_env_is_filled_from_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/system-docs.db", dir.path().display());
    let reg = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stack.yaml");
    ok(&db, &["registry", "import", reg.to_str().unwrap()]);

    let file = dir.path().join("open-webui.env");
    let r = homelab(
        &db,
        &[
            "openwebui",
            "env",
            "--key",
            "open-webui",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("made key `open-webui`"), "{}", r.stderr);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the file holds a key");
    let env = sourced(&file);
    let key = env["OPENAI_API_KEY"].clone();
    assert!(key.len() > 20, "a real key: {key}");
    let listed = ok(&db, &["keys", "list", "--json"]);
    assert!(listed.contains("\"open-webui\""), "{listed}");
    for (k, v) in [
        ("OPENAI_API_BASE_URL", "http://127.0.0.1:4000/v1"),
        ("ENABLE_OLLAMA_API", "False"),
        ("ENABLE_PERSISTENT_CONFIG", "False"),
        ("ENABLE_DIRECT_CONNECTIONS", "False"),
        ("ENABLE_FORWARD_USER_INFO_HEADERS", "True"),
        ("DEFAULT_MODELS", "local"),
        ("TASK_MODEL_EXTERNAL", "tasks"),
        ("RAG_EMBEDDING_ENGINE", "openai"),
        ("RAG_OPENAI_API_BASE_URL", "http://127.0.0.1:4000/v1"),
        ("RAG_EMBEDDING_MODEL", "embed"),
        ("VECTOR_DB", "qdrant"),
        ("QDRANT_URI", "http://127.0.0.1:4030"),
        ("ENABLE_WEB_SEARCH", "True"),
        ("WEB_SEARCH_ENGINE", "external"),
        (
            "EXTERNAL_WEB_SEARCH_URL",
            "http://127.0.0.1:4000/v1/search/openwebui",
        ),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(env["RAG_OPENAI_API_KEY"], key);
    assert_eq!(env["EXTERNAL_WEB_SEARCH_API_KEY"], key);
    let tools = check_tool_servers(&env["TOOL_SERVER_CONNECTIONS"]);
    let ids: Vec<&str> = tools
        .iter()
        .map(|t| t["info"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["home-assistant", "web-fetch", "web-search"],
        "by name"
    );
    assert!(tools.iter().all(|t| t["auth_type"] == "none"));
    assert_eq!(
        tools[1]["config"]["access_grants"][0]["principal_id"], "*",
        "the web tools are for every user"
    );
    assert!(
        tools[0]["config"].get("access_grants").is_none(),
        "switching the house is for admins"
    );
    assert_eq!(
        tools[0]["info"]["description"],
        "Home Assistant's lights and switches, the owner's allow-list",
        "an apostrophe survives the quoting"
    );
    // Open WebUI is registered for the monitor to probe.
    let services = ok(&db, &["registry", "list", "services", "--json"]);
    let services: Value = serde_json::from_str(&services).unwrap();
    let owui = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "open-webui")
        .unwrap_or_else(|| panic!("{services}"));
    assert_eq!(owui["layer"], "interface");
    assert_eq!(owui["base_url"], "http://127.0.0.1:3000");
    assert_eq!(owui["health_path"], "/health");

    // Again: the secret cannot be shown twice, so the same name is refused…
    let r = homelab(&db, &["openwebui", "env", "--key", "open-webui"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--rotate") && r.stdout.is_empty(),
        "{}",
        r.stderr
    );
    // …unless rotated: a new key, the old one revoked. With keyed tools, entries ask for a
    // bearer key that is left to fill in.
    let r = homelab(
        &db,
        &[
            "openwebui",
            "env",
            "--key",
            "open-webui",
            "--rotate",
            "--keyed-tools",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let again = dir.path().join("again.env");
    std::fs::write(&again, &r.stdout).unwrap();
    let env2 = sourced(&again);
    assert_ne!(env2["OPENAI_API_KEY"], key);
    let tools = check_tool_servers(&env2["TOOL_SERVER_CONNECTIONS"]);
    assert!(tools.iter().all(|t| t["auth_type"] == "bearer"));
    let keys: Value = serde_json::from_str(&ok(&db, &["keys", "list", "--json"])).unwrap();
    let live = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "open-webui" && k["revoked_at_ms"].is_null())
        .count();
    assert_eq!(live, 1);

    // Without a registered gateway there is nothing to point at.
    let empty = format!("sqlite://{}/empty.db", dir.path().display());
    let r = homelab(&empty, &["openwebui", "env", "--key", "x"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no gateway is registered"),
        "{}",
        r.stderr
    );
}

/// The example in layer-interface/open-webui parses the same way, and its tool entries hold
/// no secret.
#[test]
fn the_open_webui_env_example_parses() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../layer-interface/open-webui/open-webui.env.example");
    let env = sourced(&file);
    assert_eq!(env["OPENAI_API_BASE_URL"], "http://127.0.0.1:4000/v1");
    assert!(
        !env["OPENAI_API_KEY"].starts_with("sk-"),
        "a placeholder, not a key"
    );
    let tools = check_tool_servers(&env["TOOL_SERVER_CONNECTIONS"]);
    assert!(!tools.is_empty());
}
