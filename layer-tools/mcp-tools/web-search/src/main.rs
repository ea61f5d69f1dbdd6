//! `web-search`: see `web-search --help` and the crate README.

use clap::Parser;

#[tokio::main]
#[allow(clippy::print_stderr)] // logging is not set up when this fails
async fn main() -> std::process::ExitCode {
    let config = web_search::Config::parse();
    if let Err(e) = service_kit::telemetry::init(config.mcp.common.log_format) {
        eprintln!("{e}");
    }
    match web_search::serve(config, service_kit::server::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "web-search stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
