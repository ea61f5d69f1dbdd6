//! OpenVINO for tests, from the PyPI wheels (`pip install openvino openvino-genai
//! openvino-tokenizers`, which `.ci/run` does): where the C library is, and an IR folder
//! derived from a GGUF by OpenVINO GenAI (the same folder layout the Mini's models use).

use std::path::{Path, PathBuf};

/// The `openvino` wheel's library folder; `None` when the wheels are missing (a failure
/// under `CI=true`, where `.ci/run` installs them).
#[allow(clippy::print_stderr)] // a note in the test output
pub fn wheel_libs() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import openvino, openvino_genai, os; print(os.path.join(os.path.dirname(openvino.__file__), 'libs'))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the openvino and openvino-genai wheels are missing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("note: no OpenVINO wheels; skipping an OpenVINO test");
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Copies `gguf` into `dir` and derives the IR (`openvino_model.xml/.bin`, tokenizer and
/// detokenizer) beside it; returns `dir`. Panics on failure (see [`try_derive_ir`]).
pub fn derive_ir(gguf: &Path, dir: &Path) -> PathBuf {
    try_derive_ir(gguf, dir).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`derive_ir`], with the failure as a message.
pub fn try_derive_ir(gguf: &Path, dir: &Path) -> Result<PathBuf, String> {
    let name = gguf
        .file_name()
        .ok_or_else(|| format!("{} is not a file", gguf.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = dir.join(name);
    std::fs::copy(gguf, &copy).map_err(|e| format!("{}: {e}", gguf.display()))?;
    let script = format!(
        "import openvino_genai as g; g.LLMPipeline({:?}, 'CPU', enable_save_ov_model=True)",
        copy.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() || !dir.join("openvino_model.xml").exists() {
        return Err(format!(
            "deriving the IR failed (pip install openvino-genai): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(dir.to_owned())
}
