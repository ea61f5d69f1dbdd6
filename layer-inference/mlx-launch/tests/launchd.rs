//! The LaunchDaemon plists in deploy/launchd, read as XML property lists (`plutil -lint` is
//! macOS-only): the keys launchd needs are there with the right types, and the arguments are
//! ones the binaries accept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use clap::Parser;
use plist::{Dictionary, Value};

fn read(name: &str) -> Dictionary {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/launchd")
        .join(name);
    match Value::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        Value::Dictionary(d) => d,
        other => panic!("{name}: the top level is {other:?}, not a dict"),
    }
}

/// The keys every daemon of ours sets, with their types; the program arguments.
fn check_daemon(name: &str, label: &str, binary: &str) -> Vec<String> {
    let d = read(name);
    assert_eq!(
        d.get("Label").and_then(Value::as_string),
        Some(label),
        "{name}"
    );
    assert_eq!(
        d.get("RunAtLoad").and_then(Value::as_boolean),
        Some(true),
        "{name}"
    );
    let keep = d
        .get("KeepAlive")
        .and_then(Value::as_dictionary)
        .expect("KeepAlive is a dict");
    assert_eq!(
        keep.get("SuccessfulExit").and_then(Value::as_boolean),
        Some(false),
        "{name}: restart on failure, not after a clean stop"
    );
    let throttle = d
        .get("ThrottleInterval")
        .and_then(Value::as_signed_integer)
        .expect("ThrottleInterval");
    assert!(throttle >= 1, "{name}");
    assert_eq!(
        d.get("UserName").and_then(Value::as_string),
        Some("homelab"),
        "{name}: not root"
    );
    for key in ["StandardOutPath", "StandardErrorPath"] {
        let p = d
            .get(key)
            .and_then(Value::as_string)
            .unwrap_or_else(|| panic!("{name}: {key}"));
        assert!(
            p.starts_with('/') && p.ends_with(".log"),
            "{name}: {key} = {p}"
        );
    }
    let args: Vec<String> = d
        .get("ProgramArguments")
        .and_then(Value::as_array)
        .expect("ProgramArguments")
        .iter()
        .map(|v| v.as_string().expect("arguments are strings").to_owned())
        .collect();
    assert_eq!(args[0], format!("/usr/local/bin/{binary}"), "{name}");
    args
}

#[test]
fn mlx_launch_daemon() {
    let args = check_daemon(
        "com.homelab-llm.mlx-launch.plist",
        "com.homelab-llm.mlx-launch",
        "mlx-launch",
    );
    let config = mlx_launch::Config::try_parse_from(&args).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.bind, "0.0.0.0:4012");
    assert_eq!(config.host.as_deref(), Some("studio"));
    let d = read("com.homelab-llm.mlx-launch.plist");
    let env = d
        .get("EnvironmentVariables")
        .and_then(Value::as_dictionary)
        .expect("env");
    let path = env
        .get("PATH")
        .and_then(Value::as_string)
        .expect("PATH for mlx_lm.server");
    assert!(path.split(':').any(|p| p.ends_with("/bin")), "{path}");
}

#[test]
fn gateway_daemon() {
    let args = check_daemon(
        "com.homelab-llm.gateway.plist",
        "com.homelab-llm.gateway",
        "gateway",
    );
    // Every flag is one the gateway knows (its --help, from the binary built beside this test).
    let gateway = testkit::sibling_binary("gateway");
    let help = std::process::Command::new(&gateway)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "the gateway has no {flag}");
    }
}

/// Apple's on-device model through apfel: a LaunchAgent in the user's session (Apple
/// rate-limits FoundationModels for processes without one), on the port and under the label
/// the registry example names, with a token since it listens on the LAN.
#[test]
fn apfel_agent_matches_the_registry_example() {
    let name = "com.homelab-llm.apfel.plist";
    let d = read(name);
    assert_eq!(
        d.get("Label").and_then(Value::as_string),
        Some("com.homelab-llm.apfel")
    );
    assert_eq!(d.get("RunAtLoad").and_then(Value::as_boolean), Some(true));
    assert!(
        d.get("UserName").is_none(),
        "an agent runs as the logged-in user"
    );
    assert_eq!(
        d.get("ProcessType").and_then(Value::as_string),
        Some("Interactive")
    );
    let args: Vec<&str> = d
        .get("ProgramArguments")
        .and_then(Value::as_array)
        .expect("ProgramArguments")
        .iter()
        .map(|v| v.as_string().expect("a string"))
        .collect();
    assert!(args[0].ends_with("/apfel"), "{args:?}");
    let after = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    assert!(args.contains(&"--serve"));
    let port = after("--port").expect("--port");
    assert_eq!(after("--host"), Some("0.0.0.0"));
    let env = d
        .get("EnvironmentVariables")
        .and_then(Value::as_dictionary)
        .expect("env");
    assert!(
        env.get("APFEL_TOKEN").and_then(Value::as_string).is_some(),
        "on the LAN it needs a token"
    );
    let example = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/system.yaml"),
    )
    .unwrap();
    assert!(
        example.contains(&format!("base_url: http://studio.lan:{port}/v1"))
            && example.contains("unit: com.homelab-llm.apfel"),
        "the registry example routes to this agent"
    );
}

#[test]
fn shortcuts_daemon() {
    let args = check_daemon(
        "com.homelab-llm.shortcuts.plist",
        "com.homelab-llm.shortcuts",
        "shortcuts",
    );
    // Every flag is one the service knows (its --help, from the binary built beside this test).
    let bin = testkit::sibling_binary("shortcuts");
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "shortcuts has no {flag}");
    }
}
