//! home-assistant against a Home Assistant double: reads and calls within the policy work,
//! everything else is refused with the rule, over HTTP and over stdio.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use home_assistant::Config;
use serde_json::json;
use testkit::home_assistant::MockHomeAssistant;
use testkit::mcp::{McpClient, McpHttp, McpStdio, is_error, text};

const TOKEN: &str = "ha-long-lived-token";

const POLICY: &str = r#"
read:
  domains: [light]
  entities: [switch.coffee]
call:
  - service: light.turn_on
    entities: [light.kitchen]
    data: [brightness_pct]
  - service: light.turn_off
    entities: ["light.*"]
"#;

async fn ha() -> MockHomeAssistant {
    MockHomeAssistant::start(
        TOKEN,
        &[
            ("light.kitchen", "off", "Kitchen"),
            ("light.hall", "on", "Hall"),
            ("switch.coffee", "off", "Coffee machine"),
            ("lock.front_door", "locked", "Front door"),
            ("switch.heater", "off", "Heater"),
        ],
    )
    .await
}

fn config(ha: &MockHomeAssistant, dir: &tempfile::TempDir) -> Config {
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    Config {
        bind: "127.0.0.1:0".into(),
        ha_url: ha.base_url(),
        ha_token_env: "HA_TEST_TOKEN_UNSET_ANYWHERE".into(),
        policy,
        timeout: Duration::from_secs(5),
        max_entities: 200,
        mcp: mcp_kit::McpArgs::default(),
    }
}

async fn session(config: &Config, token: &str) -> McpHttp {
    let opts = mcp_kit::HttpOptions::from_args(&config.mcp).unwrap();
    let shared = home_assistant::shared_with_token(config, token.into()).unwrap();
    let app = home_assistant::app(shared, &opts);
    let addr = testkit::spawn(app).await;
    McpHttp::connect(format!("http://{addr}/mcp"), None).await
}

