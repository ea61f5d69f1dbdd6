//! A LiteLLM proxy `config.yaml`, imported as handles and endpoints.
//!
//! Each `model_list` entry becomes a target of the handle named by its `model_name` (entries
//! sharing a name become several targets of one handle, as LiteLLM load-balances them):
//!
//! | LiteLLM | homelab-llm |
//! | --- | --- |
//! | `model_name` | handle |
//! | `litellm_params.model` (`provider/name`) | target `model` = `name`; the provider picks the API |
//! | `api_base` | the endpoint's `base_url` (an endpoint is created for it) |
//! | `api_key: os.environ/NAME` | the endpoint's `auth_env = NAME` (a literal key is refused) |
//! | `rpm`, `tpm`, `weight`, `order` | target `rpm`, `tpm`, `weight`, `priority` |
//! | `timeout`, `stream_timeout` (seconds) | `timeout_ms`, `first_byte_timeout_ms` |
//! | sampling parameters (`temperature`, `max_tokens`, ...) | target default `params` |
//! | `router_settings.routing_strategy` | handle `strategy` |
//!
//! Only OpenAI-compatible providers can be routed to; any other provider is an error naming
//! the entry. Settings we read but do not use come back as warnings.

use serde_yaml_ng::Value;

use crate::error::InputError;
use crate::spec::{Api, HandleSpec, Strategy, SystemSpec, TargetSpec};
use crate::yaml_lines::LineIndex;

/// OpenAI-compatible providers and their default base URL (`None`: `api_base` is required).
const PROVIDERS: &[(&str, Option<&str>)] = &[
    ("openai", Some("https://api.openai.com/v1")),
    ("text-completion-openai", Some("https://api.openai.com/v1")),
    ("custom_openai", None),
    ("openai_like", None),
    ("hosted_vllm", None),
    ("llamafile", Some("http://127.0.0.1:8080/v1")),
    ("lm_studio", Some("http://127.0.0.1:1234/v1")),
    ("ollama", Some("http://127.0.0.1:11434")),
    ("ollama_chat", Some("http://127.0.0.1:11434")),
    ("groq", Some("https://api.groq.com/openai/v1")),
    ("together_ai", Some("https://api.together.xyz/v1")),
    ("deepseek", Some("https://api.deepseek.com/v1")),
    ("openrouter", Some("https://openrouter.ai/api/v1")),
    ("mistral", Some("https://api.mistral.ai/v1")),
    (
        "fireworks_ai",
        Some("https://api.fireworks.ai/inference/v1"),
    ),
    ("xai", Some("https://api.x.ai/v1")),
    ("perplexity", Some("https://api.perplexity.ai")),
];

/// Request parameters LiteLLM passes to the provider; they become target defaults.
const PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "min_p",
    "repetition_penalty",
    "response_format",
    "extra_body",
];

/// `litellm_params` keys we read but do not act on.
const IGNORED_PARAMS: &[&str] = &[
    "drop_params",
    "max_retries",
    "num_retries",
    "input_cost_per_token",
    "output_cost_per_token",
    "tags",
    "mock_response",
    "use_in_pass_through",
];

/// Top-level sections of a LiteLLM config.
const SECTIONS: &[&str] = &[
    "model_list",
    "router_settings",
    "litellm_settings",
    "general_settings",
    "environment_variables",
    "callback_settings",
    "include",
    "guardrails",
    "credential_list",
    "mcp_servers",
    "search_tools",
];

