//! `shortcuts`: see `shortcuts --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<shortcuts::Config>()
}
