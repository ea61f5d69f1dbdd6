//! `home-assistant`: see `home-assistant --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<home_assistant::Config>()
}
