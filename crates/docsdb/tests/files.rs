//! The SQLite files the stack writes (the request log with user names and e-mails, stored
//! responses, the vector store's documents) are readable by their owner only.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_new_database_and_its_journal_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["system-docs.db", "vectors.db"] {
        let file = dir.path().join("var").join(name);
        let url = format!("sqlite://{}", file.display());
        let db = if name == "vectors.db" {
            docsdb::vectors::open(&url).await.unwrap()
        } else {
            let db = docsdb::Db::connect(&url).await.unwrap();
            db.migrate().await.unwrap();
            db
        };
        assert_eq!(mode(&file), 0o600, "{name}");
        for side in ["-wal", "-shm"] {
            let p = dir.path().join("var").join(format!("{name}{side}"));
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{name}{side}");
            }
        }
        db.close().await;
    }
}

#[tokio::test]
async fn an_existing_file_keeps_its_permissions_and_a_read_only_url_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kept.db");
    std::fs::write(&file, b"").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let db = docsdb::Db::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    db.close().await;
    assert_eq!(mode(&file), 0o640);

    let missing = dir.path().join("missing.db");
    let url = format!("sqlite://{}?mode=ro", missing.display());
    assert!(docsdb::Db::connect(&url).await.is_err());
    assert!(!missing.exists());
}
