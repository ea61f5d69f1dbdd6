//! A local test site, and web-fetch started over real HTTP in front of it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use testkit::mcp::McpHttp;
use web_fetch::Config;
use web_fetch::guard::AllowRule;

pub const ARTICLE: &str = r#"<!DOCTYPE html>
<html><head><title>Otters of the River</title></head>
<body>
<header><nav><a href="/">HOME-NAV-LINK</a> <a href="/about">ABOUT-NAV-LINK</a></nav></header>
<aside class="sidebar"><ul><li><a href="/ads">SIDEBAR-AD</a></li></ul></aside>
<main><article>
<h1>Otters of the River</h1>
<p>River otters are semi-aquatic mammals that live along rivers, lakes and coasts. They are
playful, curious and strong swimmers, able to stay under water for several minutes while they
hunt for fish, crayfish and frogs among the stones of the riverbed.</p>
<h2>Where they live</h2>
<p>Otters dig dens in the banks, often with an entrance below the water line, and line them
with grass and leaves. A family group shares a stretch of river and marks it with scent, and
the young stay with their mother for about a year before they leave to find their own river.</p>
<p>Their thick fur keeps them warm: it traps a layer of air that the otter grooms for hours
every day. Without that care the fur would soak through, and the animal would lose its heat
quickly in the cold water where it spends most of its waking time.</p>
<script>var TRACKER_SCRIPT = 1;</script>
</article></main>
<footer>FOOTER-COPYRIGHT 2026</footer>
</body></html>"#;

/// 12,000 characters of numbered lines.
pub fn long_text() -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < 12_000 {
        s.push_str(&format!("line {i:05} of the long page.....\n"));
        i += 1;
    }
    s.truncate(12_000);
    s
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

/// The site: an article with page furniture, a long page, redirects, robots.txt, binary and
/// JSON content, a slow page, a big page, a gzip-encoded page.
pub async fn site() -> SocketAddr {
    let app = Router::new()
        .route(
            "/robots.txt",
            get(|| async {
                "User-agent: *\nDisallow: /private/\n\nUser-agent: otherbot\nDisallow: /\n"
            }),
        )
        .route(
            "/article",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    ARTICLE,
                )
            }),
        )
        .route(
            "/private/page",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain")],
                    "SECRET-BEHIND-ROBOTS",
                )
            }),
        )
        .route(
            "/long",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    long_text(),
                )
            }),
        )
        .route("/redirect", get(|| async { Redirect::to("/article") }))
        .route("/loop", get(|| async { Redirect::to("/loop") }))
        .route(
            "/to-metadata",
            get(|| async { Redirect::to("http://169.254.169.254/latest/meta-data/") }),
        )
        .route(
            "/to-localhost",
            get(|headers: HeaderMap| async move {
                let host = headers
                    .get(header::HOST)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                let port = host.rsplit(':').next().unwrap().to_owned();
                Redirect::to(&format!("http://localhost:{port}/article"))
            }),
        )
        .route(
            "/to-mapped",
            get(|| async { Redirect::to("http://[::ffff:10.0.0.1]/") }),
        )
        .route(
            "/to-file",
            get(|| async { Redirect::to("file:///etc/passwd") }),
        )
        .route(
            "/image.png",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
                )
            }),
        )
        .route(
            "/data.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"otters":3,"river":"Isar"}"#,
                )
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .route(
            "/big",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "x".repeat(3 << 20)) }),
        )
        .route(
            "/gz",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/html"),
                        (header::CONTENT_ENCODING, "gzip"),
                    ],
                    gzip(ARTICLE.as_bytes()),
                )
            }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no such page").into_response() }),
        );
    testkit::spawn(app).await
}

/// web-fetch allowing the test site's loopback address (and only it), with these tweaks.
pub fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config {
        allow_hosts: vec![AllowRule::Net("127.0.0.1/32".parse().unwrap())],
        ..Config::default()
    };
    tweak(&mut c);
    c
}

/// Starts web-fetch's HTTP app on 127.0.0.1:0; the `/mcp` URL.
pub async fn start(config: &Config, opts: &mcp_kit::HttpOptions) -> String {
    let app = web_fetch::app(config, opts).unwrap();
    let addr = testkit::spawn(app).await;
    format!("http://{addr}/mcp")
}

pub fn opts() -> mcp_kit::HttpOptions {
    mcp_kit::HttpOptions::from_args(&mcp_kit::McpArgs::default()).unwrap()
}

/// A session with web-fetch configured by `tweak`.
pub async fn session(tweak: impl FnOnce(&mut Config)) -> McpHttp {
    let url = start(&config(tweak), &opts()).await;
    McpHttp::connect(url, None).await
}
