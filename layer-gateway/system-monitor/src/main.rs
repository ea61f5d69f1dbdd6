//! `system-monitor`: see `system-monitor --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<system_monitor::Config>()
}
