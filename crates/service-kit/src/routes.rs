//! A service's routes and their table, built by the same calls.
//!
//! An axum `Router` cannot list its routes, so a service builds its router through
//! [`Routes`]: every `get`/`post`/… adds the route to the router and a row (method, path,
//! what it does) to the table. `SERVICE_SPEC.md` prints the table, so the documented routes
//! are the served ones. Routes are built without a state value (`Routes<Arc<AppState>>`),
//! so the table is available to code that has none, such as the spec generator.

use std::convert::Infallible;
use std::future::Future;

use axum::Router;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use tower::Service;

/// One row of a service's route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `GET`, `POST`, …
    pub method: &'static str,
    /// The path as the router matches it (`{name}` for a path parameter).
    pub path: String,
    /// Also served without the `/v1` prefix (OpenAI clients call both).
    pub also_without_v1: bool,
    /// What the route does, one line.
    pub what: &'static str,
}

/// A router and the table of its routes. See the module documentation.
pub struct Routes<S = ()> {
    router: Router<S>,
    table: Vec<Route>,
    /// Each path's method router, kept so that [`Routes::under_v1_and_root`] can add every
    /// route at both paths (one flat router, no nesting per request).
    methods: Vec<(String, MethodRouter<S>)>,
    /// A service was added at a path ([`Routes::service`]): the routes can only be nested.
    services: bool,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            table: Vec::new(),
            methods: Vec::new(),
            services: false,
        }
    }

    pub fn get<H, T>(self, path: &'static str, handler: H, what: &'static str) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.on("GET", path, axum::routing::get(handler), what)
    }

    pub fn post<H, T>(self, path: &'static str, handler: H, what: &'static str) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.on("POST", path, axum::routing::post(handler), what)
    }

    pub fn put<H, T>(self, path: &'static str, handler: H, what: &'static str) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.on("PUT", path, axum::routing::put(handler), what)
    }

    pub fn delete<H, T>(self, path: &'static str, handler: H, what: &'static str) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.on("DELETE", path, axum::routing::delete(handler), what)
    }

    fn on(
        mut self,
        method: &'static str,
        path: &'static str,
        route: MethodRouter<S>,
        what: &'static str,
    ) -> Self {
        self.router = self.router.route(path, route.clone());
        self.methods.push((path.to_owned(), route));
        self.table.push(Route {
            method,
            path: path.to_owned(),
            also_without_v1: false,
            what,
        });
        self
    }

    /// A tower service at `path` and below (an MCP endpoint), with the methods it answers
    /// as `(method, what)` rows.
    pub fn service<T>(
        mut self,
        path: &'static str,
        service: T,
        methods: &[(&'static str, &'static str)],
    ) -> Self
    where
        T: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
        T::Response: IntoResponse,
        T::Future: Send + 'static,
    {
        self.router = self.router.nest_service(path, service);
        self.services = true;
        self.table
            .extend(methods.iter().map(|&(method, what)| Route {
                method,
                path: path.to_owned(),
                also_without_v1: false,
                what,
            }));
        self
    }

    /// These routes under `/v1` and at the root, as OpenAI clients call both.
    pub fn under_v1_and_root(mut self) -> Self {
        if self.services {
            self.router = Router::new()
                .nest("/v1", self.router.clone())
                .merge(self.router);
        } else {
            // Each route at both paths: matched in one lookup, with no prefix stripped and
            // no nested router cloned per request.
            let mut router = Router::new();
            let mut methods = Vec::with_capacity(self.methods.len() * 2);
            for (path, route) in self.methods {
                let v1 = format!("/v1{path}");
                router = router.route(&v1, route.clone()).route(&path, route.clone());
                methods.push((v1, route.clone()));
                methods.push((path, route));
            }
            self.router = router;
            self.methods = methods;
        }
        for r in &mut self.table {
            r.path = format!("/v1{}", r.path);
            r.also_without_v1 = true;
        }
        self
    }

    /// Adds `other`'s routes.
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self.methods.extend(other.methods);
        self.services |= other.services;
        self
    }

    /// `GET /health` (alive) and `GET /health/ready`, which runs `check` on the state and
    /// answers 503 with the reason while it fails.
    pub fn health<F, Fut>(self, check: F) -> Self
    where
        F: Fn(S) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let ready = move |State(state): State<S>| {
            let check = check.clone();
            async move { crate::health::ready_response(check(state).await) }
        };
        self.on(
            "GET",
            "/health",
            get(crate::health::alive),
            "Alive: 200 while the process serves HTTP",
        )
        .on(
            "GET",
            "/health/ready",
            get(ready),
            "Ready: 200 when its dependencies are, else 503 with the reason",
        )
    }

    /// `GET /health` and a `GET /health/ready` that is always ready.
    pub fn health_always_ready(self) -> Self {
        self.health(|_| async { Ok(()) })
    }

    /// The table, in the order the routes were added.
    pub fn table(&self) -> &[Route] {
        &self.table
    }

    /// The router, to give its state (`with_state`) and layers.
    pub fn into_router(self) -> Router<S> {
        self.router
    }
}

/// The table as markdown, for `SERVICE_SPEC.md`.
pub fn markdown(table: &[Route]) -> String {
    use std::fmt::Write;
    let mut out = String::from("| method | path | what |\n|---|---|---|\n");
    for r in table {
        let path = if r.also_without_v1 {
            format!(
                "`{}` (also `{}`)",
                r.path,
                r.path.strip_prefix("/v1").unwrap_or(&r.path)
            )
        } else {
            format!("`{}`", r.path)
        };
        let _ = writeln!(out, "| {} | {path} | {} |", r.method, r.what);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::Response;
    use tower::ServiceExt;

    async fn ok() -> &'static str {
        "ok"
    }

    fn sample() -> Routes<u32> {
        let api = Routes::new().post("/chat/completions", ok, "Chat").get(
            "/models/{id}",
            ok,
            "One model",
        );
        Routes::new()
            .merge(api.under_v1_and_root())
            .delete("/things/{id}", ok, "Delete")
            .health(|n: u32| async move { if n > 0 { Ok(()) } else { Err("zero".into()) } })
    }

    async fn call(router: &Router, method: &str, path: &str) -> Response {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap_or_default();
        match router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn every_row_of_the_table_is_served_and_nothing_else() {
        let routes = sample();
        let table = routes.table().to_vec();
        let router = routes.into_router().with_state(1);
        assert_eq!(table.len(), 5);
        for r in &table {
            let path = r.path.replace("{id}", "x");
            let resp = call(&router, r.method, &path).await;
            assert_eq!(resp.status(), 200, "{} {path}", r.method);
            if r.also_without_v1 {
                let bare = path.strip_prefix("/v1").unwrap_or(&path);
                assert_eq!(call(&router, r.method, bare).await.status(), 200, "{bare}");
            }
        }
        assert_eq!(call(&router, "GET", "/nothing").await.status(), 404);
        let wrong_method = call(&router, "GET", "/v1/chat/completions").await;
        assert_eq!(wrong_method.status(), 405);
    }

    #[tokio::test]
    async fn readiness_runs_the_check_on_the_state() {
        let router = sample().into_router().with_state(0);
        let resp = call(&router, "GET", "/health/ready").await;
        assert_eq!(resp.status(), 503);
    }

    #[test]
    fn markdown_names_both_paths_of_a_v1_route() {
        let md = markdown(sample().table());
        assert!(md.contains("| POST | `/v1/chat/completions` (also `/chat/completions`) | Chat |"));
        assert!(md.contains("| GET | `/health/ready` |"));
    }
}
