//! The registry against real SQLite and real Postgres: import, apply, export, keys, views.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use docsdb::apply::{Action, apply};
use docsdb::formats::{self, Format, jsonl, system_yaml};
use docsdb::spec::Strategy;
use docsdb::{Db, Error, keys, read};

fn example(name: &str) -> String {
    let path = format!("{}/../../docs/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn import(db: &Db, text: &str, file: &str) -> Result<docsdb::apply::ApplyReport, String> {
    let parsed = formats::parse(text, file).map_err(|e| e.to_string())?;
    apply(db, &parsed.spec, false).await.map_err(|e| match e {
        Error::Input(ie) => parsed.locate(ie, file).to_string(),
        other => other.to_string(),
    })
}

async fn export_yaml(db: &Db) -> String {
    let mut conn = db.pool().acquire().await.unwrap();
    system_yaml::write(&read::load_spec(&mut conn).await.unwrap())
}

async fn export_jsonl(db: &Db) -> String {
    let mut conn = db.pool().acquire().await.unwrap();
    let handles: Vec<_> = read::handles(&mut conn, true)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    jsonl::write(&handles)
}

async fn count(db: &Db, table: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get::<i64, _>("n")
        .unwrap()
}

on_both!(
    migrating_twice_is_harmless,
    system_yaml_apply_is_idempotent_and_reports_changes,
    endpoints_and_models_update_in_place,
    jsonl_creates_endpoints_and_ordered_targets,
    yaml_import_export_import_is_a_fixed_point,
    jsonl_import_export_import_is_a_fixed_point,
    broken_file_leaves_the_db_unchanged,
    litellm_config_imports_as_handles,
    keys_are_hashed_limited_and_revocable,
    request_log_batches_feed_the_views,
    request_log_writer_flushes_on_close_and_counts_drops,
    request_log_writer_writes_a_whole_batch_without_waiting_for_the_interval,
    health_checks_feed_status_and_uptime,
    model_inventory_orders_by_footprint_with_headroom,
    residency_shows_what_is_loaded_and_what_is_free,
    dry_run_changes_nothing,
    missing_and_present_latencies_alternate,
    request_log_records_who_each_request_was_for,
    tool_calls_feed_the_views_and_leave_with_the_retention,
    stored_responses_are_bounded_and_kept_to_their_key,
);

async fn migrating_twice_is_harmless(db: Db) {
    db.migrate().await.unwrap();
    db.migrate().await.unwrap();
    db.ping().await.unwrap();
}

async fn system_yaml_apply_is_idempotent_and_reports_changes(db: Db) {
    let text = example("system.yaml");
    let first = import(&db, &text, "system.yaml").await.unwrap();
    assert_eq!(first.count(Action::Updated), 0);
    assert_eq!(first.count(Action::Created), 3 + 7 + 5 + 4 + 4, "{first}");

    let second = import(&db, &text, "system.yaml").await.unwrap();
    assert!(
        second.is_noop(),
        "applying twice changes nothing:\n{second}"
    );

    let changed = text.replace("strategy: least-busy", "strategy: latency");
    let third = import(&db, &changed, "system.yaml").await.unwrap();
    assert_eq!(third.count(Action::Updated), 1, "{third}");
    let c = third
        .changes
        .iter()
        .find(|c| c.action == Action::Updated)
        .unwrap();
    assert_eq!((c.kind, c.name.as_str()), ("handle", "fast"));
    assert_eq!(c.details, vec!["strategy: \"least-busy\" → \"latency\""]);
}

async fn endpoints_and_models_update_in_place(db: Db) {
    let text = example("system.yaml");
    import(&db, &text, "system.yaml").await.unwrap();
    // A model without a host as well: its row's host_id is NULL, which the unique index
    // covers through COALESCE.
    let hostless = "\n  - model_id: tiny-hostless\n    format: gguf\n    context_length: 2048\n";
    let with_hostless = text.replace("\nhandles:\n", &format!("{hostless}\nhandles:\n"));
    let created = import(&db, &with_hostless, "system.yaml").await.unwrap();
    assert_eq!(created.count(Action::Created), 1, "{created}");
    let (models, endpoints) = (count(&db, "models").await, count(&db, "endpoints").await);

    let changed = with_hostless
        .replace("context_length: 8192", "context_length: 16384")
        .replace("context_length: 2048", "context_length: 4096")
        .replace("http://orin.lan:4013/v1", "http://orin.lan:4014/v1");
    let report = import(&db, &changed, "system.yaml").await.unwrap();
    let updated: Vec<(&str, &str)> = report
        .changes
        .iter()
        .filter(|c| c.action == Action::Updated)
        .map(|c| (c.kind, c.name.as_str()))
        .collect();
    assert_eq!(
        updated,
        vec![
            ("endpoint", "orin-llama"),
            ("model", "llama-3.2-3b-instruct-q4_k_m on orin"),
            ("model", "tiny-hostless"),
        ],
        "{report}"
    );
    assert_eq!(report.count(Action::Created), 0, "{report}");
    assert_eq!(count(&db, "models").await, models, "updated in place");
    assert_eq!(count(&db, "endpoints").await, endpoints, "updated in place");
    let exported = export_yaml(&db).await;
    assert!(exported.contains("http://orin.lan:4014/v1"), "{exported}");
    assert!(exported.contains("context_length: 16384"), "{exported}");
    assert!(exported.contains("context_length: 4096"), "{exported}");
    assert!(
        import(&db, &changed, "system.yaml")
            .await
            .unwrap()
            .is_noop()
    );
}

async fn jsonl_creates_endpoints_and_ordered_targets(db: Db) {
    let report = import(&db, &example("handles.jsonl"), "handles.jsonl")
        .await
        .unwrap();
    assert_eq!(report.count(Action::Created), 2 + 3, "{report}");
    let mut conn = db.pool().acquire().await.unwrap();
    let endpoints = read::endpoints(&mut conn).await.unwrap();
    let names: Vec<_> = endpoints.iter().map(|(_, e)| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["127.0.0.1:4010/v1", "orin.lan:4013/v1", "studio-mlx"]
    );
    let handles = read::handles(&mut conn, false).await.unwrap();
    let chat = &handles.iter().find(|(_, h)| h.handle == "chat").unwrap().1;
    assert_eq!(chat.strategy, Strategy::Priority);
    assert_eq!(
        chat.targets[0].endpoint.as_deref(),
        Some("127.0.0.1:4010/v1")
    );
    assert_eq!(chat.targets[0].timeout_ms, Some(60_000));
    assert_eq!(chat.targets[1].endpoint.as_deref(), Some("studio-mlx"));
    assert_eq!(chat.targets[1].priority, 1);
    // Both handles share the local engine's endpoint rather than creating two.
    assert_eq!(count(&db, "endpoints").await, 3);
    assert_eq!(count(&db, "handle_targets").await, 4);
}

async fn yaml_import_export_import_is_a_fixed_point(db: Db) {
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    import(&db, &example("handles.jsonl"), "handles.jsonl")
        .await
        .unwrap();
    let exported = export_yaml(&db).await;
    assert!(
        exported.contains("probe_interval_ms: 60000") && exported.contains("fail_threshold: 5"),
        "per-service probe settings survive export:\n{exported}"
    );
    // ... and are what the status view applies.
    let searxng = docsdb::health::statuses(&db)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.service == "searxng")
        .unwrap();
    assert_eq!(
        (searxng.probe_interval_ms, searxng.fail_threshold),
        (60000, 5)
    );
    // Into the same DB: nothing changes.
    let again = import(&db, &exported, "export.yaml").await.unwrap();
    assert!(again.is_noop(), "{again}");
    // Into a fresh DB: the same registry comes out.
    let fresh = common::sqlite().await;
    import(&fresh.db, &exported, "export.yaml").await.unwrap();
    assert_eq!(export_yaml(&fresh.db).await, exported);
    fresh.cleanup().await;
}

