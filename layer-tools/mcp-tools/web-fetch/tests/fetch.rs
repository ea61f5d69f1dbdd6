//! The `fetch` tool against a local test site, over real MCP sessions on HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use serde_json::json;
use testkit::mcp::{McpClient, is_error, text};

#[tokio::test]
async fn html_article_becomes_markdown_without_the_page_furniture() {
    let site = common::site().await;
    let mut s = common::session(|_| {}).await;
    let r = s
        .call("fetch", json!({"url": format!("http://{site}/article")}))
        .await;
    assert!(!is_error(&r), "{r}");
    let t = text(&r);
    assert!(
        t.starts_with(&format!("Contents of http://{site}/article:\n")),
        "{t}"
    );
    assert!(t.contains("# Otters of the River"), "{t}");
    assert!(t.contains("## Where they live"), "{t}");
    assert!(t.contains("River otters are semi-aquatic mammals"), "{t}");
    for noise in [
        "HOME-NAV-LINK",
        "SIDEBAR-AD",
        "FOOTER-COPYRIGHT",
        "TRACKER_SCRIPT",
        "<p>",
    ] {
        assert!(!t.contains(noise), "{noise} leaked into:\n{t}");
    }

    // raw: the HTML as it is.
    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://{site}/article"), "raw": true, "max_length": 100000}),
        )
        .await;
    let t = text(&r);
    assert!(t.contains("<nav><a href=\"/\">HOME-NAV-LINK</a>"), "{t}");

    // gzip-encoded bodies are decoded.
    let r = s
        .call("fetch", json!({"url": format!("http://{site}/gz")}))
        .await;
    assert!(
        text(&r).contains("River otters are semi-aquatic mammals"),
        "{r}"
    );
}

#[tokio::test]
async fn long_pages_come_in_parts() {
    let site = common::site().await;
    let mut s = common::session(|_| {}).await;
    let url = format!("http://{site}/long");
    let whole = common::long_text();
    let mut read = String::new();
    let mut start = 0;
    let mut calls = 0;
    loop {
        let r = s
            .call("fetch", json!({"url": url, "start_index": start}))
            .await;
        assert!(!is_error(&r), "{r}");
        let t = text(&r);
        let body = t.strip_prefix(&format!("Contents of {url}:\n")).unwrap();
        calls += 1;
        match body
            .split_once("\n\n<error>Content truncated. Call the fetch tool with a start_index of ")
        {
            Some((part, rest)) => {
                read.push_str(part);
                let next: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
                assert_eq!(next, start + part.chars().count());
                start = next;
            }
            None => {
                read.push_str(body);
                break;
            }
        }
    }
    assert_eq!(calls, 3, "12,000 characters in parts of 5,000");
    assert_eq!(read, whole);

    let r = s
        .call("fetch", json!({"url": url, "start_index": 12_000}))
        .await;
    assert!(is_error(&r));
    assert!(text(&r).contains("No more content available"), "{r}");
    let r = s.call("fetch", json!({"url": url, "max_length": 0})).await;
    assert!(is_error(&r));
    assert!(text(&r).contains("max_length must be between 1 and"), "{r}");
}

#[tokio::test]
async fn redirects_are_followed_within_the_limit_and_checked_at_every_hop() {
    let site = common::site().await;
    let mut s = common::session(|c| c.max_redirects = 3).await;
    let r = s
        .call("fetch", json!({"url": format!("http://{site}/redirect")}))
        .await;
    assert!(!is_error(&r), "{r}");
    assert!(
        text(&r).starts_with(&format!(
            "Contents of http://{site}/article (redirected from http://{site}/redirect):"
        )),
        "{r}"
    );

    let r = s
        .call("fetch", json!({"url": format!("http://{site}/loop")}))
        .await;
    assert!(is_error(&r));
    assert!(text(&r).contains("gave up after 3 redirects"), "{r}");

    // From the allow-listed host to private ones: refused before anything is sent there.
    for (path, class) in [
        ("/to-metadata", "cloud-metadata"),
        ("/to-localhost", "loopback"),
        ("/to-mapped", "private"),
    ] {
        let r = s
            .call("fetch", json!({"url": format!("http://{site}{path}")}))
            .await;
        assert!(is_error(&r), "{path}: {r}");
        let t = text(&r);
        assert!(
            t.contains("refused to connect") && t.contains(class),
            "{path}: {t}"
        );
    }
    let r = s
        .call("fetch", json!({"url": format!("http://{site}/to-file")}))
        .await;
    assert!(is_error(&r));
    assert!(text(&r).contains("only http and https"), "{r}");
}

#[tokio::test]
async fn robots_txt_is_honoured_unless_turned_off() {
    let site = common::site().await;
    let url = format!("http://{site}/private/page");
    let mut s = common::session(|_| {}).await;
    let r = s.call("fetch", json!({"url": url})).await;
    assert!(is_error(&r));
    let t = text(&r);
    assert!(
        t.contains("robots.txt") && t.contains("does not allow"),
        "{t}"
    );
    assert!(!t.contains("SECRET-BEHIND-ROBOTS"));
    // Pages robots.txt does not mention are fine.
    let r = s
        .call("fetch", json!({"url": format!("http://{site}/data.json")}))
        .await;
    assert!(!is_error(&r), "{r}");

    let mut s = common::session(|c| c.ignore_robots_txt = true).await;
    let r = s.call("fetch", json!({"url": url})).await;
    assert!(!is_error(&r), "{r}");
    assert!(text(&r).contains("SECRET-BEHIND-ROBOTS"));
}

#[tokio::test]
async fn content_types_binary_json_status_and_size() {
    let site = common::site().await;
    let mut s = common::session(|c| c.max_bytes = 1 << 20).await;

    let r = s
        .call("fetch", json!({"url": format!("http://{site}/image.png")}))
        .await;
    assert!(is_error(&r));
    let t = text(&r);
    assert!(t.contains("binary content (image/png)"), "{t}");

    let r = s
        .call("fetch", json!({"url": format!("http://{site}/data.json")}))
        .await;
    assert!(!is_error(&r));
    assert!(text(&r).ends_with(r#"{"otters":3,"river":"Isar"}"#), "{r}");

    let r = s
        .call("fetch", json!({"url": format!("http://{site}/missing")}))
        .await;
    assert!(is_error(&r));
    assert!(text(&r).contains("status 404"), "{r}");

    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://{site}/big"), "start_index": (1 << 20) - 10}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    let t = text(&r);
    assert!(
        t.contains("xxxxxxxxxx\n\n<error>The page is longer than 1048576 bytes"),
        "{t}"
    );
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let site = common::site().await;
    let mut s = common::session(|c| c.timeout = Duration::from_millis(500)).await;
    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://{site}/slow"), "max_length": 10}),
        )
        .await;
    assert!(is_error(&r));
    assert!(text(&r).contains("timed out after 500ms"), "{r}");
}

#[tokio::test]
async fn bad_urls_are_tool_errors() {
    let mut s = common::session(|_| {}).await;
    for (url, want) in [
        ("not a url", "invalid URL"),
        ("ftp://example.com/file", "only http and https"),
        ("http://user:pw@example.com/", "credentials"),
    ] {
        let r = s.call("fetch", json!({"url": url})).await;
        assert!(is_error(&r), "{url}");
        assert!(text(&r).contains(want), "{url}: {r}");
    }
}
