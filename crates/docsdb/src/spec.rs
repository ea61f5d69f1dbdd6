//! The registry as declarative data: what `system.yaml` holds, and what every import format
//! (`handles.jsonl`, LiteLLM `config.yaml`) is turned into before [`crate::apply`] writes it.
//!
//! Unknown keys are errors everywhere (`deny_unknown_fields`): a typo must not silently
//! become a default. Optional fields that are absent are written as absent on export, so
//! import → export → import is a fixed point.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole registry, or any part of it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handles: Vec<HandleSpec>,
}

/// A machine of the homelab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hostname or LAN address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Memory in bytes; `64 GiB` and similar are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<ByteSize>,
}

/// A running (or planned, or retired) piece of the stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub layer: Layer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kind: ServiceKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// The systemd unit or launchd label that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub lifecycle: Lifecycle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How often the monitor probes it, in milliseconds (at least 1000; absent: the
    /// monitor's `--probe-interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval_ms: Option<i64>,
    /// Failed probes in a row before it counts as down (at least 1; absent: the monitor's
    /// `--fail-threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub docs: Vec<DocSpec>,
}

/// A pointer to a document about a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocSpec {
    /// `README`, `SERVICE_SPEC`, `RUNBOOK`, `CONSTRAINTS`, ...
    pub kind: String,
    /// A path in the repository or a URL.
    pub location: String,
}

/// An HTTP API the gateway or the monitor can call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub base_url: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub api: Api,
    /// The name of the environment variable holding the key; never the key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_env: Option<String>,
    /// The APIs this endpoint serves; none: what its `api` flavour serves
    /// ([`Api::default_offers`]). The gateway sends a request only to targets on endpoints
    /// that offer its API, so that a handle for chat is not tried for speech.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offers: Option<Vec<Offer>>,
}

impl EndpointSpec {
    /// An endpoint at `base_url` speaking `api`, with no key and the flavour's offers.
    pub fn new(name: &str, base_url: &str, api: Api) -> Self {
        EndpointSpec {
            name: name.to_owned(),
            service: None,
            base_url: base_url.to_owned(),
            api,
            auth_env: None,
            offers: None,
        }
    }

    /// What it serves: its `offers`, else its flavour's.
    pub fn serves(&self) -> Vec<Offer> {
        self.offers
            .clone()
            .unwrap_or_else(|| self.api.default_offers().to_vec())
    }
}

/// A model file or folder on a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub model_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// `gguf`, `mlx`, `openvino-ir`, `safetensors`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Parameter count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_on_disk_bytes: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_footprint_bytes: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_path: Option<String>,
}

/// A routing handle: the `model` name clients send, and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleSpec {
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub strategy: Strategy,
    pub targets: Vec<TargetSpec>,
    /// The handle a request goes to when its prompt fits none of these targets' context
    /// windows (a larger-context model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_fallback: Option<String>,
    /// Keep deterministic answers (temperature 0, a `seed`, embeddings) this long and answer
    /// identical requests from memory; none: no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_ms: Option<i64>,
}

impl HandleSpec {
    /// A handle with default settings.
    pub fn new(handle: &str, targets: Vec<TargetSpec>) -> Self {
        HandleSpec {
            handle: handle.to_owned(),
            description: None,
            strategy: Strategy::default(),
            targets,
            context_fallback: None,
            cache_ttl_ms: None,
        }
    }
}

/// One target of a handle: an endpoint and the model name to send it.
///
/// The endpoint is named (`endpoint`) or given by URL (`base_url`, with `api` and `auth_env`);
/// with both, a missing endpoint of that name is created with that URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_env: Option<String>,
    /// The upstream model name.
    pub model: String,
    /// Lower goes first (strategy `priority`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i64,
    /// Share of traffic (strategy `weighted`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: i64,
    /// Total time a request may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<i64>,
    /// Time until the first byte of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_ms: Option<i64>,
    /// Longest silence between two chunks of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<i64>,
    /// Default request parameters, merged in where the client did not set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// The largest tool definitions (the request's `tools`, in bytes of JSON) this target is
    /// sent; none: any. A small context (a 135M model, an Apple Foundation Models server's
    /// 4k tokens) cannot hold the ~25 KB of tools Open WebUI sends with every chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tools_bytes: Option<i64>,
    /// What a request whose tools are larger than `max_tools_bytes` gets from this target.
    #[serde(default, skip_serializing_if = "is_default")]
    pub over_tools: OverTools,
    /// The target's context window in tokens, where the models registry does not say (or
    /// says more than the backend serves). A prompt clearly larger goes to the next target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<i64>,
}

