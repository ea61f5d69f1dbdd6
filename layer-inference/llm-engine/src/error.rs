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
    /// The prompt (plus at least one new token) does not fit the context.
    #[error("the prompt has {prompt} tokens; this model's context is {context} tokens")]
    ContextExceeded { prompt: usize, context: usize },
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("generation failed: {0}")]
    Generate(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Generate(e.to_string())
    }
}
