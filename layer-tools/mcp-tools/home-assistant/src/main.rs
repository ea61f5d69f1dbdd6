//! `home-assistant`: see `home-assistant --help` and the crate README.

use clap::Parser;

#[tokio::main]
#[allow(clippy::print_stderr)] // logging is not set up when this fails
async fn main() -> std::process::ExitCode {
    let config = home_assistant::Config::parse();
    if let Err(e) = service_kit::telemetry::init(config.mcp.common.log_format) {
        eprintln!("{e}");
    }
    match home_assistant::serve(config, service_kit::server::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "home-assistant stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