async fn jsonl_import_export_import_is_a_fixed_point(db: Db) {
    import(&db, &example("handles.jsonl"), "handles.jsonl")
        .await
        .unwrap();
    let exported = export_jsonl(&db).await;
    assert_eq!(exported.lines().count(), 2);
    let again = import(&db, &exported, "export.jsonl").await.unwrap();
    assert!(again.is_noop(), "{again}");
    let fresh = common::sqlite().await;
    import(&fresh.db, &exported, "export.jsonl").await.unwrap();
    assert_eq!(export_jsonl(&fresh.db).await, exported);
    fresh.cleanup().await;
}

async fn broken_file_leaves_the_db_unchanged(db: Db) {
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    let before = export_yaml(&db).await;
    // Lines 1 and 2 are fine and would create handles; line 3 names a missing endpoint.
    let text = concat!(
        r#"{"handle":"new-a","targets":[{"base_url":"http://127.0.0.1:4999/v1","model":"m"}]}"#,
        "\n",
        r#"{"handle":"chat","targets":[{"endpoint":"mini-ov","model":"other"}]}"#,
        "\n",
        r#"{"handle":"new-b","targets":[{"endpoint":"mini-ov","model":"m"},{"endpoint":"nowhere","model":"m"}]}"#,
        "\n",
    );
    let err = import(&db, text, "handles.jsonl").await.unwrap_err();
    assert!(
        err.starts_with("handles.jsonl:3: targets[1].endpoint: endpoint `nowhere`"),
        "{err}"
    );
    assert_eq!(export_yaml(&db).await, before, "no partial import");

    // A semantic error in YAML names its line too.
    let yaml = "handles:\n  - handle: x\n    targets:\n      - endpoint: mini-ov\n        model: a\n      - endpoint: ghost\n        model: b\n";
    let err = import(&db, yaml, "system.yaml").await.unwrap_err();
    assert!(
        err.starts_with("system.yaml:6: handles[0].targets[1].endpoint:"),
        "{err}"
    );
    // A host that does not exist, referenced by a service.
    let yaml = "services:\n  - name: s\n    layer: tools\n    host: atlantis\n";
    let err = import(&db, yaml, "system.yaml").await.unwrap_err();
    assert!(
        err.starts_with("system.yaml:4: services[0].host: host `atlantis`"),
        "{err}"
    );
    // Probe settings out of range.
    let yaml = "services:\n  - name: s\n    layer: tools\n    probe_interval_ms: 10\n";
    let err = import(&db, yaml, "system.yaml").await.unwrap_err();
    assert!(
        err.starts_with("system.yaml:4: services[0].probe_interval_ms: must be at least 1000"),
        "{err}"
    );
    let yaml = "services:\n  - name: s\n    layer: tools\n    fail_threshold: 0\n";
    let err = import(&db, yaml, "system.yaml").await.unwrap_err();
    assert!(
        err.starts_with("system.yaml:4: services[0].fail_threshold: must be at least 1"),
        "{err}"
    );
    assert_eq!(export_yaml(&db).await, before);
}

