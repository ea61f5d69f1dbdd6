//! Registration on start: MLX folders under --models-dir (plain and Hugging Face cache
//! layouts) become models of this host, and a footprint the registry already has is kept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

fn model_folder(dir: &Path, config: Value, weights: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    if weights > 0 {
        std::fs::write(dir.join("model.safetensors"), vec![0u8; weights]).unwrap();
    }
    std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
}

async fn run_once(db_url: &str, models: &Path) -> Value {
    let mut config = mlx_launch::Config::new(db_url, "127.0.0.1:0");
    config.host = Some("studio".into());
    config.models_dirs = vec![models.to_owned()];
    let listener = service_kit::server::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(mlx_launch::serve_on(listener, config, async move {
        let _ = rx.await;
    }));
    let mut listed = Value::Null;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{url}/v1/models")).await {
            listed = r.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tx.send(());
    done.await.unwrap().unwrap();
    listed
}

#[tokio::test]
async fn mlx_folders_are_registered_and_registered_values_kept() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    model_folder(
        &models.join("Qwen-tiny-4bit"),
        json!({"model_type": "qwen2", "max_position_embeddings": 2048, "quantization": {"group_size": 64, "bits": 4}}),
        1000,
    );
    model_folder(
        &models.join("models--mlx-community--Llama-tiny-8bit/snapshots/0123abcd"),
        json!({"model_type": "llama", "max_position_embeddings": 4096, "quantization": {"bits": 8}}),
        3000,
    );
    model_folder(
        &models.join("no-weights"),
        json!({"model_type": "llama"}),
        0,
    );
    std::fs::create_dir_all(models.join("not-a-model")).unwrap();

    let db_url = format!("sqlite://{}/system-docs.db", dir.path().display());
    let listed = run_once(&db_url, &models).await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["Qwen-tiny-4bit", "mlx-community/Llama-tiny-8bit"],
        "{listed}"
    );

    let db = docsdb::Db::open(&db_url).await.unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let hosts = docsdb::read::hosts(&mut conn).await.unwrap();
    assert!(
        hosts.iter().any(|(_, h)| h.name == "studio"),
        "the host is registered too"
    );
    let models_in_db = docsdb::read::models(&mut conn).await.unwrap();
    let qwen = &models_in_db
        .iter()
        .find(|(_, m)| m.model_id == "Qwen-tiny-4bit")
        .unwrap()
        .1;
    assert_eq!(qwen.format.as_deref(), Some("mlx"));
    assert_eq!(qwen.host.as_deref(), Some("studio"));
    assert_eq!(qwen.family.as_deref(), Some("qwen2"));
    assert_eq!(qwen.quantization.as_deref(), Some("4bit"));
    assert_eq!(qwen.context_length, Some(2048));
    let on_disk = 1000 + json!({"model_type": "qwen2", "max_position_embeddings": 2048, "quantization": {"group_size": 64, "bits": 4}}).to_string().len() as u64 + 2;
    assert_eq!(qwen.size_on_disk_bytes.unwrap().0, on_disk);
    assert!(
        qwen.memory_footprint_bytes.unwrap().0 > on_disk,
        "an estimate above the weights"
    );
    assert!(
        qwen.cache_path
            .as_deref()
            .unwrap()
            .ends_with("models/Qwen-tiny-4bit")
    );
    let llama = &models_in_db
        .iter()
        .find(|(_, m)| m.model_id == "mlx-community/Llama-tiny-8bit")
        .unwrap()
        .1;
    assert!(
        llama
            .cache_path
            .as_deref()
            .unwrap()
            .ends_with("snapshots/0123abcd")
    );
    assert_eq!(llama.quantization.as_deref(), Some("8bit"));

    // An operator measures the real footprint; a restart keeps it.
    let mut spec = docsdb::spec::SystemSpec::default();
    let mut measured = qwen.clone();
    measured.memory_footprint_bytes = Some(docsdb::spec::ByteSize(5 << 30));
    spec.models.push(measured);
    drop(conn);
    docsdb::apply::apply(&db, &spec, false).await.unwrap();
    let listed = run_once(&db_url, &models).await;
    assert_eq!(listed["data"][0]["memory_bytes"], 5u64 << 30, "{listed}");
}
