//! `tracing` set-up shared by every binary.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::error::Error;

/// Installs the global subscriber: the filter from `RUST_LOG` (default `info`), written to
/// stderr as text or JSON. Fails if a subscriber is already installed.
pub fn init(format: LogFormat) -> Result<(), Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    result.map_err(|e| Error::Telemetry(e.to_string()))
}
