//! `/mcp`: the monitor's views as MCP tools, so that an agent (the stack doctor) can answer
//! "what is wrong with my homelab?" from the same SQL views the dashboard shows — read-only,
//! and without giving the model a URL fetcher that could reach the rest of the stack.
//!
//! - `stack_status`: every service's state (problems first), the handles' error rates, the
//!   tools' failures and the recent errors, as a short report.
//! - `service_details`: one service: its state, its last probes and its hourly uptime.
//! - `recent_errors`: the newest errors across the stack (requests, probes, tool calls).

use std::fmt::Write as _;

use docsdb::Db;
use docsdb::monitor::{self, CheckRow, ErrorRow, HandleRow, HourRow, ServiceRow};
use docsdb::tool_calls::ToolStatsRow;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

/// The most errors a report lists.
pub const MAX_ERRORS: i64 = 50;

/// Kinds of errors `stack_status` lists.
const STATUS_ERRORS: usize = 10;

/// The newest errors read to group them: a service down for minutes fails a probe every
/// interval, and those repeats must not hide a failed request or tool call behind them.
const ERRORS_READ: i64 = 500;

/// The MCP server: reads the system-docs DB, writes nothing.
#[derive(Clone)]
pub struct MonitorTools {
    db: Db,
    tool_router: ToolRouter<Self>,
}

impl MonitorTools {
    pub fn new(db: Db) -> Self {
        MonitorTools {
            db,
            tool_router: Self::tool_router(),
        }
    }
}

/// `service_details`' arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ServiceParams {
    /// The service's name, as `stack_status` lists it (e.g. `web-search`).
    pub name: String,
}

/// `recent_errors`' arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ErrorsParams {
    /// How many errors, newest first.
    #[serde(default = "default_errors")]
    #[schemars(range(min = 1, max = 50))]
    pub limit: i64,
}

fn default_errors() -> i64 {
    20
}

fn answer(r: Result<String, docsdb::Error>) -> CallToolResult {
    match r {
        Ok(text) => mcp_kit::tool_text(text),
        Err(e) => mcp_kit::tool_error(format!("the system-docs DB could not be read: {e}")),
    }
}

#[tool_router]
impl MonitorTools {
    /// The whole stack's state.
    #[tool(
        description = "Reports the state of every service of the homelab (problems first, with their last error), the routing handles' error rates in the last hour, failing tools and the most recent errors. Call this first to find out what is wrong.",
        annotations(title = "Stack status", read_only_hint = true, open_world_hint = false)
    )]
    async fn stack_status(&self) -> Result<CallToolResult, ErrorData> {
        let now = docsdb::now_ms();
        let report = async {
            let services = monitor::services(&self.db).await?;
            let handles = monitor::handles(&self.db).await?;
            let tools = docsdb::tool_calls::stats(&self.db).await?;
            let errors = monitor::errors(&self.db, ERRORS_READ).await?;
            let errors = grouped(&errors, STATUS_ERRORS);
            Ok(status_report(now, &services, &handles, &tools, &errors))
        };
        Ok(answer(report.await))
    }

    /// One service in detail.
    #[tool(
        description = "Reports one service in detail: its state, address, health probes of the last minutes (status code, latency, error) and uptime per hour over the last day.",
        annotations(
            title = "Service details",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn service_details(
        &self,
        Parameters(p): Parameters<ServiceParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let now = docsdb::now_ms();
        let name = p.name.trim().to_owned();
        let report = async {
            let Some(row) = monitor::service(&self.db, &name).await? else {
                let known: Vec<String> = monitor::services(&self.db)
                    .await?
                    .into_iter()
                    .map(|s| s.now.service)
                    .collect();
                return Ok(Err(format!(
                    "No service is named `{name}`. The services are: {}.",
                    known.join(", ")
                )));
            };
            let checks = monitor::recent_checks(&self.db, &name, 10).await?;
            let hours = monitor::hourly(&self.db, now - 24 * monitor::HOUR_MS, Some(&name)).await?;
            Ok(Ok(service_report(now, &row, &checks, &hours)))
        };
        Ok(match report.await {
            Ok(Ok(text)) => mcp_kit::tool_text(text),
            Ok(Err(unknown)) => mcp_kit::tool_error(unknown),
            Err(e) => answer(Err(e)),
        })
    }

    /// The newest errors.
    #[tool(
        description = "Lists the most recent errors of the last day across the stack, newest first: failed requests (handle, target, status), failed health probes (service, error) and failed tool calls (tool, server, error).",
        annotations(
            title = "Recent errors",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn recent_errors(
        &self,
        Parameters(p): Parameters<ErrorsParams>,
    ) -> Result<CallToolResult, ErrorData> {
        if !(1..=MAX_ERRORS).contains(&p.limit) {
            return Ok(mcp_kit::tool_error(format!(
                "limit must be between 1 and {MAX_ERRORS} (got {})",
                p.limit
            )));
        }
        let now = docsdb::now_ms();
        let report = async {
            let errors = monitor::errors(&self.db, ERRORS_READ).await?;
            let mut out = String::new();
            if errors.is_empty() {
                out.push_str("No errors in the last 24 hours.\n");
            }
            for e in &grouped(&errors, usize::try_from(p.limit).unwrap_or(1)) {
                error_line(&mut out, now, e);
            }
            Ok(out)
        };
        Ok(answer(report.await))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for MonitorTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "system-monitor",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "The homelab's health, read from its monitor: start with `stack_status`, then `service_details` or `recent_errors` for more.",
            )
    }
}