/// Converts the config. Returns the spec and warnings for what was not mapped.
pub fn convert(text: &str, file: &str) -> Result<(SystemSpec, Vec<String>), InputError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| super::yaml_error(e, file))?;
    let lines = LineIndex::new(text);
    let at = |path: &str, msg: String| {
        let mut e = InputError::new(msg).in_file(file).field(path);
        e.line = lines.line_of(path);
        e
    };
    let mut warnings = Vec::new();
    let Some(top) = doc.as_mapping() else {
        return Err(at(
            "",
            "a LiteLLM config is a mapping with `model_list`".into(),
        ));
    };
    for key in top.keys() {
        let k = key.as_str().unwrap_or("");
        if !SECTIONS.contains(&k) {
            return Err(at(
                k,
                format!("unknown top-level key `{k}` in a LiteLLM config"),
            ));
        }
        if k != "model_list" && k != "router_settings" {
            warnings.push(format!(
                "`{k}` is not imported (homelab-llm configures this elsewhere)"
            ));
        }
    }

    let strategy = match doc
        .get("router_settings")
        .and_then(|r| r.get("routing_strategy"))
    {
        None => Strategy::Weighted, // LiteLLM's default, simple-shuffle
        Some(v) => match v.as_str().unwrap_or("") {
            "simple-shuffle" => Strategy::Weighted,
            "least-busy" => Strategy::LeastBusy,
            "latency-based-routing" => Strategy::Latency,
            other => {
                warnings.push(format!(
                    "routing_strategy `{other}` has no equivalent; handles use `weighted`"
                ));
                Strategy::Weighted
            }
        },
    };
    if let Some(rs) = doc.get("router_settings").and_then(Value::as_mapping) {
        for k in rs
            .keys()
            .filter_map(Value::as_str)
            .filter(|k| *k != "routing_strategy")
        {
            warnings.push(format!("router_settings.{k} is not imported"));
        }
    }

    let Some(list) = doc.get("model_list").and_then(Value::as_sequence) else {
        return Err(at("model_list", "`model_list` must be a list".into()));
    };
    let mut spec = SystemSpec::default();
    for (i, entry) in list.iter().enumerate() {
        let path = format!("model_list[{i}]");
        let name = entry
            .get("model_name")
            .and_then(Value::as_str)
            .ok_or_else(|| at(&path, "`model_name` is missing".into()))?;
        let params = entry
            .get("litellm_params")
            .and_then(Value::as_mapping)
            .ok_or_else(|| at(&path, "`litellm_params` is missing".into()))?;
        let ppath = format!("{path}.litellm_params");
        let target = convert_params(params, &ppath, &at, &mut warnings)?;
        if let Some(h) = spec.handles.iter_mut().find(|h| h.handle == name) {
            h.targets.push(target);
        } else {
            spec.handles.push(HandleSpec {
                context_fallback: None,
                cache_ttl_ms: None,
                handle: name.to_owned(),
                description: Some("imported from a LiteLLM config".into()),
                strategy,
                targets: vec![target],
            });
        }
    }
    // LiteLLM's `order` means "try lower orders first": that is our priority strategy.
    for h in &mut spec.handles {
        if h.targets.iter().any(|t| t.priority != 0) {
            h.strategy = Strategy::Priority;
        }
    }
    Ok((spec, warnings))
}

fn convert_params(
    params: &serde_yaml_ng::Mapping,
    ppath: &str,
    at: &dyn Fn(&str, String) -> InputError,
    warnings: &mut Vec<String>,
) -> Result<TargetSpec, InputError> {
    let field = |k: &str| format!("{ppath}.{k}");
    let model_full = params
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| at(ppath, "`model` is missing".into()))?;
    let (provider, model) = match model_full.split_once('/') {
        Some((p, m)) if PROVIDERS.iter().any(|(name, _)| *name == p) => (p, m),
        Some((p, _)) if !p.contains('.') && !p.contains(':') => {
            return Err(at(
                &field("model"),
                format!(
                    "provider `{p}` is not OpenAI-compatible; homelab-llm routes only to \
                     OpenAI-compatible servers (use `openai/<model>` with `api_base` if this \
                     server speaks the OpenAI API)"
                ),
            ));
        }
        _ => ("openai", model_full),
    };
    let default_base = PROVIDERS
        .iter()
        .find(|(n, _)| *n == provider)
        .and_then(|(_, b)| *b);
    let api_base = params
        .get("api_base")
        .or_else(|| params.get("base_url"))
        .and_then(Value::as_str);
    let mut base_url = match (api_base, default_base) {
        (Some(b), _) => b.trim_end_matches('/').to_owned(),
        (None, Some(d)) => d.to_owned(),
        (None, None) => {
            return Err(at(ppath, format!("provider `{provider}` needs `api_base`")));
        }
    };
    if provider.starts_with("ollama") && !base_url.ends_with("/v1") {
        // Ollama's OpenAI-compatible API lives under /v1.
        base_url.push_str("/v1");
    }
    url::Url::parse(&base_url).map_err(|e| {
        at(
            &field("api_base"),
            format!("`{base_url}` is not a URL: {e}"),
        )
    })?;

    let auth_env = match params.get("api_key") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let s = v.as_str().unwrap_or("");
            match s.strip_prefix("os.environ/") {
                Some(name) if !name.is_empty() => Some(name.to_owned()),
                _ => {
                    return Err(at(
                        &field("api_key"),
                        "a literal API key is refused: secrets never go in the system-docs DB; \
                         write `api_key: os.environ/NAME` and set NAME in the gateway's environment"
                            .into(),
                    ));
                }
            }
        }
    };

    let int = |k: &str| -> Result<Option<i64>, InputError> {
        match params.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| at(&field(k), format!("`{k}` must be an integer"))),
        }
    };
    let secs_to_ms = |k: &str| -> Result<Option<i64>, InputError> {
        match params.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|s| *s > 0.0)
                .map(|s| Some((s * 1000.0).round() as i64))
                .ok_or_else(|| {
                    at(
                        &field(k),
                        format!("`{k}` must be a positive number of seconds"),
                    )
                }),
        }
    };

    let mut target = TargetSpec::on_endpoint("", model);
    target.endpoint = None;
    target.base_url = Some(base_url);
    target.api = Some(Api::Openai);
    target.auth_env = auth_env;
    target.rpm = int("rpm")?;
    target.tpm = int("tpm")?;
    target.weight = int("weight")?.unwrap_or(1);
    target.priority = int("order")?.unwrap_or(0);
    target.timeout_ms = secs_to_ms("timeout")?;
    target.first_byte_timeout_ms = secs_to_ms("stream_timeout")?;

    let mut defaults = serde_json::Map::new();
    for (k, v) in params {
        let Some(k) = k.as_str() else { continue };
        match k {
            "model" | "api_base" | "base_url" | "api_key" | "rpm" | "tpm" | "weight" | "order"
            | "timeout" | "stream_timeout" => {}
            k if PARAMS.contains(&k) => {
                let json = serde_json::to_value(v)
                    .map_err(|e| at(&field(k), format!("cannot convert `{k}`: {e}")))?;
                defaults.insert(k.to_owned(), json);
            }
            k if IGNORED_PARAMS.contains(&k) => {
                warnings.push(format!("{} is not imported", field(k)));
            }
            k => {
                return Err(at(
                    &field(k),
                    format!("`{k}` is not supported by homelab-llm's LiteLLM import"),
                ));
            }
        }
    }
    target.params = (!defaults.is_empty()).then_some(defaults);
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
model_list:
  - model_name: chat
    litellm_params:
      model: openai/qwen2.5-7b
      api_base: http://mini.lan:4011/v1
      api_key: os.environ/MINI_KEY
      rpm: 60
      temperature: 0.2
  - model_name: chat
    litellm_params:
      model: ollama/llama3.2:1b
      api_base: http://orin.lan:11434
      weight: 3
      timeout: 30
  - model_name: cloud
    litellm_params:
      model: gpt-4o-mini
      api_key: os.environ/OPENAI_API_KEY
