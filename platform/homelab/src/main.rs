//! `homelab`: the operator CLI of homelab-llm. See `homelab --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = homelab::Cli::parse();
    match homelab::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            homelab::output::error_line(&e.to_string());
            std::process::ExitCode::FAILURE
        }
    }
}
