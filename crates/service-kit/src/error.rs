//! The one error type of this crate.

/// What can go wrong while starting or running a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound (in use, not allowed, not local).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
    /// Logging was already set up differently in this process.
    #[error("cannot set up logging: {0}")]
    Telemetry(String),
}
