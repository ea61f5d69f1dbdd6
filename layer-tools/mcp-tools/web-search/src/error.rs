//! The one error type of this crate. The tool failures become `isError` results whose text
//! is the message.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadArgument(String),
    #[error("the gateway at {url} could not be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("the search timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("the gateway refused the search ({status}): {message}")]
    Gateway { status: u16, message: String },
    #[error("the gateway's answer was not a search response: {0}")]
    BadAnswer(String),

    #[error("bad --gateway URL `{0}`")]
    GatewayUrl(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Mcp(#[from] mcp_kit::Error),
}