/// "42s ago", "3m ago", "2h ago", "5d ago".
fn ago(now_ms: i64, at_ms: i64) -> String {
    format!("{} ago", crate::page::ago(now_ms, Some(at_ms)))
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

fn cut(s: &str, n: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        return one_line;
    }
    let mut out: String = one_line.chars().take(n).collect();
    out.push('…');
    out
}

/// How bad a status is, for ordering: problems first.
fn rank(status: &str) -> u8 {
    match status {
        "down" => 0,
        "degraded" => 1,
        "unknown" => 2,
        "up" => 3,
        _ => 4,
    }
}

fn service_line(out: &mut String, now: i64, s: &ServiceRow) {
    let _ = write!(out, "- {} ({} layer", s.service, s.layer);
    if let Some(h) = &s.host {
        let _ = write!(out, ", host {h}");
    }
    let _ = write!(out, "): {}", s.status);
    if s.stale {
        out.push_str(" (its last probe is old)");
    }
    if let Some(since) = s.since_ms
        && s.status != "planned"
        && s.status != "retired"
    {
        let _ = write!(out, " since {}", ago(now, since));
    }
    if s.failures_in_row > 0 {
        let _ = write!(out, ", {} failed probes in a row", s.failures_in_row);
    }
    if let Some(e) = s.current_error() {
        let _ = write!(out, "; last error: {}", cut(e, 200));
    }
    if let Some(u) = s.uptime_24h
        && u < 1.0
    {
        let _ = write!(out, "; uptime 24 h {}", pct(u));
    }
    out.push('\n');
}

/// The same error again and again (same source, subject, target, status and message) as
/// one entry: the newest, how many times, since when.
pub struct Grouped<'a> {
    pub newest: &'a ErrorRow,
    pub times: usize,
    pub first_at_ms: i64,
}

/// `errors` (newest first) grouped, the `most` newest groups.
pub fn grouped(errors: &[ErrorRow], most: usize) -> Vec<Grouped<'_>> {
    let mut out: Vec<Grouped<'_>> = Vec::new();
    for e in errors {
        let same = |g: &Grouped<'_>| {
            let n = g.newest;
            (&n.source, &n.subject, &n.target, n.status, &n.error)
                == (&e.source, &e.subject, &e.target, e.status, &e.error)
        };
        if let Some(g) = out.iter_mut().find(|g| same(g)) {
            g.times += 1;
            g.first_at_ms = g.first_at_ms.min(e.at_ms);
        } else if out.len() < most {
            out.push(Grouped {
                newest: e,
                times: 1,
                first_at_ms: e.at_ms,
            });
        }
    }
    out
}

fn error_line(out: &mut String, now: i64, g: &Grouped<'_>) {
    let e = g.newest;
    let subject = e.subject.as_deref().unwrap_or("-");
    let what = match e.source.as_str() {
        "request" => format!(
            "request to {subject}{}",
            e.target
                .as_deref()
                .map(|t| format!(" (target {t})"))
                .unwrap_or_default()
        ),
        "health" => format!("health probe of {subject}"),
        "tool" => format!(
            "tool call {subject}{}",
            e.target
                .as_deref()
                .map(|t| format!(" on {t}"))
                .unwrap_or_else(|| " (no server has this tool)".into())
        ),
        other => format!("{other} {subject}"),
    };
    let _ = write!(out, "- {}: {what}", ago(now, e.at_ms));
    if let Some(s) = e.status {
        let _ = write!(out, " answered {s}");
    }
    if let Some(err) = &e.error {
        let _ = write!(out, ": {}", cut(err, 200));
    }
    if g.times > 1 {
        let _ = write!(
            out,
            " ({} times, the first {})",
            g.times,
            ago(now, g.first_at_ms)
        );
    } else if let Some(r) = &e.request_id {
        let _ = write!(out, " [request {r}]");
    }
    out.push('\n');
}

