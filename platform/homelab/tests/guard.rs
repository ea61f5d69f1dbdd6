//! `up` keeps the guards of the services it composes: beyond loopback it needs a master key
//! (then the gateway and the MCP tools want it) or an explicit --allow-unauthenticated, as
//! the gateway alone does; and a port already taken is named with the flag that moves it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use homelab::Error;
use homelab::up::{ToolsOptions, UpOptions, up};
use serde_json::json;

fn options(data: &std::path::Path, bind_host: &str) -> UpOptions {
    UpOptions {
        bind_host: bind_host.into(),
        no_engine: true,
        tools: ToolsOptions {
            enabled: true,
            ..Default::default()
        },
        vector_db_port: Some(0),
        ..UpOptions::on_loopback(data)
    }
}

/// Runs `up` expecting it to refuse to start.
async fn refused(o: &UpOptions) -> Error {
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        up(o, std::future::pending(), |_| panic!("up started")),
    )
    .await
    .expect("up answers at once");
    res.expect_err("up refuses")
}

/// Reads `up`'s stdout until it says it is up; false if it ended first.
fn until_up(child: &mut std::process::Child) -> bool {
    use std::io::{BufRead, BufReader};
    let stdout = BufReader::new(child.stdout.take().unwrap());
    stdout
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("homelab-llm is up"))
}

#[tokio::test]
async fn beyond_loopback_without_a_master_key_up_refuses_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var");
    for host in ["0.0.0.0", "192.168.1.5"] {
        let e = refused(&options(&data, host)).await;
        assert!(
            matches!(
                e,
                Error::Refused {
                    service: "the gateway",
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        for part in [host, "HOMELAB_MASTER_KEY", "--allow-unauthenticated"] {
            assert!(msg.contains(part), "{msg}");
        }
    }
    assert!(!data.exists(), "nothing was created before the refusal");
}

async fn mcp_status(url: &str, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "guard-test", "version": "1"}}}),
        );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn with_a_master_key_beyond_loopback_the_gateway_and_the_tools_want_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), "0.0.0.0");
    o.master_key = Some("sk-master-guard".into());
    let (r, stop, task) = common::run_up(o).await;
    assert!(r.keyed);
    let gw = format!("http://127.0.0.1:{}", r.gateway.port());
    let models = |key: Option<&'static str>| {
        let mut req = reqwest::Client::new().get(format!("{gw}/v1/models"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(models(None).await, 401);
    assert_eq!(models(Some("sk-wrong")).await, 401);
    assert_eq!(models(Some("sk-master-guard")).await, 200);
    assert_eq!(r.tools.len(), 2, "{:?}", r.tools);
    for (name, url) in &r.tools {
        let port = url.rsplit(':').next().unwrap().trim_end_matches("/mcp");
        let url = format!("http://127.0.0.1:{port}/mcp");
        assert_eq!(mcp_status(&url, None).await, 401, "{name}");
        assert_eq!(
            mcp_status(&url, Some("sk-master-guard")).await,
            200,
            "{name}"
        );
    }
    // The vector store wants the master key too (as `api-key`, the way Qdrant clients send it).
    let vdb = format!(
        "http://127.0.0.1:{}/collections",
        r.vector_db.unwrap().port()
    );
    let c = reqwest::Client::new();
    assert_eq!(c.get(&vdb).send().await.unwrap().status(), 401);
    let keyed = c
        .get(&vdb)
        .header("api-key", "sk-master-guard")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn allow_unauthenticated_opens_beyond_loopback_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), "0.0.0.0");
    o.allow_unauthenticated = true;
    let (r, stop, task) = common::run_up(o).await;
    assert!(!r.keyed);
    let res = reqwest::get(format!("http://127.0.0.1:{}/v1/models", r.gateway.port()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_port_in_use_is_named_with_the_flag_that_moves_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), "127.0.0.1");
    o.gateway_port = port;
    let e = refused(&o).await;
    assert!(matches!(e, Error::Bind { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("gateway cannot listen on 127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(
        msg.contains("another `homelab up`") && msg.contains("--gateway-port"),
        "{msg}"
    );

    let mut o = options(dir.path(), "127.0.0.1");
    o.tools.web_fetch_port = port;
    let msg = refused(&o).await.to_string();
    assert!(msg.starts_with("web-fetch cannot listen"), "{msg}");
    assert!(msg.contains("--web-fetch-port"), "{msg}");
}

/// The services `up` runs beside the gateway and the monitor, each on a free port.
const SERVICE_PORTS: [&str; 6] = [
    "--shortcuts-port",
    "0",
    "--optillm-port",
    "0",
    "--agents-port",
    "0",
];

#[test]
fn logs_written_to_a_pipe_have_no_colour_codes_and_a_refusal_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(["up", "--no-engine", "--no-tools", "--no-data", "--data-dir"])
        .arg(dir.path())
        .args(["--gateway-port", "0", "--monitor-port", "0"])
        .args(SERVICE_PORTS)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("HOMELAB_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let up = until_up(&mut child);
    // A graceful stop: the services log their shutdown before the process ends.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    assert!(up, "up started");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("INFO"), "info lines were logged: {logs}");
    assert!(!logs.contains('\u{1b}'), "no terminal escapes: {logs:?}");

    // Refused beyond loopback: one plain line on stderr, exit status 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args([
            "up",
            "--no-engine",
            "--no-tools",
            "--bind-host",
            "0.0.0.0",
            "--data-dir",
        ])
        .arg(dir.path().join("other"))
        .env_remove("HOMELAB_MASTER_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:4000 without a master key"),
        "{err}"
    );
    assert!(!dir.path().join("other").exists());
}

