//! `gateway`: see `gateway --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<gateway::Config>()
}