async fn litellm_config_imports_as_handles(db: Db) {
    let text = example("litellm-config.yaml");
    let parsed = formats::parse(&text, "config.yaml").unwrap();
    assert_eq!(parsed.format, Format::LitellmConfig);
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.contains("general_settings"))
    );
    let report = apply(&db, &parsed.spec, false).await.unwrap();
    assert_eq!(report.count(Action::Created), 2 + 3, "{report}");
    let mut conn = db.pool().acquire().await.unwrap();
    let endpoints = read::endpoints(&mut conn).await.unwrap();
    let studio = endpoints
        .iter()
        .find(|(_, e)| e.base_url == "http://studio.lan:4012/v1")
        .unwrap();
    assert_eq!(studio.1.auth_env.as_deref(), Some("STUDIO_API_KEY"));
    let handles = read::handles(&mut conn, false).await.unwrap();
    let chat = &handles.iter().find(|(_, h)| h.handle == "chat").unwrap().1;
    assert_eq!(chat.strategy, Strategy::Weighted);
    assert_eq!(chat.targets[1].model, "llama3.2:3b");
    assert_eq!(chat.targets[1].weight, 2);
    let gpt = &handles
        .iter()
        .find(|(_, h)| h.handle == "gpt-4o-mini")
        .unwrap()
        .1;
    assert_eq!(gpt.targets[0].params.as_ref().unwrap()["temperature"], 0.2);
    drop(conn);
    // Importing the same config again changes nothing.
    assert!(apply(&db, &parsed.spec, false).await.unwrap().is_noop());
}

