//! `tiny-agents`: see `tiny-agents --help` and the crate README.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match tiny_agents::Cli::parse().command {
        tiny_agents::Command::Run(args) => tiny_agents::terminal::main(args),
        tiny_agents::Command::Serve(config) => service_kit::run_with(config),
    }
}
