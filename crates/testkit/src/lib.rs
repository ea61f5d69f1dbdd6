//! Test servers standing in for systems that tests cannot run: an OpenAI-compatible model
//! server ([`upstream`]), speech/image/rerank servers ([`media`]), Anthropic's Messages API
//! ([`anthropic`]), SearXNG ([`searxng`]) and Home Assistant ([`home_assistant`]); and
//! [`mcp`], a small MCP client over Streamable HTTP and stdio that shows the wire as it is;
//! [`openwebui`], Open WebUI's recorded traffic; [`models`], real models from registry packages. They speak the real wire formats and can
//! be told, at run time, to be slow, to fail, to compress, or to die half-way through a
//! stream. Every request they receive is recorded for assertions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod anthropic;
pub mod fast;
pub mod home_assistant;
pub mod mcp;
pub mod media;
pub mod models;
pub mod openvino;
pub mod openwebui;
pub mod python;
pub mod searxng;
pub mod upstream;

/// Binds 127.0.0.1:0 and serves `app` in the background; returns the address.
pub async fn spawn(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Waits until `{url}/health` answers 200 (10 s at most); panics naming `what` if it never
/// does.
pub async fn wait_healthy(url: &str, what: &str) {
    for _ in 0..400 {
        if reqwest::get(format!("{url}/health"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{what} never answered {url}/health");
}

/// A binary of another workspace package, built beside the running test by
/// `cargo test --workspace` (Cargo gives a test only its own package's binaries).
pub fn sibling_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is not built; run the workspace's tests (cargo test --workspace)",
        bin.display()
    );
    bin
}
