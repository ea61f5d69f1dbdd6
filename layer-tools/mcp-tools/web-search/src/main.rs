//! `web-search`: see `web-search --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<web_search::Config>()
}
