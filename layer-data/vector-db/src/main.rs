//! `vector-db`: see `vector-db --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<vector_db::Config>()
}
