//! The official OpenAI Python SDK against a real gateway (`pip install openai`).
//! Outside CI, a machine without Python or the SDK skips this with a note; with `CI=true`
//! it fails instead.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use common::{Gateway, handle, spec, target};
use docsdb::spec::Strategy;
use testkit::upstream::MockUpstream;

fn sdk_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_works_against_the_gateway() {
    if !sdk_available() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but python3 with the openai package is missing (pip install openai)");
        }
        eprintln!("note: python3 -c 'import openai' failed; skipping the SDK test");
        return;
    }
    let up = MockUpstream::start("a").await;
    let gw = Gateway::start(
        spec(vec![
            handle(
                "chat",
                Strategy::Priority,
                vec![target("a", &up.base_url(), "m")],
            ),
            handle(
                "embed",
                Strategy::Priority,
                vec![target("a", &up.base_url(), "e")],
            ),
        ]),
        |c| c.master_key = Some("sk-master-test".into()),
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk_compat.py");
    let url = format!("{}/v1", gw.url);
    let out = tokio::process::Command::new("python3")
        .args([script, &url, "sk-master-test"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");
}
