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
/// detokenizer) beside it; returns `dir`.
pub fn derive_ir(gguf: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let copy = dir.join(gguf.file_name().unwrap());
    std::fs::copy(gguf, &copy).unwrap();
    let script = format!(
        "import openvino_genai as g; g.LLMPipeline({:?}, 'CPU', enable_save_ov_model=True)",
        copy.display().to_string()
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deriving the IR failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("openvino_model.xml").exists());
    dir.to_owned()
}
