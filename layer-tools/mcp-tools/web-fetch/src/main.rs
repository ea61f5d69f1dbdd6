//! `web-fetch`: see `web-fetch --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<web_fetch::Config>()
}