#[tokio::test]
async fn reads_and_calls_within_the_policy() {
    let ha = ha().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = session(&config(&ha, &dir), TOKEN).await;

    let mut tools: Vec<String> = s
        .list_tools()
        .await
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    tools.sort();
    assert_eq!(
        tools,
        ["ha_call_service", "ha_get_state", "ha_list_entities"]
    );

    let r = s.call("ha_list_entities", json!({})).await;
    assert_eq!(
        text(&r),
        "3 entities:\nlight.hall: on (Hall)\nlight.kitchen: off (Kitchen)\nswitch.coffee: off (Coffee machine)\n"
    );
    let r = s.call("ha_list_entities", json!({"domain": "light"})).await;
    assert!(text(&r).starts_with("2 entities:"), "{r}");

    let r = s
        .call("ha_get_state", json!({"entity_id": "switch.coffee"}))
        .await;
    assert!(!is_error(&r));
    let v: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(v["state"], "off");
    assert_eq!(v["attributes"]["friendly_name"], "Coffee machine");

    let r = s
        .call(
            "ha_call_service",
            json!({"domain": "light", "service": "turn_on", "entity_id": "light.kitchen", "data": {"brightness_pct": 40}}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(
        text(&r),
        "Called light.turn_on on light.kitchen. Changed states:\nlight.kitchen: on"
    );
    assert_eq!(ha.state("light.kitchen").as_deref(), Some("on"));
    assert_eq!(
        ha.calls(),
        [(
            "light.turn_on".to_owned(),
            json!({"entity_id": "light.kitchen", "brightness_pct": 40})
        )]
    );
    let r = s
        .call(
            "ha_call_service",
            json!({"domain": "light", "service": "turn_off", "entity_id": "light.hall"}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(ha.state("light.hall").as_deref(), Some("off"));
}

#[tokio::test]
async fn everything_else_is_refused_with_the_rule() {
    let ha = ha().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = session(&config(&ha, &dir), TOKEN).await;

    let refusals = [
        (
            "ha_get_state",
            json!({"entity_id": "lock.front_door"}),
            "reading lock.front_door is not allowed",
        ),
        (
            "ha_list_entities",
            json!({"domain": "lock"}),
            "listing domain lock is not allowed",
        ),
        (
            "ha_get_state",
            json!({"entity_id": "../api/config"}),
            "is not an entity id",
        ),
        (
            "ha_call_service",
            json!({"domain": "lock", "service": "unlock", "entity_id": "lock.front_door"}),
            "calling lock.unlock is not allowed",
        ),
        (
            "ha_call_service",
            json!({"domain": "light", "service": "turn_on", "entity_id": "light.hall"}),
            "allows only light.kitchen",
        ),
        (
            "ha_call_service",
            json!({"domain": "light", "service": "turn_on", "entity_id": "light.kitchen", "data": {"flash": "long"}}),
            "data key `flash` is not allowed",
        ),
        (
            "ha_call_service",
            json!({"domain": "light", "service": "turn_off", "entity_id": "light.kitchen", "data": {"entity_id": "switch.heater"}}),
            "entity_id alone",
        ),
        (
            "ha_call_service",
            json!({"domain": "switch", "service": "turn_on", "entity_id": "switch.heater"}),
            "calling switch.turn_on is not allowed",
        ),
    ];
    for (tool, args, want) in refusals {
        let r = s.call(tool, args.clone()).await;
        assert!(is_error(&r), "{tool} {args} was not refused: {r}");
        assert!(
            text(&r).contains(want),
            "{tool} {args}: want `{want}`, got {}",
            text(&r)
        );
    }
    assert!(
        ha.calls().is_empty(),
        "nothing refused reached Home Assistant: {:?}",
        ha.calls()
    );
    assert_eq!(ha.state("switch.heater").as_deref(), Some("off"));

    // Home Assistant's own failures are tool errors too.
    let r = s
        .call("ha_get_state", json!({"entity_id": "light.nonexistent"}))
        .await;
    assert!(is_error(&r));
    assert_eq!(text(&r), "Home Assistant has no entity light.nonexistent");
}

#[tokio::test]
async fn a_wrong_token_and_a_missing_one() {
    let ha = ha().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = session(&config(&ha, &dir), "not-the-token").await;
    let r = s.call("ha_list_entities", json!({})).await;
    assert!(is_error(&r));
    assert!(text(&r).contains("401"), "{r}");

    let c = config(&ha, &dir);
    let e = home_assistant::shared(&c).err().unwrap();
    assert!(
        e.to_string().contains("HA_TEST_TOKEN_UNSET_ANYWHERE"),
        "{e}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "call: [{service: light.turn_on, entities: [light.a], data: [area_id]}]",
    )
    .unwrap();
    let c = Config {
        policy: bad,
        ..config(&ha, &dir)
    };
    let e = home_assistant::shared_with_token(&c, TOKEN.into())
        .err()
        .unwrap();
    assert!(e.to_string().contains("area_id"), "{e}");
}

#[tokio::test]
async fn stdio_transport_of_the_binary() {
    let ha = ha().await;
    let dir = tempfile::tempdir().unwrap();
    let policy: PathBuf = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_home-assistant"));
    let url = ha.base_url();
    let mut c = McpStdio::spawn(
        bin,
        &[
            "--stdio",
            "--ha-url",
            &url,
            "--policy",
            policy.to_str().unwrap(),
        ],
        &[("HOMELAB_HA_TOKEN", TOKEN), ("RUST_LOG", "warn")],
    )
    .await;
    assert_eq!(c.server["serverInfo"]["name"], "home-assistant");
    assert_eq!(c.list_tools().await.len(), 3);
    let r = c
        .call(
            "ha_call_service",
            json!({"domain": "light", "service": "turn_on", "entity_id": "light.kitchen"}),
        )
        .await;
    assert!(!is_error(&r), "{r}");
    assert_eq!(ha.state("light.kitchen").as_deref(), Some("on"));
    assert!(c.close().await.success());
}
