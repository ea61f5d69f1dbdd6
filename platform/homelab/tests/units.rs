//! Every systemd unit in `deploy/systemd/` passes `systemd-analyze verify`, and starts a
//! binary this workspace builds — or, for the third-party programs the stack runs beside its
//! own, that program from its pinned install under `/opt`.
//!
//! The units name `/usr/local/bin/<binary>`, which is not installed where tests run, so the
//! check runs against a scratch root (`--root`): the host's own system units (for
//! `network-online.target` and friends), an executable stand-in for each binary, and the
//! units. Any complaint `systemd-analyze` prints about one of them fails the test, warnings
//! about unknown or misspelt settings included.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod common;

fn units() -> Vec<PathBuf> {
    let dir = common::workspace_root().join("deploy/systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    assert!(!units.is_empty(), "no units in {}", dir.display());
    units
}

/// The program of a unit's `ExecStart=` line.
fn program(unit: &Path) -> String {
    let text = std::fs::read_to_string(unit).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{}: no ExecStart=", unit.display()));
    line.trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Names of the workspace's binaries (its packages with a `main.rs` or `[[bin]]`).
fn binaries() -> Vec<String> {
    common::workspace_metadata()["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

fn analyzer() -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true but systemd-analyze is missing (apt-get install systemd)");
        }
        eprintln!("skipped: systemd-analyze is not installed");
    }
    found
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&src).unwrap();
        if meta.is_dir() {
            copy_dir(&src, &dst);
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src).unwrap();
            std::os::unix::fs::symlink(target, dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Units of third-party programs and what they run (each installed by its unit's comment).
const THIRD_PARTY: &[(&str, &str)] = &[(
    "homelab-open-webui.service",
    "/opt/open-webui/bin/open-webui",
)];

#[test]
fn every_unit_starts_a_workspace_binary() {
    let bins = binaries();
    for unit in units() {
        let prog = program(&unit);
        let file = unit.file_name().unwrap().to_string_lossy().into_owned();
        if let Some((_, want)) = THIRD_PARTY.iter().find(|(u, _)| *u == file) {
            assert_eq!(&prog, want, "{file}");
            let text = std::fs::read_to_string(&unit).unwrap();
            assert!(
                text.lines()
                    .any(|l| l.starts_with('#') && l.contains("pip install") && l.contains("==")),
                "{file}: the comment says how to install the pinned release"
            );
            continue;
        }
        let name = prog.rsplit('/').next().unwrap();
        assert!(
            prog.starts_with("/usr/local/bin/") && bins.iter().any(|b| b == name),
            "{}: ExecStart runs {prog}, not /usr/local/bin/<a binary of this workspace>",
            unit.display()
        );
    }
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = analyzer() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let host_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("sysinit.target").exists())
        .expect("the host's system units (sysinit.target)");
    copy_dir(host_units, &root.path().join("usr/lib/systemd/system"));
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    let mut names = Vec::new();
    for unit in units() {
        let prog = program(&unit);
        let stand_in = root.path().join(prog.trim_start_matches('/'));
        std::fs::create_dir_all(stand_in.parent().unwrap()).unwrap();
        std::fs::write(&stand_in, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = unit.file_name().unwrap().to_owned();
        std::fs::copy(&unit, etc.join(&name)).unwrap();
        names.push(name.to_string_lossy().into_owned());
    }
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no", "--root"])
        .arg(root.path())
        .args(names.iter().map(|n| etc.join(n)))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_ours: Vec<&str> = said
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())))
        .collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}