#[cfg(target_os = "linux")]
#[test]
fn systemd_hears_ready_once_when_everything_is() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(["up", "--no-engine", "--data-dir"])
        .arg(dir.path().join("var"))
        .args(["--gateway-port", "0", "--monitor-port", "0"])
        .args(SERVICE_PORTS)
        .args([
            "--web-fetch-port",
            "0",
            "--web-search-port",
            "0",
            "--vector-db-port",
            "0",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("HOMELAB_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = until_up(&mut child);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(up);
    // Every server listened; one READY=1, sent before the banner.
    sock.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got, ["READY=1"]);
}

/// Without pip (or the package index), `up --model PATH` still runs the chat model: the
/// embedding model is left out with a warning that says how to get it, and the memory service
/// with it; nothing else changes.
#[test]
fn without_pip_the_stack_runs_without_the_embedding_model_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../layer-inference/llm-engine/tests/fixtures/tiny-random-gpt2tok-f16.gguf");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_homelab"))
        .args(["up", "--no-tools", "--model"])
        .arg(&model)
        .arg("--data-dir")
        .arg(dir.path().join("var"))
        .args([
            "--gateway-port",
            "0",
            "--monitor-port",
            "0",
            "--engine-port",
            "0",
        ])
        .args(["--vector-db-port", "0", "--memory-port", "0"])
        .args(SERVICE_PORTS)
        // No python3 to be found.
        .env("PATH", dir.path())
        .env("RUST_LOG", "warn")
        .env_remove("HOMELAB_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, BufReader};
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let banner: Vec<String> = stdout
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("Ctrl-C"))
        .collect();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let banner = banner.join("\n");
    assert!(banner.contains("homelab-llm is up"), "{banner}");
    assert!(
        banner.contains("serving tiny-random-gpt2tok-f16"),
        "{banner}"
    );
    assert!(banner.contains("vector store"), "{banner}");
    assert!(!banner.contains("embeddings"), "{banner}");
    assert!(!banner.contains("memory "), "{banner}");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("running without the embedding model")
            && logs.contains("homelab models pull minilm-l6"),
        "{logs}"
    );
}
