//! `ov-llm-server`: see `ov-llm-server --help` and the crate README.

use clap::Parser;

#[tokio::main]
#[allow(clippy::print_stderr)] // logging is not set up when this fails
async fn main() -> std::process::ExitCode {
    let config = ov_llm_server::Config::parse();
    if let Err(e) = service_kit::telemetry::init(config.engine.common.log_format) {
        eprintln!("{e}");
    }
    match ov_llm_server::serve(config, service_kit::server::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ov-llm-server stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
