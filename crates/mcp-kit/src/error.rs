//! The one error type of this crate.

/// What can stop a tool server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--token-env NAME` was given but NAME is unset or empty.
    #[error("--token-env names {0}, but that environment variable is unset or empty")]
    MissingToken(String),
    /// The stdio transport failed (the client sent no valid `initialize`, or I/O failed).
    #[error("stdio transport: {0}")]
    Stdio(String),
    /// A tool server could not be reached or broke the protocol ([`crate::client`]).
    #[error("MCP client: {0}")]
    Client(String),
    #[error(transparent)]
    Service(#[from] service_kit::Error),
}
