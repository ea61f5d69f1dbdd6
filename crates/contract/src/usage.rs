//! Token usage, as reported in responses and in the last chunk of a stream.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// `usage`. Detail objects (`prompt_tokens_details`, ...) and vendor fields stay in `extra`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageCounts {
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// `usage` with every field the server sent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Absent in embedding responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Usage {
    /// Usage of a completion.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens: Some(completion_tokens),
            total_tokens: prompt_tokens + completion_tokens,
            extra: Extra::new(),
        }
    }

    /// The three counts, with 0 for a missing completion count.
    pub fn counts(&self) -> UsageCounts {
        UsageCounts {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens.unwrap_or(0),
            total_tokens: self.total_tokens,
        }
    }
}
