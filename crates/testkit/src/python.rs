//! Python clients for tests that drive a service with a real SDK.

#![allow(clippy::print_stderr)]

/// Whether `python3` can import `module` (a client SDK a test drives a service with). Under
/// `CI=true` its absence is a failure, since `.ci/run` installs it; elsewhere the caller
/// skips, with a note.
pub fn has_module(module: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true but python3 with the {module} package is missing (pip install {module})"
        );
        eprintln!("note: python3 -c 'import {module}' failed; skipping the SDK test");
    }
    ok
}

/// Runs the Python program `code` with `args`; what it printed, once it succeeded.
pub async fn run(code: &str, args: &[&str]) -> String {
    python(&["-c", code], args, "python").await
}

/// Runs the Python script at `path` with `args`; what it printed, once it succeeded.
pub async fn run_file(path: &str, args: &[&str]) -> String {
    python(&[path], args, path).await
}

async fn python(program: &[&str], args: &[&str], what: &str) -> String {
    let out = tokio::process::Command::new("python3")
        .args(program)
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout
}