async fn keys_are_hashed_limited_and_revocable(db: Db) {
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    let new = keys::NewKey {
        name: "laptop".into(),
        allowed_handles: Some(vec!["chat".into(), "fast".into()]),
        allowed_tools: Some(vec!["web-fetch".into(), "web-search/search".into()]),
        rpm: Some(60),
        tpm: Some(10_000),
        token_budget: Some(1_000_000),
    };
    let (info, secret) = keys::create(&db, &new).await.unwrap();
    assert!(secret.starts_with("sk-hl-") && secret.len() > 40);
    assert!(secret.starts_with(&info.key_prefix));
    assert!(info.allows("chat") && !info.allows("big"));
    // A whole tool server, or one tool of another.
    assert!(info.allows_server("web-fetch") && info.allows_tool("web-fetch", "fetch"));
    assert!(info.allows_server("web-search") && info.allows_tool("web-search", "search"));
    assert!(!info.allows_tool("web-search", "news") && !info.allows_server("home-assistant"));
    let bad = keys::NewKey {
        name: "odd".into(),
        allowed_tools: Some(vec!["web-fetch/".into()]),
        ..Default::default()
    };
    assert!(keys::create(&db, &bad).await.is_err());

    use sqlx::Row;
    let stored: String = sqlx::query("SELECT key_hash FROM api_keys WHERE name = 'laptop'")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("key_hash");
    assert_ne!(stored, secret, "only the hash is stored");
    assert_eq!(stored, keys::hash_key(&secret));

    let found = keys::find_by_secret(&db, &secret).await.unwrap().unwrap();
    assert_eq!(found.name, "laptop");
    assert_eq!(found.rpm, Some(60));
    assert!(
        keys::find_by_secret(&db, "sk-hl-wrong")
            .await
            .unwrap()
            .is_none()
    );

    let dup = keys::create(
        &db,
        &keys::NewKey {
            name: "laptop".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(dup, Err(Error::Conflict(_))), "{dup:?}");
    let bad = keys::create(
        &db,
        &keys::NewKey {
            name: "x".into(),
            allowed_handles: Some(vec!["nope".into()]),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        bad.to_string().contains("handle `nope` does not exist"),
        "{bad}"
    );

    keys::revoke(&db, "laptop").await.unwrap();
    assert!(keys::find_by_secret(&db, &secret).await.unwrap().is_none());
    assert!(matches!(
        keys::revoke(&db, "laptop").await,
        Err(Error::NotFound { .. })
    ));
    // The name is free again after revocation; the old row stays for the log's sake.
    keys::create(
        &db,
        &keys::NewKey {
            name: "laptop".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let all = keys::list(&db).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all.iter().filter(|k| k.revoked_at_ms.is_some()).count(), 1);
}

fn log_row(i: usize, handle: &str, status: u16) -> docsdb::request_log::RequestLogRow {
    docsdb::request_log::RequestLogRow {
        request_id: format!("req-{i}"),
        started_at_ms: docsdb::now_ms() - 1000,
        key_name: Some("laptop".into()),
        route: "chat".into(),
        handle: Some(handle.into()),
        target: Some("mini-ov".into()),
        upstream_model: Some("m".into()),
        status,
        error_type: (status >= 400).then(|| "upstream_error".into()),
        attempts: 1,
        latency_ms: 10.0 + i as f64,
        ttft_ms: Some(5.0),
        prompt_tokens: Some(10),
        completion_tokens: Some(20),
        streamed: i.is_multiple_of(2),
        request_bytes: None,
        response_bytes: None,
        usage_source: None,
        cache_hit: false,
        generation_ms: Some(4.0 + i as f64),
        user: Default::default(),
    }
}

async fn request_log_batches_feed_the_views(db: Db) {
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    let mut rows: Vec<_> = (0..900).map(|i| log_row(i, "chat", 200)).collect();
    rows.extend((900..1000).map(|i| log_row(i, "chat", 502)));
    assert_eq!(
        docsdb::request_log::insert_batch(&db, &rows).await.unwrap(),
        1000
    );
    assert_eq!(count(&db, "request_log").await, 1000);
    // Read back as written, newest last.
    let newest = docsdb::request_log::recent(&db, 2).await.unwrap();
    assert_eq!(newest, vec![rows[998].clone(), rows[999].clone()]);

    use sqlx::Row;
    let r = sqlx::query(
        "SELECT requests_1h, errors_1h, requests_24h, error_rate_24h, prompt_tokens_24h, \
         completion_tokens_24h, avg_ttft_ms_24h FROM v_handle_stats WHERE handle = 'chat'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(r.get::<i64, _>("requests_1h"), 1000);
    assert_eq!(r.get::<i64, _>("errors_1h"), 100);
    assert_eq!(r.get::<i64, _>("requests_24h"), 1000);
    assert!((r.get::<f64, _>("error_rate_24h") - 0.1).abs() < 1e-9);
    assert_eq!(r.get::<i64, _>("prompt_tokens_24h"), 10_000);
    assert_eq!(r.get::<i64, _>("completion_tokens_24h"), 20_000);
    assert!((r.get::<f64, _>("avg_ttft_ms_24h") - 5.0).abs() < 1e-9);
    let errors = sqlx::query("SELECT COUNT(*) AS n FROM v_recent_errors WHERE source = 'request'")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get::<i64, _>("n");
    assert_eq!(errors, 100);
    // A handle without traffic is listed with zeros, not missing.
    let idle =
        sqlx::query("SELECT requests_24h, error_rate_24h FROM v_handle_stats WHERE handle = 'big'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(idle.get::<i64, _>("requests_24h"), 0);
    assert_eq!(idle.get::<Option<f64>, _>("error_rate_24h"), None);
}

/// Open WebUI's forwarded user and chat are kept with each row and broken down per handle,
/// beside the virtual key; rows without either are one caller of their own.
async fn request_log_records_who_each_request_was_for(db: Db) {
    use docsdb::request_log::EndUser;
    let user = |id: &str, name: &str, chat: &str| EndUser {
        id: Some(id.into()),
        name: Some(name.into()),
        email: Some(format!("{name}@example.org")),
        role: Some("user".into()),
        chat_id: Some(chat.into()),
    };
    let mut rows = Vec::new();
    for i in 0..6 {
        let mut r = log_row(i, "chat", if i == 5 { 502 } else { 200 });
        r.key_name = Some("open-webui".into());
        r.user = user("u-1", "Zoë Ünïcode", if i < 3 { "c-1" } else { "c-2" });
        rows.push(r);
    }
    for i in 6..8 {
        let mut r = log_row(i, "chat", 200);
        r.key_name = Some("open-webui".into());
        r.user = user("u-2", "bob", "c-3");
        rows.push(r);
    }
    let mut phone = log_row(8, "chat", 200);
    phone.key_name = Some("iphone".into());
    rows.push(phone);
    let mut other = log_row(9, "embed", 200);
    other.key_name = None;
    rows.push(other);
    docsdb::request_log::insert_batch(&db, &rows).await.unwrap();
    let newest = docsdb::request_log::recent(&db, 10).await.unwrap();
    assert_eq!(newest, rows, "the user columns read back as written");

    let users = docsdb::monitor::handle_users(&db, Some("chat"))
        .await
        .unwrap();
    let seen: Vec<String> = users
        .iter()
        .map(|u| {
            format!(
                "{:?} {:?} {} {} {}",
                u.key_name, u.user_name, u.requests_24h, u.errors_24h, u.chats_24h
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            r#"Some("open-webui") Some("Zoë Ünïcode") 6 1 2"#,
            r#"Some("open-webui") Some("bob") 2 0 1"#,
            r#"Some("iphone") None 1 0 0"#,
        ]
    );
    assert_eq!(users[0].user_id.as_deref(), Some("u-1"));
    assert_eq!(
        users[0].user_email.as_deref(),
        Some("Zoë Ünïcode@example.org")
    );
    assert_eq!(users[0].prompt_tokens_24h, 60);
    assert_eq!(users[0].completion_tokens_24h, 120);
    let all = docsdb::monitor::handle_users(&db, None).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].handle, "chat");
    assert_eq!(
        (all[3].handle.as_str(), all[3].key_name.as_deref()),
        ("embed", None)
    );
}

/// A request-log writer of `capacity` queued rows and batches of 16, flushing after
/// `interval`.
fn small_writer(
    db: &Db,
    capacity: usize,
    interval: std::time::Duration,
) -> docsdb::request_log::RequestLogWriter {
    let cfg = docsdb::request_log::WriterConfig {
        capacity,
        batch_size: 16,
        flush_interval: interval,
    };
    docsdb::request_log::RequestLogWriter::spawn(db.clone(), cfg)
}

/// The rows `w` has written once it has written `at_least`, or after ten seconds.
async fn written_once(w: &docsdb::request_log::RequestLogWriter, at_least: u64) -> u64 {
    let written = || w.stats().written.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..500 {
        if written() >= at_least {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    written()
}

async fn request_log_writer_flushes_on_close_and_counts_drops(db: Db) {
    use std::sync::atomic::Ordering;
    let w = small_writer(&db, 64, std::time::Duration::from_secs(60));
    // The test runtime has one thread: the writer task cannot run until we yield, so exactly
    // `capacity` rows fit and the rest are dropped and counted.
    let accepted = (0..100).filter(|i| w.log(log_row(*i, "chat", 200))).count();
    assert_eq!(accepted, 64);
    assert_eq!(w.stats().dropped.load(Ordering::Relaxed), 36);
    // The flush interval is a minute: only close() gets these rows written now.
    w.close().await;
    assert_eq!(w.stats().written.load(Ordering::Relaxed), 64);
    assert_eq!(count(&db, "request_log").await, 64);
    assert!(
        !w.log(log_row(0, "chat", 200)),
        "a closed writer refuses rows"
    );
}

async fn request_log_writer_writes_a_whole_batch_without_waiting_for_the_interval(db: Db) {
    let hour = std::time::Duration::from_secs(3_600);
    let w = small_writer(&db, 64, hour);
    // A row short of a batch waits for the interval (an hour): nothing is written.
    for i in 0..15 {
        assert!(w.log(log_row(i, "chat", 200)));
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(count(&db, "request_log").await, 0);
    // The sixteenth makes a batch: the senders say so and the writer writes it now.
    assert!(w.log(log_row(15, "chat", 200)));
    let written = written_once(&w, 16).await;
    assert_eq!(
        written, 16,
        "a whole batch is written before the interval ends"
    );
    assert_eq!(count(&db, "request_log").await, 16);
    // The next row waits again, and close() writes it.
    assert!(w.log(log_row(16, "chat", 200)));
    assert!(w.close().await);
    assert_eq!(count(&db, "request_log").await, 17);

    // A queue smaller than a batch: a full queue wakes the writer, so rows keep flowing
    // rather than being dropped for the interval.
    let w = small_writer(&db, 4, hour);
    let mut accepted = 0;
    for i in 0..40 {
        accepted += usize::from(w.log(log_row(100 + i, "chat", 200)));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let written = written_once(&w, 36).await;
    assert!(accepted > 4, "only {accepted} of 40 rows were taken");
    assert!(
        written as usize + 4 >= accepted,
        "{written} of {accepted} rows written while the interval is an hour"
    );
    assert!(w.close().await);
    assert_eq!(count(&db, "request_log").await, 17 + accepted as i64);
}

fn tool_row(request: &str, tool: &str, ok: bool, age_ms: i64) -> docsdb::tool_calls::ToolCallRow {
    let row = docsdb::tool_calls::ToolCallRow {
        request_id: request.into(),
        started_at_ms: docsdb::now_ms() - age_ms,
        caller: "agent:web-researcher".into(),
        key_name: None,
        server: Some("web-fetch".into()),
        tool: tool.into(),
        duration_ms: if ok { 20.0 } else { 40.0 },
        ok,
        error: None,
    };
    if ok {
        row
    } else {
        row.with_error("Error: MCP tool call failed with error message: 403 not allowed")
    }
}

async fn tool_calls_feed_the_views_and_leave_with_the_retention(db: Db) {
    use docsdb::tool_calls::{ToolCallWriter, recent, stats};
    use docsdb::writer::WriterConfig;
    let w = ToolCallWriter::spawn(db.clone(), WriterConfig::default());
    assert!(w.log(tool_row("run-1", "fetch", true, 2_000)));
    assert!(w.log(tool_row("run-1", "fetch", false, 1_000)));
    assert!(w.log(tool_row("run-2", "web_search", true, 500)));
    let mut stranger = tool_row("run-3", "no_such_tool", false, 100);
    stranger.server = None;
    assert!(w.log(stranger));
    // Older than a day: not in the views, and gone with a retention of a day.
    assert!(w.log(tool_row("run-0", "fetch", true, 30 * 3_600_000)));
    assert!(w.close().await);
    assert_eq!(count(&db, "tool_calls").await, 5);

    let s = stats(&db).await.unwrap();
    let seen: Vec<String> = s
        .iter()
        .map(|t| format!("{:?} {} {} {}", t.server, t.tool, t.calls_24h, t.errors_24h))
        .collect();
    assert_eq!(
        seen,
        [
            r#"Some("web-fetch") fetch 2 1"#,
            "None no_such_tool 1 1",
            r#"Some("web-fetch") web_search 1 0"#,
        ]
    );
    assert_eq!(s[0].avg_duration_ms_24h, Some(30.0));
    assert_eq!(s[0].max_duration_ms_24h, Some(40.0));
    assert_eq!(s[0].callers_24h, 1);

    let all = recent(&db, 10, None).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].tool, "fetch", "newest first: the last row written");
    let run1 = recent(&db, 10, Some("run-1")).await.unwrap();
    assert_eq!(run1.len(), 2);
    assert!(!run1[0].ok);
    assert_eq!(
        run1[0].error.as_deref(),
        Some("Error: MCP tool call failed with error message: 403 not allowed")
    );
    assert!(run1[1].ok && run1[1].error.is_none());

    let errors = docsdb::monitor::errors(&db, 10).await.unwrap();
    let tools: Vec<(&str, Option<&str>, Option<&str>)> = errors
        .iter()
        .filter(|e| e.source == "tool")
        .map(|e| {
            (
                e.subject.as_deref().unwrap_or(""),
                e.target.as_deref(),
                e.request_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        tools,
        [
            ("no_such_tool", None, Some("run-3")),
            ("fetch", Some("web-fetch"), Some("run-1")),
        ]
    );

    let now = docsdb::now_ms();
    let report = docsdb::monitor::rollup(&db, now, now - 86_400_000)
        .await
        .unwrap();
    assert_eq!(report.tool_calls_pruned, 1);
    assert_eq!(count(&db, "tool_calls").await, 4);
    assert!(recent(&db, 10, Some("run-0")).await.unwrap().is_empty());
}

async fn stored_responses_are_bounded_and_kept_to_their_key(db: Db) {
    use docsdb::responses::{StoredResponse, delete, get, put};
    let now = docsdb::now_ms();
    let row = |id: &str, at: i64, key: Option<&str>| StoredResponse {
        id: id.into(),
        created_at_ms: at,
        expires_at_ms: at + 60_000,
        key_name: key.map(str::to_owned),
        model: "local".into(),
        items: "[]".into(),
        response: format!("{{\"id\":\"{id}\"}}"),
    };
    // An expired one goes with the next write; beyond three, the oldest go.
    assert_eq!(
        put(&db, &row("r0", now - 120_000, None), 3).await.unwrap(),
        0
    );
    assert_eq!(
        put(&db, &row("r1", now - 4, Some("phone")), 3)
            .await
            .unwrap(),
        1
    );
    put(&db, &row("r2", now - 3, Some("phone")), 3)
        .await
        .unwrap();
    put(&db, &row("r3", now - 2, None), 3).await.unwrap();
    assert_eq!(put(&db, &row("r4", now - 1, None), 3).await.unwrap(), 1);
    assert_eq!(count(&db, "responses").await, 3);
    assert!(
        get(&db, "r1", Some("phone"), now).await.unwrap().is_none(),
        "the oldest went"
    );
    let r2 = get(&db, "r2", Some("phone"), now).await.unwrap().unwrap();
    assert_eq!(r2.response, r#"{"id":"r2"}"#);
    assert!(
        get(&db, "r2", Some("laptop"), now).await.unwrap().is_none(),
        "another key's"
    );
    assert!(
        get(&db, "r2", None, now).await.unwrap().is_none(),
        "another key's"
    );
    assert!(get(&db, "r4", None, now).await.unwrap().is_some());
    assert!(
        get(&db, "r4", None, now + 120_000).await.unwrap().is_none(),
        "expired"
    );
    // Deleted only by the key that stored it.
    assert!(!delete(&db, "r2", Some("laptop")).await.unwrap());
    assert!(!delete(&db, "r2", None).await.unwrap());
    assert!(delete(&db, "r2", Some("phone")).await.unwrap());
    assert!(get(&db, "r2", Some("phone"), now).await.unwrap().is_none());
    assert!(delete(&db, "r4", None).await.unwrap());
    assert!(!delete(&db, "r4", None).await.unwrap(), "already gone");
    assert_eq!(count(&db, "responses").await, 1);
}

async fn health_checks_feed_status_and_uptime(db: Db) {
    use docsdb::health::{Check, record, statuses};
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    let now = docsdb::now_ms();
    let ok = Check {
        ok: true,
        status_code: Some(200),
        latency_ms: Some(1.5),
        error: None,
    };
    let down = Check {
        ok: false,
        status_code: None,
        latency_ms: None,
        error: Some("connection refused".into()),
    };
    for i in 0..3 {
        record(&db, "gateway", now - 60_000 + i * 1000, &ok)
            .await
            .unwrap();
    }
    record(&db, "mlx-launch", now - 5000, &ok).await.unwrap();
    record(&db, "mlx-launch", now - 1000, &down).await.unwrap();
    assert!(record(&db, "nope", now, &ok).await.is_err());

    let st = statuses(&db).await.unwrap();
    let get = |n: &str| st.iter().find(|s| s.service == n).unwrap();
    assert_eq!(get("gateway").status, "up");
    assert_eq!(get("gateway").last_ok, Some(true));
    // One failed probe is not yet `down` (the threshold is 3 in a row by default).
    assert_eq!(get("mlx-launch").status, "degraded");
    assert_eq!(
        get("mlx-launch").last_error.as_deref(),
        Some("connection refused")
    );
    assert_eq!(get("orin-llm-server").status, "unknown");
    assert_eq!(get("open-webui").status, "planned");

    use sqlx::Row;
    let r = sqlx::query(
        "SELECT checks_1h, ok_1h, uptime_1h FROM v_service_uptime WHERE service = 'mlx-launch'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(r.get::<i64, _>("checks_1h"), 2);
    assert_eq!(r.get::<i64, _>("ok_1h"), 1);
    assert!((r.get::<f64, _>("uptime_1h") - 0.5).abs() < 1e-9);
    let errs = sqlx::query("SELECT subject, error FROM v_recent_errors WHERE source = 'health'")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].get::<String, _>("subject"), "mlx-launch");
}

/// A missing latency (a refused probe, a request without a first token) and a present one
/// alternate on the same statements and connections. (sqlx's Any driver declares a NULL
/// double as a Postgres `float4` parameter; a cached statement prepared that way refuses the
/// next real double.)
async fn missing_and_present_latencies_alternate(db: Db) {
    use docsdb::health::{Check, record};
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    let now = docsdb::now_ms();
    for i in 0..8_usize {
        let check = |latency_ms: Option<f64>| Check {
            ok: latency_ms.is_some(),
            status_code: latency_ms.map(|_| 200),
            latency_ms,
            error: None,
        };
        let at = now - 20_000 + i as i64;
        record(&db, "gateway", at, &check(None)).await.unwrap();
        record(&db, "gateway", at + 10_000, &check(Some(2.5)))
            .await
            .unwrap();
        let mut row = log_row(i, "chat", 200);
        row.ttft_ms = None;
        docsdb::request_log::insert_batch(&db, &[row.clone()])
            .await
            .unwrap();
        row.ttft_ms = Some(7.5);
        docsdb::request_log::insert_batch(&db, &[row])
            .await
            .unwrap();
    }
    assert_eq!(count(&db, "health_checks").await, 16);
    assert_eq!(count(&db, "request_log").await, 16);
}

async fn model_inventory_orders_by_footprint_with_headroom(db: Db) {
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    let mut conn = db.pool().acquire().await.unwrap();
    let inv = read::model_inventory(&mut conn).await.unwrap();
    let ids: Vec<_> = inv.iter().map(|r| r.model_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "mlx-community/Qwen2.5-32B-Instruct-4bit",
            "mlx-community/Qwen2.5-7B-Instruct-4bit",
            "llama-3.2-3b-instruct-q4_k_m",
            "qwen2.5-1.5b-instruct-int4-ov",
        ]
    );
    let gib = 1i64 << 30;
    let studio = &inv[0];
    assert_eq!(studio.host_memory_bytes, Some(64 * gib));
    assert_eq!(studio.host_headroom_bytes, Some(64 * gib - 25 * gib));
}

async fn residency_shows_what_is_loaded_and_what_is_free(db: Db) {
    use docsdb::residency;
    import(&db, &example("system.yaml"), "system.yaml")
        .await
        .unwrap();
    let gib = 1i64 << 30;
    let big = "mlx-community/Qwen2.5-32B-Instruct-4bit";
    let small = "mlx-community/Qwen2.5-7B-Instruct-4bit";
    assert!(
        residency::mark_loaded(&db, "studio", big, "mlx-launch", 21 * gib)
            .await
            .unwrap()
    );
    assert!(
        residency::mark_loaded(&db, "studio", small, "mlx-launch", 5 * gib)
            .await
            .unwrap()
    );
    // Not a model of that host: nothing written.
    assert!(
        !residency::mark_loaded(&db, "mini", big, "mlx-launch", gib)
            .await
            .unwrap()
    );
    let mut conn = db.pool().acquire().await.unwrap();
    let inv = read::model_inventory(&mut conn).await.unwrap();
    let row = |id: &str| inv.iter().find(|r| r.model_id == id).unwrap().clone();
    assert!(row(big).loaded && row(small).loaded);
    assert_eq!(row(big).loaded_by.as_deref(), Some("mlx-launch"));
    assert!(row(big).loaded_at_ms.is_some());
    assert_eq!(row(big).host_loaded_bytes, 26 * gib);
    assert_eq!(row(big).host_free_bytes, Some(64 * gib - 26 * gib));
    let ov = row("qwen2.5-1.5b-instruct-int4-ov");
    assert!(!ov.loaded);
    assert_eq!(
        (ov.host_loaded_bytes, ov.host_free_bytes),
        (0, Some(32 * gib))
    );
    let hosts = docsdb::monitor::hosts(&db).await.unwrap();
    let studio = hosts.iter().find(|h| h.host == "studio").unwrap();
    assert_eq!((studio.loaded_models, studio.loaded_bytes), (2, 26 * gib));
    assert_eq!(studio.free_bytes, Some(38 * gib));
    assert_eq!(
        studio.models_footprint_bytes,
        25 * gib,
        "registered, loaded or not"
    );

    // Loading again updates; unloading and clearing remove.
    assert!(
        residency::mark_loaded(&db, "studio", big, "mlx-launch", 20 * gib)
            .await
            .unwrap()
    );
    residency::mark_unloaded(&db, "studio", small)
        .await
        .unwrap();
    let hosts = docsdb::monitor::hosts(&db).await.unwrap();
    let studio = hosts.iter().find(|h| h.host == "studio").unwrap();
    assert_eq!((studio.loaded_models, studio.loaded_bytes), (1, 20 * gib));
    assert_eq!(
        residency::clear_service(&db, "studio", "other")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        residency::clear_service(&db, "studio", "mlx-launch")
            .await
            .unwrap(),
        1
    );
    assert_eq!(count(&db, "model_residency").await, 0);
}

async fn dry_run_changes_nothing(db: Db) {
    let parsed = formats::parse(&example("system.yaml"), "system.yaml").unwrap();
    let report = apply(&db, &parsed.spec, true).await.unwrap();
    assert!(report.count(Action::Created) > 10);
    assert_eq!(count(&db, "hosts").await, 0);
    assert_eq!(count(&db, "handles").await, 0);
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_with_a_busy_timeout() {
    use sqlx::Row;
    let t = common::sqlite().await;
    let mut conn = t.db.pool().acquire().await.unwrap();
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "wal");
    let busy: i64 = sqlx::query("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(busy, 5000);
    let fk: i64 = sqlx::query("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(fk, 1);
    drop(conn);
    t.cleanup().await;
}

/// An import while another writer (a running stack's request log, its monitor) holds the
/// write lock waits its turn and succeeds: it does not read a snapshot that the other
/// writer's commit makes stale ("database is locked").
#[tokio::test]
async fn an_import_beside_another_writer_waits_its_turn() {
    let t = common::sqlite().await;
    let db = t.db.clone();
    for round in 0..5 {
        let holder = db.clone();
        let writer = tokio::spawn(async move {
            let mut tx = holder.begin_write().await.unwrap();
            sqlx::query("UPDATE monitor_folds SET folded_until_ms = folded_until_ms")
                .execute(&mut *tx)
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tx.commit().await.unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let r = import(&db, &example("system.yaml"), "system.yaml").await;
        assert!(r.is_ok(), "round {round}: {r:?}");
        writer.await.unwrap();
    }
    t.cleanup().await;
}