router_settings:
  routing_strategy: least-busy
  num_retries: 2
litellm_settings:
  drop_params: true
"#;

    #[test]
    fn converts_handles_endpoints_and_params() {
        let (spec, warnings) = convert(CONFIG, "config.yaml").unwrap();
        assert_eq!(spec.handles.len(), 2);
        let chat = &spec.handles[0];
        assert_eq!(chat.strategy, Strategy::LeastBusy);
        assert_eq!(chat.targets.len(), 2);
        assert_eq!(chat.targets[0].model, "qwen2.5-7b");
        assert_eq!(chat.targets[0].auth_env.as_deref(), Some("MINI_KEY"));
        assert_eq!(chat.targets[0].rpm, Some(60));
        assert_eq!(chat.targets[0].params.as_ref().unwrap()["temperature"], 0.2);
        assert_eq!(
            chat.targets[1].base_url.as_deref(),
            Some("http://orin.lan:11434/v1")
        );
        assert_eq!(chat.targets[1].model, "llama3.2:1b");
        assert_eq!(
            (chat.targets[1].weight, chat.targets[1].timeout_ms),
            (3, Some(30_000))
        );
        assert_eq!(
            spec.handles[1].targets[0].base_url.as_deref(),
            Some("https://api.openai.com/v1")
        );
        assert!(
            warnings.iter().any(|w| w.contains("num_retries")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("litellm_settings")),
            "{warnings:?}"
        );
    }

    #[test]
    fn literal_key_is_refused_with_its_line() {
        let text = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n      api_base: http://h/v1\n      api_key: sk-live-123\n";
        let err = convert(text, "config.yaml").unwrap_err();
        let s = err.to_string();
        assert!(
            s.starts_with("config.yaml:6: model_list[0].litellm_params.api_key:"),
            "{s}"
        );
        assert!(s.contains("os.environ/NAME"), "{s}");
        assert!(!s.contains("sk-live-123"), "the secret is not echoed: {s}");
    }

    #[test]
    fn unsupported_provider_is_named() {
        let text = "model_list:\n  - model_name: a\n    litellm_params:\n      model: anthropic/claude-3\n";
        let err = convert(text, "c.yaml").unwrap_err().to_string();
        assert!(err.contains("anthropic") && err.contains(":4:"), "{err}");
    }
}
