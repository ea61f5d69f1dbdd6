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
    assert!(out.contains("up to date (schema version 5)"), "{out}");

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
    assert_eq!(names, ["big", "chat", "fast", "gpt-4o-mini", "spread"]);
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
    assert_eq!(jsonl.lines().count(), 5);
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
