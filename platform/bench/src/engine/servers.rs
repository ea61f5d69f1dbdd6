//! The servers `bench engine` compares, each started as its own process with the same model,
//! threads, context and parallel sequences: orin-llm-server on candle and on llama.cpp,
//! ov-llm-server on OpenVINO, and llama.cpp's own C++ `llama-server` as the anchor, built
//! from the llama.cpp sources inside the `llama-cpp-python` sdist on PyPI
//! (`bench engine-anchor` builds it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What serves the model in one row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Contender {
    /// orin-llm-server with the pure-Rust candle backend.
    Candle,
    /// orin-llm-server with the llama.cpp backend (built with `--features llama-cpp`).
    LlamaCpp,
    /// ov-llm-server: OpenVINO at the device's own inference precision.
    #[value(name = "openvino")]
    OpenVino,
    /// llama.cpp's own C++ server (`llama-server`): the anchor.
    LlamaServer,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Candle => "candle",
            Contender::LlamaCpp => "llama-cpp",
            Contender::OpenVino => "openvino",
            Contender::LlamaServer => "llama-server",
        }
    }
}

/// How every server is started.
pub struct Launch {
    pub model: PathBuf,
    pub threads: usize,
    /// Context per sequence.
    pub context: usize,
    pub parallel: usize,
    pub orin: PathBuf,
    pub ov: PathBuf,
    pub ov_model: Option<PathBuf>,
    pub ov_lib: Option<PathBuf>,
    pub llama_server: PathBuf,
}

/// Starts `server` on `port`, its stderr into `log` (a file: a pipe nobody reads would
/// stop a chatty server once it fills, and closing it would kill the server).
pub fn spawn(
    server: Contender,
    l: &Launch,
    port: u16,
    log: &Path,
) -> Result<tokio::process::Child, String> {
    let model = l.model.display().to_string();
    let ours = |bin: &Path, model: &str| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--model", model, "--bind", &format!("127.0.0.1:{port}")])
            .args(["--parallel", &l.parallel.to_string()])
            .args(["--queue", &(l.parallel * 4).to_string()])
            .args(["--context", &l.context.to_string()])
            .args(["--threads", &l.threads.to_string()])
            .env("RAYON_NUM_THREADS", l.threads.to_string())
            .env("RUST_LOG", "warn");
        cmd
    };
    let (mut cmd, bin) = match server {
        Contender::Candle | Contender::LlamaCpp => {
            let mut cmd = ours(&l.orin, &model);
            let backend = if server == Contender::Candle {
                "candle"
            } else {
                "llama-cpp"
            };
            cmd.args(["--backend", backend]);
            (cmd, l.orin.clone())
        }
        Contender::OpenVino => {
            let ir = l.ov_model.as_deref().ok_or("no OpenVINO IR")?;
            let mut cmd = ours(&l.ov, &ir.display().to_string());
            if let Some(lib) = &l.ov_lib {
                cmd.env("OPENVINO_LIB_PATH", lib);
            }
            (cmd, l.ov.clone())
        }
        Contender::LlamaServer => {
            // `-c` is the whole context, shared by the slots: each gets context × parallel / parallel.
            let mut cmd = tokio::process::Command::new(&l.llama_server);
            cmd.args([
                "-m",
                &model,
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["-c", &(l.context * l.parallel).to_string()])
            .args(["--parallel", &l.parallel.to_string()])
            .args(["-t", &l.threads.to_string(), "-tb", &l.threads.to_string()])
            .args(["--jinja", "--no-webui"]);
            (cmd, l.llama_server.clone())
        }
    };
    let stderr = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    cmd.spawn().map_err(|e| match server {
        Contender::LlamaServer => format!(
            "cannot run {}: {e} (build it with `bench engine-anchor`, or pass --llama-server)",
            bin.display()
        ),
        _ => format!(
            "cannot run {}: {e} (cargo build --release -p orin-llm-server -p ov-llm-server --features orin-llm-server/llama-cpp)",
            bin.display()
        ),
    })
}

/// Waits until a one-token chat succeeds (which also warms the server up), or the process
/// exits (the last line of its `log` is the reason), or the timeout passes.
pub async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    child: &mut tokio::process::Child,
    log: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let body = serde_json::json!({"model": "bench", "max_tokens": 1,
        "messages": [{"role": "user", "content": "Hi"}]});
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let err = std::fs::read_to_string(log).unwrap_or_default();
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(format!("exited while loading: {last}"));
        }
        if let Ok(r) = client.post(url).json(&body).send().await {
            if r.status().is_success() {
                return Ok(());
            }
            let text = r.text().await.unwrap_or_default();
            if text.contains("failed to load") {
                return Err(text);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("not ready after {timeout:?}"))
}

/// The `llama-cpp-python` sdist whose `vendor/llama.cpp` is built.
const SDIST: &str = "llama-cpp-python==0.3.36";

/// Builds llama.cpp's `llama-server` from the sources in the `llama-cpp-python` sdist on
/// PyPI (`pip download --no-binary llama-cpp-python`), with the CPU's own instructions and
/// no network client, into `dir/llama-server`; about five minutes on two cores.
pub fn build_anchor(dir: &Path) -> Result<PathBuf, String> {
    let run = |cmd: &mut std::process::Command| -> Result<(), String> {
        let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
        st.success()
            .then_some(())
            .ok_or(format!("{cmd:?} failed: {st}"))
    };
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let src = dir.join("src");
    run(std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            // Only this package as source: `:all:` would also build pip's build tools
            // (CMake itself) from source just to read the sdist's metadata.
            "--no-binary",
            "llama-cpp-python",
            "-q",
            SDIST,
            "-d",
        ])
        .arg(dir))?;
    let tarball = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .ok_or("pip gave no sdist")?;
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    run(std::process::Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .args(["--strip-components", "1", "-C"])
        .arg(&src))?;
    let llama = src.join("vendor/llama.cpp");
    let build = dir.join("build");
    // Intel AMX kernels crashed here on a Q4_1 model (see .cargo/config.toml): off.
    let no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";
    let amx = cfg!(target_arch = "x86_64");
    let mut configure = std::process::Command::new("cmake");
    configure
        .arg("-S")
        .arg(&llama)
        .arg("-B")
        .arg(&build)
        .args([
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=ON",
            "-DLLAMA_CURL=OFF",
        ])
        .args([
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
        ]);
    if amx {
        configure.env("CFLAGS", no_amx).env("CXXFLAGS", no_amx);
    }
    run(&mut configure)?;
    run(std::process::Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .args(["--target", "llama-server", "-j"])
        .arg(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .to_string(),
        ))?;
    let bin = dir.join("llama-server");
    std::fs::copy(build.join("bin/llama-server"), &bin).map_err(|e| e.to_string())?;
    Ok(bin)
}
