//! Flags every service takes. A service's own `Config` flattens [`CommonArgs`] and adds its
//! bind address (whose default port and environment variable are its own).

use std::time::Duration;

use clap::{Args, ValueEnum};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The flags shared by every service.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Log format. The filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "HOMELAB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Largest request body accepted (e.g. `32MiB`); larger bodies get 413.
    #[arg(long, env = "HOMELAB_BODY_LIMIT", default_value = "32MiB", value_parser = size)]
    pub body_limit: u64,

    /// How long shutdown waits for in-flight requests before cutting them off.
    #[arg(long, env = "HOMELAB_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,

    /// Threads that run the service's requests when it runs as its own binary (default: one
    /// per core). One keeps a service that shares its cores with an inference engine to a
    /// single core, at less CPU per request.
    #[arg(long, env = "HOMELAB_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

impl Default for CommonArgs {
    fn default() -> Self {
        CommonArgs {
            log_format: LogFormat::Text,
            body_limit: 32 * 1024 * 1024,
            drain_timeout: Duration::from_secs(30),
            worker_threads: None,
        }
    }
}

/// clap value parser for sizes (`32MiB`, `1GB`, `4096`).
pub fn size(s: &str) -> Result<u64, String> {
    contract::units::parse_byte_size(s)
}

/// clap value parser for durations (`30s`, `250ms`, `2m`).
pub fn duration(s: &str) -> Result<Duration, String> {
    contract::units::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn defaults_and_units() {
        let c = Cli::try_parse_from(["x"]).unwrap().common;
        assert_eq!(c.body_limit, 32 << 20);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        let c = Cli::try_parse_from(["x", "--body-limit", "1MiB", "--log-format", "json"])
            .unwrap()
            .common;
        assert_eq!((c.body_limit, c.log_format), (1 << 20, LogFormat::Json));
        assert!(Cli::try_parse_from(["x", "--body-limit", "lots"]).is_err());
        assert_eq!(c.worker_threads, None);
        let c = Cli::try_parse_from(["x", "--worker-threads", "1"])
            .unwrap()
            .common;
        assert_eq!(c.worker_threads, Some(1));
        assert!(Cli::try_parse_from(["x", "--worker-threads", "0"]).is_err());
    }
}
