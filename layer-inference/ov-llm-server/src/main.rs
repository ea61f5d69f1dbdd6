//! `ov-llm-server`: see `ov-llm-server --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<ov_llm_server::Config>()
}
