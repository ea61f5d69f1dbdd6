//! `optillm-proxy`: see `optillm-proxy --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<optillm_proxy::Config>()
}
