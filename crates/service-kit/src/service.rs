//! The one shape of a service crate. Its clap `Config` implements [`Service`]: the binary's
//! name, the shared flags, what the service refuses before it listens, and how it serves —
//! on its own address (`serve`, what the binary does) or on a listener someone else bound
//! (`serve_on`, what `homelab up` and the tests do). [`run`] is every service's `main`.

use std::future::Future;
use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::config::CommonArgs;

/// A service, implemented by its clap `Config`.
pub trait Service: clap::Parser + Send + 'static {
    /// The binary's name (and the name its log lines carry).
    const NAME: &'static str;
    /// The crate's one error type.
    type Error: std::error::Error + Send + 'static;

    /// The flags every service takes.
    fn common(&self) -> &CommonArgs;

    /// The table of the routes it serves (built by the same calls as its router, see
    /// [`crate::routes`]).
    fn routes() -> Vec<crate::routes::Route>;

    /// What the service refuses before anything listens (the gateway beyond loopback without
    /// a master key). Whoever composes services calls it too, so no guard is bypassed.
    fn check(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Serves on the configured address (or stdio, for an MCP tool told so) until
    /// `shutdown`, then drains and flushes.
    fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Serves on a bound listener until `shutdown`, then drains and flushes.
    fn serve_on(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A service binary's `main`: parses the command line, sets up logging, checks, serves until
/// SIGTERM or SIGINT. A failure is one log line and exit status 1.
pub fn run<S: Service>() -> ExitCode {
    run_with(S::parse())
}

/// [`run`] with a configuration already parsed (by a binary whose command line has more
/// than the service's flags, such as a subcommand).
#[allow(clippy::print_stderr)] // logging is not set up when this fails
pub fn run_with<S: Service>(config: S) -> ExitCode {
    if let Err(e) = crate::telemetry::init(config.common().log_format) {
        eprintln!("{e}");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.common().worker_threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "{} cannot start its runtime", S::NAME);
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        config.check()?;
        config.serve(crate::server::signal()).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{} stopped", S::NAME);
            ExitCode::FAILURE
        }
    }
}

pub use tokio::net::TcpListener as Listener;

/// Implements [`Service`] for a service crate's `Config` from the crate's own `serve(config,
/// shutdown)` and `serve_on(listener, config, shutdown)`:
/// `service_kit::service!(Config, "gateway", Error, common = common, routes =
/// routes().table().to_vec(), check = check_bind);` (`common` is the path to the
/// `CommonArgs` inside the config, `routes` an expression giving the route table; `check` is
/// optional).
#[macro_export]
macro_rules! service {
    ($config:ty, $name:literal, $error:ty, common = $($common:ident).+, routes = $routes:expr $(, check = $check:expr)?) => {
        impl $crate::Service for $config {
            const NAME: &'static str = $name;
            type Error = $error;

            fn common(&self) -> &$crate::config::CommonArgs {
                &self.$($common).+
            }

            fn routes() -> ::std::vec::Vec<$crate::routes::Route> {
                $routes
            }

            $(fn check(&self) -> ::std::result::Result<(), $error> {
                ($check)(self)
            })?

            fn serve(
                self,
                shutdown: impl ::std::future::Future<Output = ()> + Send + 'static,
            ) -> impl ::std::future::Future<Output = ::std::result::Result<(), $error>> + Send {
                serve(self, shutdown)
            }

            fn serve_on(
                self,
                listener: $crate::service::Listener,
                shutdown: impl ::std::future::Future<Output = ()> + Send + 'static,
            ) -> impl ::std::future::Future<Output = ::std::result::Result<(), $error>> + Send {
                serve_on(listener, self, shutdown)
            }
        }
    };
}

/// The service's `SERVICE_SPEC.md`, generated from its clap `Config` and its router: every
/// flag with its environment variable, default and help, the default address, and every
/// route. Kept beside the crate's
/// README and checked by [`check_spec_file`], so it cannot drift from the code.
pub fn spec_markdown<S: Service>() -> String {
    use std::fmt::Write;
    let cmd = S::command();
    let mut out = format!(
        "# {} — service spec\n\nGenerated from the code (`{}::Config`, its clap flags, and its \
         route table) by \
         `service_kit::service::spec_markdown`; a test fails when this file is stale \
         (`HOMELAB_WRITE_SPECS=1 cargo test -p {} --test spec` rewrites it).\n\n",
        S::NAME,
        S::NAME.replace('-', "_"),
        S::NAME
    );
    if let Some(about) = cmd.get_about() {
        let _ = writeln!(out, "{about}\n");
    }
    let bind = cmd
        .get_arguments()
        .find(|a| a.get_id() == "bind")
        .and_then(|a| a.get_default_values().first().cloned());
    if let Some(b) = bind {
        let _ = writeln!(out, "Default address: `{}`\n", b.to_string_lossy());
    }
    out.push_str("## Flags\n\n| flag | environment | default | what |\n|---|---|---|---|\n");
    for a in cmd.get_arguments() {
        let Some(long) = a.get_long() else {
            continue;
        };
        if a.is_hide_set() {
            continue;
        }
        let env = a
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{}`", default.join(","))
        };
        let help = a
            .get_help()
            .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
            .unwrap_or_default();
        let _ = writeln!(out, "| `--{long}` | {env} | {default} | {help} |");
    }
    out.push_str("\n## Routes\n\n");
    out.push_str(&crate::routes::markdown(&S::routes()));
    out
}

/// Compares the crate's `SERVICE_SPEC.md` (in `crate_dir`) with what the code says; with
/// `HOMELAB_WRITE_SPECS=1` writes it instead. `Err` says what to run.
pub fn check_spec_file<S: Service>(crate_dir: &str) -> Result<(), String> {
    let path = std::path::Path::new(crate_dir).join("SERVICE_SPEC.md");
    let want = spec_markdown::<S>();
    if std::env::var_os("HOMELAB_WRITE_SPECS").is_some() {
        return std::fs::write(&path, want).map_err(|e| format!("{}: {e}", path.display()));
    }
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        _ => Err(format!(
            "{} is stale or missing; run `HOMELAB_WRITE_SPECS=1 cargo test -p {} --test spec`",
            path.display(),
            S::NAME
        )),
    }
}
