//! `mlx-launch`: see `mlx-launch --help` and the crate README.

use clap::Parser;

#[tokio::main]
#[allow(clippy::print_stderr)] // logging is not set up when this fails
async fn main() -> std::process::ExitCode {
    let config = mlx_launch::Config::parse();
    if let Err(e) = service_kit::telemetry::init(config.common.log_format) {
        eprintln!("{e}");
    }
    match mlx_launch::serve(config, service_kit::server::signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "mlx-launch stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
