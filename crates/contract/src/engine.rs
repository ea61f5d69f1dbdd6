//! What our engines say beyond the OpenAI API, and what the gateway reads of it: the request
//! priority, the queue (`GET /queue/{request_id}`), llama-server's `timings` object, and
//! llama-server's answer while a model loads.

use serde::{Deserialize, Serialize};

/// The request header that carries a priority: `interactive`, `background` or an integer
/// (lower runs first, as vLLM's `priority` body field).
pub const PRIORITY_HEADER: &str = "x-homelab-priority";

/// On an embeddings answer: how many inputs were longer than the model reads and were cut
/// (as sentence-transformers cuts them). The gateway passes it on.
pub const TRUNCATED_INPUTS_HEADER: &str = "x-homelab-truncated-inputs";

/// llama-server's `timings` (on a chat answer, and on the last chunk of a stream), plus the
/// time spent waiting for a sequence and parked behind better requests.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub prompt_n: u64,
    #[serde(default)]
    pub prompt_ms: f64,
    #[serde(default)]
    pub predicted_n: u64,
    /// Time spent generating the answer's tokens (not waiting, not reading the prompt).
    #[serde(default)]
    pub predicted_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_ms: Option<f64>,
    /// Prompt tokens whose KV came from the prefix cache (not read again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_n: Option<u64>,
}

/// Where one request is in an engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for a sequence; `parked` if it had started and yielded to a better request.
    Waiting {
        priority: i32,
        ahead: u64,
        #[serde(default)]
        parked: bool,
        waited_ms: u64,
    },
    /// Generating.
    Generating {
        priority: i32,
        tokens: u64,
        since_ms: u64,
    },
}

/// An engine's queue at a glance (also in its `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueState {
    /// Sequences generated at once.
    pub parallel: u64,
    /// Sequences generating now.
    pub running: u64,
    /// Requests waiting for a first sequence.
    pub waiting: u64,
    /// Sequences parked behind better requests.
    #[serde(default)]
    pub parked: u64,
    /// Requests that may wait before new ones are refused.
    pub limit: u64,
}

impl QueueState {
    /// "1 generating, 3 waiting" (parked ones count as waiting).
    pub fn describe(&self) -> String {
        format!(
            "{} generating, {} waiting",
            self.running,
            self.waiting + self.parked
        )
    }
}

/// The message of llama-server's 503 while it loads its model (`{"error":{"code":503,
/// "message":"Loading model"}}`), which our engines answer too.
pub const LOADING_MESSAGE: &str = "Loading model";

/// Whether a 503 body says the model is still loading.
pub fn is_loading_body(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    serde_json::from_slice::<Envelope>(body).is_ok_and(|e| e.error.message == LOADING_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_states_round_trip_tagged() {
        let w = RequestState::Waiting {
            priority: 10,
            ahead: 2,
            parked: false,
            waited_ms: 1500,
        };
        let j = serde_json::to_value(&w).unwrap_or_default();
        assert_eq!(j["state"], "waiting");
        assert_eq!(j["ahead"], 2);
        assert_eq!(serde_json::from_value::<RequestState>(j).ok(), Some(w));
    }

    #[test]
    fn the_loading_body_is_recognised() {
        assert!(is_loading_body(
            br#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#
        ));
        assert!(!is_loading_body(
            br#"{"error":{"message":"the server is busy"}}"#
        ));
        assert!(!is_loading_body(b"not json"));
    }
}
