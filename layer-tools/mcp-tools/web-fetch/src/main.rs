//! `web-fetch`: see `web-fetch --help` and the crate README.

use clap::Parser;

#[tokio::main]
#[allow(clippy::print_stderr)] // logging is not set up when this fails
async fn main() -> std::process::ExitCode {
    let config = web_fetch::Config::parse();
    if let Err(e) = service_kit::telemetry::init(config.mcp.common.log_format) {
        eprintln!("{e}");
    }
    match web_fetch::serve(config, service_kit::server::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "web-fetch stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
