//! `orin-llm-server`: see `orin-llm-server --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<orin_llm_server::Config>()
}
