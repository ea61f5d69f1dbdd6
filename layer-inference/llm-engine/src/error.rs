//! The engine's one error type.

/// What can go wrong loading a model or generating.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error(
        "this model's tokenizer ({0}) is not supported by the candle backend (GPT-2 style BPE is)"
    )]
    UnsupportedTokenizer(String),
    #[error("the chat template failed: {0}")]
    Template(String),
    #[error("tokenizing failed: {0}")]
    Tokenize(String),
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The prompt (plus at least one new token) does not fit the context.
    #[error("the prompt has {prompt} tokens; this model's context is {context} tokens")]
    ContextExceeded { prompt: usize, context: usize },
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    /// A request of a better priority took this one's place in a full queue.
    #[error("the request queue is full and a request of priority {0} took this one's place")]
    Shed(String),
    /// No sequence became free within the queue's longest wait.
    #[error("no sequence became free within {0:?}")]
    QueueTimeout(std::time::Duration),
    #[error("generation failed: {0}")]
    Generate(String),
    /// The backend's KV has no room left for another sequence or token.
    #[error("the KV cache is full")]
    KvFull,
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Generate(e.to_string())
    }
}
