//! The folder tree tells the architecture, and the dependencies keep to it: `crates/` is the
//! ground floor (shared libraries that depend only on each other), a service in a layer does
//! not depend on another service (only on `crates/` and its own layer's libraries, crates
//! without a binary such as llm-engine and engine-server), and only `platform/` composes
//! services. Read from `cargo metadata`, so a new shortcut fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;

/// One workspace package: its folder (relative to the workspace), whether it has a binary,
/// and the folders of the path dependencies it names (normal, dev and build).
struct Package {
    name: String,
    dir: PathBuf,
    has_bin: bool,
    deps: Vec<(String, PathBuf)>,
}

fn packages() -> Vec<Package> {
    let m: Value = common::workspace_metadata();
    let root = PathBuf::from(m["workspace_root"].as_str().unwrap());
    let rel = |p: &str| Path::new(p).strip_prefix(&root).unwrap().to_path_buf();
    m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Package {
            name: p["name"].as_str().unwrap().to_owned(),
            dir: rel(p["manifest_path"].as_str().unwrap())
                .parent()
                .unwrap()
                .to_path_buf(),
            has_bin: p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin")),
            deps: p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|d| Some((d["name"].as_str()?.to_owned(), rel(d["path"].as_str()?))))
                .collect(),
        })
        .collect()
}

/// The top folder a package lives in: `crates`, `platform` or a `layer-*`.
fn floor(dir: &Path) -> String {
    dir.components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned()
}

/// What is wrong with the tree, one line per broken rule.
fn violations(packages: &[Package]) -> Vec<String> {
    let by_dir = |d: &Path| packages.iter().find(|p| p.dir == d);
    let mut out = Vec::new();
    for p in packages {
        let here = floor(&p.dir);
        for (name, dir) in &p.deps {
            // A package's dev-dependency on itself turns its optional features on in its
            // tests: no layer crossed.
            if dir == &p.dir {
                continue;
            }
            let there = floor(dir);
            let ok = match here.as_str() {
                "crates" => there == "crates",
                "platform" => true,
                _ if there == "crates" => true,
                // A service may use its own layer's libraries, never another service.
                _ => there == here && by_dir(dir).is_some_and(|d| !d.has_bin),
            };
            if !ok {
                out.push(format!(
                    "{} ({}) depends on {name} ({})",
                    p.name,
                    p.dir.display(),
                    dir.display()
                ));
            }
        }
    }
    out
}

#[test]
fn crates_is_the_ground_floor_and_services_do_not_depend_on_services() {
    let packages = packages();
    assert!(
        packages.iter().any(|p| p.name == "homelab"),
        "the workspace was read"
    );
    let broken = violations(&packages);
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
    let ground: Vec<&str> = packages
        .iter()
        .filter(|p| floor(&p.dir) == "crates")
        .map(|p| p.name.as_str())
        .collect();
    for p in &packages {
        if floor(&p.dir) == "crates" {
            assert!(!p.has_bin, "{} under crates/ is a library", p.name);
        }
    }
    assert!(ground.contains(&"contract") && ground.contains(&"docsdb"));
}

#[test]
fn the_rules_catch_each_shortcut() {
    let pkg = |name: &str, dir: &str, has_bin: bool, deps: &[(&str, &str)]| Package {
        name: name.into(),
        dir: dir.into(),
        has_bin,
        deps: deps
            .iter()
            .map(|(n, d)| ((*n).into(), PathBuf::from(d)))
            .collect(),
    };
    let tree = [
        pkg("contract", "crates/contract", false, &[]),
        pkg("llm-engine", "layer-inference/llm-engine", false, &[]),
        // Its tests turning its own features on.
        pkg(
            "gateway",
            "layer-gateway/gateway",
            true,
            &[("gateway", "layer-gateway/gateway")],
        ),
        // crates/ reaching up, a service using another layer's library, a service using a
        // service of its own layer: each one line.
        pkg(
            "kit",
            "crates/kit",
            false,
            &[("gateway", "layer-gateway/gateway")],
        ),
        pkg(
            "monitor",
            "layer-gateway/monitor",
            true,
            &[("gateway", "layer-gateway/gateway")],
        ),
        pkg(
            "tool",
            "layer-tools/tool",
            true,
            &[("llm-engine", "layer-inference/llm-engine")],
        ),
        // Allowed: a layer's own library, crates/, and platform composing everything.
        pkg(
            "server",
            "layer-inference/server",
            true,
            &[
                ("llm-engine", "layer-inference/llm-engine"),
                ("contract", "crates/contract"),
            ],
        ),
        pkg(
            "cli",
            "platform/cli",
            true,
            &[("gateway", "layer-gateway/gateway")],
        ),
    ];
    let broken = violations(&tree);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].starts_with("kit (crates/kit) depends on gateway"));
    assert!(broken[1].starts_with("monitor "));
    assert!(broken[2].starts_with("tool "));
}

/// The source files (`src/**.rs`) of the services, the CLI and the shared crates other than
/// docsdb: SQL must not appear in them.
fn sources_outside_docsdb(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for p in packages() {
        // docsdb is where SQL lives; testkit and the benchmarks seed data for measurements.
        if ["docsdb", "testkit", "bench"].contains(&p.name.as_str()) {
            continue;
        }
        walk(&root.join(&p.dir).join("src"), &mut out);
    }
    out
}

#[test]
fn sql_lives_only_in_docsdb() {
    let root = common::workspace_root();
    let files = sources_outside_docsdb(&root);
    assert!(files.len() > 20, "the sources were found: {}", files.len());
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains("sqlx::") || line.contains("\"SELECT ") || line.contains("\"INSERT ") {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "SQL outside docsdb:\n{}",
        found.join("\n")
    );
}
