//! Binding, the layers every service wears, and graceful shutdown.
//!
//! Shutdown order: the signal arrives → the listener stops accepting → in-flight requests
//! finish (at most `drain_timeout`) → flush hooks run in order (the request log, ...) →
//! [`serve`] returns. A second signal during the drain does not cut it short; the drain
//! timeout does.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::serve::ListenerExt;
use contract::ApiError;
use tokio::net::TcpListener;

use crate::body::BodyLimits;
use crate::edge::{Edge, OnRefusal};
use crate::error::Error;

/// Binds `addr`. Every accepted socket gets `TCP_NODELAY`, so small SSE chunks are not held
/// back ~40 ms by Nagle's algorithm waiting for delayed ACKs.
pub async fn bind(addr: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// Adds what every service has: request ids, the body limit, and OpenAI-shaped 404 and 405
/// answers for paths and methods the service does not serve.
pub fn with_common_layers(router: Router, body_limit: u64) -> Router {
    with_body_limits(router, BodyLimits::new(body_limit))
}

/// As [`with_common_layers`], with larger body limits on some paths.
pub fn with_body_limits(router: Router, limits: BodyLimits) -> Router {
    with_edge(router, limits, None)
}

/// As [`with_body_limits`], telling `on_refusal` of each request refused before routing.
pub fn with_edge(router: Router, limits: BodyLimits, on_refusal: Option<OnRefusal>) -> Router {
    let router = router
        .fallback(|| async {
            ApiError::not_found("no such path; see the service README for its endpoints")
                .into_response()
        })
        .method_not_allowed_fallback(|| async {
            ApiError::method_not_allowed("this method is not allowed on this path").into_response()
        });
    Router::new().fallback_service(Edge::new(router, limits, on_refusal))
}

/// A hook run after the server has drained, before [`serve`] returns.
pub type FlushHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Wraps an async closure as a [`FlushHook`].
pub fn flush_hook<F, Fut>(f: F) -> FlushHook
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move || Box::pin(f()))
}

/// How a server shuts down.
pub struct ShutdownPlan {
    /// Resolves when the server should stop (see [`signal`]).
    pub signal: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The longest wait for in-flight requests.
    pub drain_timeout: Duration,
    /// Run in order after the drain.
    pub hooks: Vec<FlushHook>,
}

impl ShutdownPlan {
    /// Stop when `signal` resolves; drain for at most `drain_timeout`.
    pub fn new(signal: impl Future<Output = ()> + Send + 'static, drain_timeout: Duration) -> Self {
        ShutdownPlan {
            signal: Box::pin(signal),
            drain_timeout,
            hooks: Vec::new(),
        }
    }

    /// Adds a flush hook.
    pub fn on_shutdown(mut self, hook: FlushHook) -> Self {
        self.hooks.push(hook);
        self
    }
}

/// Serves `app` on `listener` until the plan's signal, then drains and flushes.
pub async fn serve(listener: TcpListener, app: Router, plan: ShutdownPlan) -> Result<(), Error> {
    let addr = listener.local_addr().ok();
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let mut server = std::pin::pin!(server.into_future());
    tracing::info!(addr = ?addr, "listening");
    if !COMPOSED.load(std::sync::atomic::Ordering::Relaxed) {
        notify_ready();
    }
    tokio::select! {
        r = &mut server => {
            // The server stopped on its own: an I/O error. Still flush what we hold.
            run_hooks(plan.hooks).await;
            return r.map_err(Error::Serve);
        }
        () = plan.signal => {}
    }
    tracing::info!(timeout = ?plan.drain_timeout, "shutting down: draining in-flight requests");
    stop.cancel();
    match tokio::time::timeout(plan.drain_timeout, &mut server).await {
        Ok(r) => r.map_err(Error::Serve)?,
        Err(_) => tracing::warn!("drain timeout reached; remaining connections are cut"),
    }
    run_hooks(plan.hooks).await;
    tracing::info!("stopped");
    Ok(())
}

async fn run_hooks(hooks: Vec<FlushHook>) {
    for hook in hooks {
        hook().await;
    }
}

/// Set when one process composes several services (`homelab up`): then no server says
/// ready when it listens, and the composer says it once everything is.
static COMPOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process as composing several services: [`serve`] no longer calls
/// [`notify_ready`]; the caller does, once every service is ready.
pub fn composed() {
    COMPOSED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Tells systemd the service is ready (`Type=notify` units), by sending `READY=1` to
/// `$NOTIFY_SOCKET` if it is set. Does nothing elsewhere.
pub fn notify_ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET")
        && let Err(e) = notify_ready_to(&path)
    {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Sends `READY=1` to the notification socket `path` (`@name` for an abstract socket).
pub fn notify_ready_to(path: &std::ffi::OsStr) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(b"READY=1", &addr)?;
            }
            None => {
                sock.send_to(b"READY=1", path)?;
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = term => tracing::info!("received SIGTERM"),
    }
}
