//! The official OpenAI Python SDK against a real gateway (`pip install openai`).
//! Outside CI, a machine without Python or the SDK skips this with a note; with `CI=true`
//! it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Gateway, handle, spec, target};
use docsdb::spec::Strategy;
use testkit::upstream::MockUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_works_against_the_gateway() {
    if !common::python_module("openai") {
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
    let url = format!("{}/v1", gw.url);
    let stdout = common::python_script("openai_sdk_compat.py", &[&url, "sk-master-test"]).await;
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");
}
