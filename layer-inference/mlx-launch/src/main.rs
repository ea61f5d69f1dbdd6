//! `mlx-launch`: see `mlx-launch --help` and the crate README.

fn main() -> std::process::ExitCode {
    service_kit::run::<mlx_launch::Config>()
}
