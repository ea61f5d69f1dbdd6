//! The SSRF guard: every address class and spelling is refused by a default web-fetch (no
//! allow-list), over real MCP sessions; the allow-list opens exactly what it names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::str::FromStr;

use reqwest::dns::{Name, Resolve};
use serde_json::json;
use testkit::mcp::{McpClient, is_error, text};
use web_fetch::guard::{AllowRule, Guard, GuardedResolver, special_class};

#[tokio::test]
async fn every_private_class_and_spelling_is_refused() {
    // A live site on loopback, so a refusal cannot be a connection failure in disguise.
    let site = common::site().await;
    let port = site.port();
    let mut s = common::session(|c| c.allow_hosts.clear()).await;
    let cases = [
        (format!("http://127.0.0.1:{port}/article"), "loopback"),
        (format!("http://localhost:{port}/article"), "loopback"),
        (format!("http://LOCALHOST.:{port}/article"), "loopback"),
        (format!("http://2130706433:{port}/article"), "loopback"), // decimal
        (format!("http://0x7f000001:{port}/article"), "loopback"), // hex
        (format!("http://0177.0.0.1:{port}/article"), "loopback"), // octal
        (format!("http://0x7f.1:{port}/article"), "loopback"),     // mixed, short
        (format!("http://127.1:{port}/article"), "loopback"),      // short form
        (format!("http://[::1]:{port}/article"), "loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/article"),
            "loopback",
        ), // IPv4-mapped
        (format!("http://[::ffff:7f00:1]:{port}/article"), "loopback"), // mapped, hex
        (
            format!("http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/"),
            "loopback",
        ),
        ("http://10.1.2.3/".into(), "private"),
        ("http://172.16.5.4/".into(), "private"),
        ("http://172.31.255.255/".into(), "private"),
        ("http://192.168.1.1/".into(), "private"),
        ("http://3232235777/".into(), "private"), // 192.168.1.1, decimal
        ("http://[::ffff:192.168.1.1]/".into(), "private"),
        ("http://169.254.10.20/".into(), "link-local"),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "cloud-metadata",
        ),
        ("http://0xa9fea9fe/".into(), "cloud-metadata"), // 169.254.169.254, hex
        ("http://100.100.100.200/".into(), "cloud-metadata"),
        ("http://168.63.129.16/".into(), "cloud-metadata"),
        ("http://[fd00:ec2::254]/".into(), "cloud-metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/".into(), "cloud-metadata"), // NAT64 of it
        (
            "http://metadata.google.internal/computeMetadata/v1/".into(),
            "cloud-metadata",
        ),
        ("http://100.64.0.1/".into(), "CGNAT"),
        ("http://100.127.255.254/".into(), "CGNAT"),
        ("http://224.0.0.251/".into(), "multicast"),
        ("http://[ff02::1]/".into(), "multicast"),
        ("http://0.0.0.0/".into(), "unspecified"),
        ("http://0/".into(), "unspecified"),
        ("http://[::]/".into(), "unspecified"),
        ("http://[fe80::1]/".into(), "link-local"),
        ("http://[fc00::1]/".into(), "private"),
        ("http://[fd12:3456::1]/".into(), "private"),
        ("http://[2002:7f00:1::]/".into(), "loopback"), // 6to4 of 127.0.0.1
        ("http://[::127.0.0.1]/".into(), "loopback"),   // IPv4-compatible
        ("http://255.255.255.255/".into(), "broadcast"),
        ("http://240.0.0.1/".into(), "reserved"),
    ];
    for (url, class) in &cases {
        let r = s.call("fetch", json!({"url": url})).await;
        assert!(is_error(&r), "{url} was not refused: {r}");
        let t = text(&r);
        assert!(
            t.contains("refused to connect") && t.contains(class),
            "{url}: want a {class} refusal, got {t}"
        );
    }
}

#[tokio::test]
async fn names_are_checked_by_the_addresses_they_resolve_to() {
    // This machine's own name resolves through the system resolver (to loopback or a
    // private address in a container, or a public one elsewhere); the resolver the client
    // connects with must refuse exactly the non-public answers.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_else(|_| "localhost".into())
        .trim()
        .to_owned();
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .map(|a| a.map(|s| s.ip()).collect())
        .unwrap_or_default();
    if addrs.is_empty() {
        // A name with no address fails to resolve either way.
        return;
    }
    let resolver = GuardedResolver {
        guard: std::sync::Arc::new(Guard::default()),
    };
    let got = resolver.resolve(Name::from_str(&host).unwrap()).await;
    let special = addrs.iter().find(|ip| special_class(**ip).is_some());
    match (special, got) {
        (Some(ip), Err(e)) => {
            let e = e.to_string();
            assert!(e.contains(&ip.to_string()) || e.contains("loopback"), "{e}");
        }
        (None, Ok(resolved)) => {
            let resolved: Vec<IpAddr> = resolved.map(|s| s.ip()).collect();
            assert_eq!(
                resolved, addrs,
                "the client connects to the checked addresses"
            );
        }
        (Some(ip), Ok(_)) => panic!("{host} resolves to {ip}, yet the resolver passed it"),
        (None, Err(e)) => panic!("{host} resolves to public {addrs:?}, yet: {e}"),
    }

    // Allow-listing the name opens it, whatever it resolves to; so does its address range.
    let by_name = GuardedResolver {
        guard: std::sync::Arc::new(Guard::new(vec![AllowRule::from_str(&host).unwrap()])),
    };
    let resolved: Vec<IpAddr> = by_name
        .resolve(Name::from_str(&host).unwrap())
        .await
        .unwrap()
        .map(|s| s.ip())
        .collect();
    assert_eq!(resolved, addrs);
}

#[tokio::test]
async fn the_allow_list_opens_only_what_it_names() {
    let site = common::site().await;
    let port = site.port();
    // 127.0.0.1 by range: the address works, the name `localhost` does not.
    let mut s = common::session(|_| {}).await;
    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://127.0.0.1:{port}/data.json")}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://127.0.0.2:{port}/data.json")}),
        )
        .await;
    assert!(text(&r).contains("refused to connect"), "{r}");
    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://localhost:{port}/data.json")}),
        )
        .await;
    assert!(text(&r).contains("refused to connect"), "{r}");
    // By name: `localhost` works.
    let mut s =
        common::session(|c| c.allow_hosts = vec![AllowRule::from_str("localhost").unwrap()]).await;
    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://localhost:{port}/data.json")}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    // A wider range covers IPv4-mapped spellings of its addresses too.
    let mut s =
        common::session(|c| c.allow_hosts = vec![AllowRule::from_str("127.0.0.0/8").unwrap()])
            .await;
    let r = s
        .call(
            "fetch",
            json!({"url": format!("http://[::ffff:127.0.0.1]:{port}/data.json")}),
        )
        .await;
    assert!(!text(&r).contains("refused to connect"), "{r}");
}
