//! `tracing` set-up shared by every binary.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::error::Error;

/// Installs the global subscriber: the filter from `RUST_LOG` (default `info`), written to
/// stderr as text or JSON. Text has terminal colours only when stderr is a terminal (and
/// `NO_COLOR` is unset): a log file, a pipe or the journal get plain text. Fails if a
/// subscriber is already installed.
pub fn init(format: LogFormat) -> Result<(), Error> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
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
