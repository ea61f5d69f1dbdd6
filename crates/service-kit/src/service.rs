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
#[allow(clippy::print_stderr)] // logging is not set up when this fails
pub fn run<S: Service>() -> ExitCode {
    let config = S::parse();
    if let Err(e) = crate::telemetry::init(config.common().log_format) {
        eprintln!("{e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
/// `service_kit::service!(Config, "gateway", Error, common = common, check = check_bind);`
/// (`common` is the path to the `CommonArgs` inside the config; `check` is optional).
#[macro_export]
macro_rules! service {
    ($config:ty, $name:literal, $error:ty, common = $($common:ident).+ $(, check = $check:expr)?) => {
        impl $crate::Service for $config {
            const NAME: &'static str = $name;
            type Error = $error;

            fn common(&self) -> &$crate::config::CommonArgs {
                &self.$($common).+
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