impl TargetSpec {
    /// A target on a named endpoint with default settings.
    pub fn on_endpoint(endpoint: &str, model: &str) -> Self {
        TargetSpec {
            endpoint: Some(endpoint.to_owned()),
            base_url: None,
            api: None,
            auth_env: None,
            model: model.to_owned(),
            priority: 0,
            weight: 1,
            timeout_ms: None,
            connect_timeout_ms: None,
            first_byte_timeout_ms: None,
            idle_timeout_ms: None,
            rpm: None,
            tpm: None,
            params: None,
            max_tools_bytes: None,
            over_tools: OverTools::default(),
            context_length: None,
        }
    }
}

fn one() -> i64 {
    1
}

fn is_one(v: &i64) -> bool {
    *v == 1
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Declares a string enum stored as text: serde names, `as_str`, `FromStr`, `Display`.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? } default $default:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(
                #[serde(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the DB and written in files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}`, expected one of: {}",
                        stringify!($name).to_lowercase(),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// The layer a service belongs to.
    Layer { Interface = "interface", Gateway = "gateway", Inference = "inference", Tools = "tools", Data = "data", Platform = "platform" } default Gateway
);
text_enum!(
    /// Ours (`internal`) or a third-party program we run beside ours (`external`).
    ServiceKind { Internal = "internal", External = "external" } default Internal
);
text_enum!(
    /// Whether a service should be running.
    Lifecycle { Planned = "planned", Active = "active", Retired = "retired" } default Active
);
text_enum!(
    /// The API flavour an endpoint speaks.
    Api { Openai = "openai", Ovms = "ovms", Mlx = "mlx", Llamacpp = "llamacpp", Searxng = "searxng", HomeAssistant = "home-assistant", Mcp = "mcp", Anthropic = "anthropic" } default Openai
);

impl Api {
    /// What an endpoint of this flavour serves unless its `offers` say otherwise: the
    /// OpenAI-compatible servers chat, completions and embeddings; an Anthropic server
    /// Messages; tool servers no model API.
    pub fn default_offers(self) -> &'static [Offer] {
        match self {
            Api::Openai | Api::Ovms | Api::Mlx | Api::Llamacpp => {
                &[Offer::Chat, Offer::Completions, Offer::Embeddings]
            }
            Api::Anthropic => &[Offer::Messages],
            Api::Searxng | Api::HomeAssistant | Api::Mcp => &[],
        }
    }
}

text_enum!(
    /// A model API an endpoint can serve (`offers`): OpenAI's chat completions, text
    /// completions, embeddings, audio transcriptions and translations, speech, image
    /// generation; Anthropic Messages; reranking in the Cohere/Jina shape.
    Offer { Chat = "chat", Completions = "completions", Embeddings = "embeddings", Messages = "messages", Transcriptions = "transcriptions", Translations = "translations", Speech = "speech", Images = "images", Rerank = "rerank" } default Chat
);
text_enum!(
    /// What a target does with tool definitions over its `max_tools_bytes`: `drop` sends the
    /// request without them (no `tools`, `tool_choice`, `parallel_tool_calls`); `refuse`
    /// passes the request to the handle's next target, and when none is left the client gets
    /// a 400 that names the limit.
    OverTools { Drop = "drop", Refuse = "refuse" } default Drop
);
text_enum!(
    /// How a handle picks among its targets.
    Strategy { Priority = "priority", Weighted = "weighted", LeastBusy = "least-busy", Latency = "latency" } default Priority
);

/// A size in bytes. Reads integers or strings with a unit (`512 MiB`, `8GB`, `1.5 GiB`);
/// writes integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The value as a signed integer for the DB (sizes above 8 EiB are refused on parse).
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_byte_size(s).map(ByteSize)
    }
}

pub use contract::units::parse_byte_size;

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n <= i64::MAX as u64 => Ok(ByteSize(n)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "size {n} is out of range"
            ))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_as_text() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(*s));
        }
        assert_eq!(Api::HomeAssistant.as_str(), "home-assistant");
        assert!(
            "round-robin"
                .parse::<Strategy>()
                .unwrap_err()
                .contains("least-busy")
        );
    }

    #[test]
    fn targets_default_and_reject_unknown_keys() {
        let t: TargetSpec = serde_json::from_str(r#"{"endpoint":"e","model":"m"}"#).unwrap();
        assert_eq!((t.priority, t.weight), (0, 1));
        let err = serde_json::from_str::<TargetSpec>(r#"{"endpoint":"e","model":"m","wieght":2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("wieght"), "{err}");
    }
}