/// `stack_status`' report.
pub fn status_report(
    now: i64,
    services: &[ServiceRow],
    handles: &[HandleRow],
    tools: &[ToolStatsRow],
    errors: &[Grouped<'_>],
) -> String {
    let mut out = String::new();
    let counts = monitor::counts(services);
    let _ = writeln!(
        out,
        "Overall: {}. {}",
        counts.overall(),
        monitor::spoken_status(services)
    );
    let mut sorted: Vec<&ServiceRow> = services.iter().collect();
    sorted.sort_by_key(|s| (rank(&s.status), s.service.clone()));
    let _ = writeln!(out, "\nServices ({}):", services.len());
    for s in sorted {
        service_line(&mut out, now, s);
    }
    let busy: Vec<&HandleRow> = handles.iter().filter(|h| h.requests_1h > 0).collect();
    if !busy.is_empty() {
        out.push_str("\nRouting handles, last hour:\n");
        for h in busy {
            let _ = write!(
                out,
                "- {}: {} request{}, {} failed",
                h.handle,
                h.requests_1h,
                if h.requests_1h == 1 { "" } else { "s" },
                h.errors_1h
            );
            if let Some(ms) = h.avg_latency_ms_1h {
                let _ = write!(out, ", {} on average", monitor::show_ms(ms));
            }
            out.push('\n');
        }
    }
    let failing: Vec<&ToolStatsRow> = tools.iter().filter(|t| t.errors_24h > 0).collect();
    if !failing.is_empty() {
        out.push_str("\nTools that failed in the last 24 hours:\n");
        for t in failing {
            let _ = writeln!(
                out,
                "- {} on {}: {} of {} calls failed",
                t.tool,
                t.server.as_deref().unwrap_or("no server"),
                t.errors_24h,
                t.calls_24h
            );
        }
    }
    if errors.is_empty() {
        out.push_str("\nNo errors in the last 24 hours.\n");
    } else {
        out.push_str("\nMost recent errors, newest first:\n");
        for e in errors {
            error_line(&mut out, now, e);
        }
    }
    out
}

/// `service_details`' report.
pub fn service_report(now: i64, s: &ServiceRow, checks: &[CheckRow], hourly: &[HourRow]) -> String {
    let mut out = String::new();
    service_line(&mut out, now, s);
    if let Some(url) = &s.base_url {
        let _ = writeln!(
            out,
            "Address: {url} (probed at {})",
            s.health_path.as_deref().unwrap_or("/")
        );
    }
    for (label, v) in [
        ("last hour", s.uptime_1h),
        ("24 hours", s.uptime_24h),
        ("7 days", s.uptime_7d),
    ] {
        if let Some(u) = v {
            let _ = writeln!(out, "Uptime {label}: {}", pct(u));
        }
    }
    if checks.is_empty() {
        out.push_str("No probes recorded yet.\n");
    } else {
        out.push_str("Last probes, newest first:\n");
        for c in checks {
            let _ = write!(
                out,
                "- {}: {}",
                ago(now, c.checked_at_ms),
                if c.ok { "ok" } else { "failed" }
            );
            if let Some(code) = c.status_code {
                let _ = write!(out, ", status {code}");
            }
            if let Some(ms) = c.latency_ms {
                let _ = write!(out, ", {}", monitor::show_ms(ms));
            }
            if let Some(e) = &c.error {
                let _ = write!(out, ", {}", cut(e, 200));
            }
            out.push('\n');
        }
    }
    let bad: Vec<String> = hourly
        .iter()
        .filter(|h| h.failures > 0)
        .map(|h| {
            format!(
                "{} ({} of {} probes failed)",
                ago(now, h.hour_ms),
                h.failures,
                h.checks
            )
        })
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(out, "Hours with failed probes: {}", bad.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_one_line() {
        assert_eq!(cut("a\n  b", 10), "a b");
        assert_eq!(cut("ééééé", 3), "ééé…");
    }

    #[test]
    fn ages_read_as_ages() {
        assert_eq!(ago(100_000, 58_000), "42s ago");
        assert_eq!(ago(10_000_000, 10_000_000 - 180_000), "3m ago");
        assert_eq!(ago(0, 1000), "0s ago");
    }
}
