//! `memory`: see `memory --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<memory::Config>()
}
