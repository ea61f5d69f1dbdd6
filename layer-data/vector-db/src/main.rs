//! `vector-db`: see `vector-db --help` and the crate README.

fn main() -> std::process::ExitCode {
    vector_db::keep_large_buffers_off_the_heap();
    service_kit::run::<vector_db::Config>()
}
