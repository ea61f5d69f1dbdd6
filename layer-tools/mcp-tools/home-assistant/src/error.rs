//! The one error type of this crate. Tool failures become `isError` results whose text is
//! the message; a refusal names the rule that refused.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refused: {0}")]
    Denied(String),
    #[error("{0}")]
    BadArgument(String),
    #[error("Home Assistant has no entity {0}")]
    NotFound(String),
    #[error("Home Assistant at {url} could not be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("Home Assistant did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("Home Assistant answered {status}: {message}")]
    Upstream { status: u16, message: String },

    #[error("policy file {path}: {message}")]
    Policy { path: PathBuf, message: String },
    #[error(
        "{0} is unset or empty: set it to a Home Assistant long-lived access token (--ha-token-env names the variable)"
    )]
    MissingHaToken(String),
    #[error("bad --ha-url `{0}`")]
    HaUrl(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Mcp(#[from] mcp_kit::Error),
}
