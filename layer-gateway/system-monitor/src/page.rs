//! `GET /`: the dashboard. Server-rendered HTML with inline CSS and SVG — no scripts, no
//! assets from anywhere — that reloads itself. Missing or unreadable data shows as
//! "unknown", never as a broken page.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use docsdb::monitor::{
    self, ErrorRow, HandleRow, HandleUserRow, HostRow, HourRow, ModelRow, ServiceRow,
};

use crate::state::AppState;
use docsdb::monitor::counts;
use docsdb::tool_calls::ToolStatsRow;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), monitor::show_ms)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.2}%", v * 100.0))
}

fn bytes(v: Option<i64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(b) if b.abs() >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        Some(b) => format!("{:.0} MiB", b as f64 / f64::from(1u32 << 20)),
    }
}

/// "3m", "2h", "5d" ago.
pub(crate) fn ago(now_ms: i64, at_ms: Option<i64>) -> String {
    let Some(at) = at_ms else {
        return "–".to_owned();
    };
    let s = (now_ms - at).max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn status_class(s: &str) -> &'static str {
    match s {
        "up" | "ok" => "up",
        "degraded" => "degraded",
        "down" => "down",
        _ => "unknown",
    }
}

/// 24 hourly bars, oldest first: green all good, amber some failed, red all failed, grey none.
fn uptime_bars(now_ms: i64, hours: &[&HourRow]) -> String {
    let this_hour = now_ms.div_euclid(monitor::HOUR_MS) * monitor::HOUR_MS;
    let by_hour: HashMap<i64, &HourRow> = hours.iter().map(|h| (h.hour_ms, *h)).collect();
    let mut svg = String::from(
        r#"<svg class="bars" viewBox="0 0 192 20" width="192" height="20" role="img" aria-label="uptime, last 24 hours">"#,
    );
    for i in 0..24 {
        let hour = this_hour - (23 - i) * monitor::HOUR_MS;
        let (class, title) = match by_hour.get(&hour) {
            None => ("none", "no probes".to_owned()),
            Some(h) if h.failures == 0 => ("up", format!("{} probes, all ok", h.checks)),
            Some(h) if h.failures >= h.checks => {
                ("down", format!("{} probes, all failed", h.checks))
            }
            Some(h) => (
                "degraded",
                format!("{} of {} probes failed", h.failures, h.checks),
            ),
        };
        let _ = write!(
            svg,
            r#"<rect class="{class}" x="{}" y="0" width="6" height="20" rx="1"><title>{}</title></rect>"#,
            i * 8,
            esc(&title)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Average probe latency per hour as a line.
fn sparkline(hours: &[&HourRow]) -> String {
    let pts: Vec<f64> = hours.iter().filter_map(|h| h.latency_ms).collect();
    if pts.len() < 2 {
        return r#"<span class="muted">–</span>"#.to_owned();
    }
    let max = pts.iter().copied().fold(f64::MIN, f64::max).max(1e-9);
    let step = 96.0 / (pts.len() - 1) as f64;
    let line: Vec<String> = pts
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, 19.0 - 18.0 * v / max))
        .collect();
    format!(
        r#"<svg class="spark" viewBox="0 0 96 20" width="96" height="20" role="img" aria-label="probe latency"><polyline points="{}"/><title>max {:.0} ms</title></svg>"#,
        line.join(" "),
        max
    )
}

fn capacity_bar(h: &HostRow) -> String {
    let Some(total) = h.memory_bytes.filter(|t| *t > 0) else {
        return r#"<span class="muted">memory unknown</span>"#.to_owned();
    };
    let used = h.models_footprint_bytes.max(0) as f64 / total as f64;
    let w = (used.min(1.0) * 160.0).round();
    let class = if used > 0.9 {
        "down"
    } else if used > 0.7 {
        "degraded"
    } else {
        "up"
    };
    format!(
        r#"<svg class="cap" viewBox="0 0 160 12" width="160" height="12" role="img" aria-label="memory used by models"><rect class="track" x="0" y="0" width="160" height="12" rx="2"/><rect class="{class}" x="0" y="0" width="{w}" height="12" rx="2"/></svg> {:.0}%"#,
        used * 100.0
    )
}

struct Data {
    services: Result<Vec<ServiceRow>, String>,
    hourly: Vec<HourRow>,
    handles: Result<Vec<HandleRow>, String>,
    callers: Vec<HandleUserRow>,
    models: Result<Vec<ModelRow>, String>,
    hosts: Result<Vec<HostRow>, String>,
    errors: Result<Vec<ErrorRow>, String>,
    tools: Result<Vec<ToolStatsRow>, String>,
}

async fn load(state: &AppState, now_ms: i64) -> Data {
    let db = &state.db;
    let s = |e: docsdb::Error| e.to_string();
    Data {
        services: monitor::services(db).await.map_err(s),
        hourly: monitor::hourly(db, now_ms - 24 * monitor::HOUR_MS, None)
            .await
            .unwrap_or_default(),
        handles: monitor::handles(db).await.map_err(s),
        callers: monitor::handle_users(db, None).await.unwrap_or_default(),
        models: monitor::models(db).await.map_err(s),
        hosts: monitor::hosts(db).await.map_err(s),
        errors: monitor::errors(db, 15).await.map_err(s),
        tools: docsdb::tool_calls::stats(db).await.map_err(s),
    }
}

pub async fn dashboard(State(state): State<Arc<AppState>>) -> Html<String> {
    let now = docsdb::now_ms();
    let d = load(&state, now).await;
    Html(render(&d, now, state.config.page_refresh.as_secs().max(1)))
}

fn render(d: &Data, now: i64, refresh_s: u64) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let (overall_word, summary) = match &d.services {
        Ok(s) => {
            let c = counts(s);
            (
                c.overall(),
                format!(
                    "{} up · {} degraded · {} down · {} unknown",
                    c.up, c.degraded, c.down, c.unknown
                ),
            )
        }
        Err(_) => ("unknown", "the system-docs DB could not be read".to_owned()),
    };
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh_s}">
<title>homelab-llm · {overall_word}</title><style>{CSS}</style></head><body>
<header><h1>homelab-llm</h1><span id="overall" class="pill {}" data-status="{overall_word}">{overall_word}</span>
<span class="muted">{}</span></header><main>"#,
        status_class(overall_word),
        esc(&summary)
    );
    if let Err(e) = &d.services {
        let _ = write!(h, r#"<p class="banner">Status unknown: {}</p>"#, esc(e));
    }
    let services = d.services.as_deref().unwrap_or(&[]);
    let mut hours: HashMap<&str, Vec<&HourRow>> = HashMap::new();
    for row in &d.hourly {
        hours.entry(row.service.as_str()).or_default().push(row);
    }
    for (layer, rows) in monitor::by_layer(services) {
        let _ = write!(
            h,
            r#"<section class="layer" id="layer-{layer}"><h2>{layer}</h2><table><thead><tr><th>service</th><th>status</th><th>last 24 h</th><th>uptime 24 h</th><th>p50 / p95</th><th>latency</th><th>since</th><th>host</th><th>last error</th></tr></thead><tbody>"#
        );
        for s in rows {
            let hs = hours.get(s.service.as_str()).cloned().unwrap_or_default();
            let _ = write!(
                h,
                r#"<tr class="service" data-service="{name}" data-status="{st}"><td><span class="dot {cls}"></span>{name}</td><td class="{cls}">{st}{stale}</td><td>{bars}</td><td>{up}</td><td>{p50} / {p95}</td><td>{spark}</td><td>{since}</td><td>{host}</td><td class="err">{err}</td></tr>"#,
                name = esc(&s.service),
                st = esc(&s.status),
                cls = status_class(&s.status),
                stale = if s.stale { " (stale)" } else { "" },
                bars = uptime_bars(now, &hs),
                up = pct(s.uptime_24h),
                p50 = opt_ms(s.latency_p50_ms),
                p95 = opt_ms(s.latency_p95_ms),
                spark = sparkline(&hs),
                since = ago(now, s.since_ms),
                host = esc(s.host.as_deref().unwrap_or("–")),
                err = esc(&s
                    .current_error()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect::<String>()),
            );
        }
        h.push_str("</tbody></table></section>");
    }
    if services.is_empty() && d.services.is_ok() {
        h.push_str(r#"<p class="muted">No services are registered yet (homelab registry import FILE).</p>"#);
    }

    h.push_str(r#"<section id="handles"><h2>handles</h2>"#);
    match &d.handles {
        Err(e) => {
            let _ = write!(h, r#"<p class="banner">unknown: {}</p>"#, esc(e));
        }
        Ok(rows) => {
            h.push_str("<table><thead><tr><th>handle</th><th>strategy</th><th>targets</th><th>req 1 h</th><th>errors 1 h</th><th>req 24 h</th><th>errors 24 h</th><th>p50 / p95</th><th>TTFT</th><th>tokens/s</th><th>last</th></tr></thead><tbody>");
            for r in rows {
                let _ = write!(
                    h,
                    r#"<tr class="handle" data-handle="{name}"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    esc(&r.strategy),
                    r.targets,
                    r.requests_1h,
                    if r.error_rate_1h.unwrap_or(0.0) > 0.05 {
                        "down"
                    } else {
                        ""
                    },
                    pct(r.error_rate_1h),
                    r.requests_24h,
                    pct(r.error_rate_24h),
                    opt_ms(r.p50_latency_ms_24h),
                    opt_ms(r.p95_latency_ms_24h),
                    opt_ms(r.avg_ttft_ms_24h),
                    r.tokens_per_s_24h
                        .map_or_else(|| "–".to_owned(), |v| format!("{v:.1}")),
                    ago(now, r.last_request_at_ms),
                    name = esc(&r.handle),
                );
            }
            h.push_str("</tbody></table>");
        }
    }
    if !d.callers.is_empty() {
        h.push_str("<h3>by caller, 24 h</h3><table><thead><tr><th>handle</th><th>key</th><th>user</th><th>role</th><th>requests</th><th>errors</th><th>chats</th><th>tokens in / out</th><th>avg latency</th><th>last</th></tr></thead><tbody>");
        for c in &d.callers {
            let user = match (&c.user_name, &c.user_email, &c.user_id) {
                (Some(n), Some(e), _) => format!("{} &lt;{}&gt;", esc(n), esc(e)),
                (Some(n), None, _) => esc(n),
                (None, Some(e), _) => esc(e),
                (None, None, Some(id)) => esc(id),
                (None, None, None) => "–".to_owned(),
            };
            let _ = write!(
                h,
                r#"<tr class="caller" data-handle="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&c.handle),
                esc(&c.handle),
                c.key_name.as_deref().map_or_else(|| "–".to_owned(), esc),
                user,
                c.user_role.as_deref().map_or_else(|| "–".to_owned(), esc),
                c.requests_24h,
                c.errors_24h,
                c.chats_24h,
                c.prompt_tokens_24h,
                c.completion_tokens_24h,
                opt_ms(c.avg_latency_ms_24h),
                ago(now, c.last_request_at_ms),
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>");

    h.push_str(r#"<section id="tools"><h2>tool calls, 24 h</h2>"#);
    match &d.tools {
        Err(e) => {
            let _ = write!(h, r#"<p class="banner">unknown: {}</p>"#, esc(e));
        }
        Ok(rows) if rows.is_empty() => {
            h.push_str(r#"<p class="muted">No tool calls in the last 24 hours.</p>"#);
        }
        Ok(rows) => {
            h.push_str("<table><thead><tr><th>tool</th><th>server</th><th>calls</th><th>failed</th><th>callers</th><th>avg</th><th>slowest</th><th>last</th></tr></thead><tbody>");
            for t in rows {
                let _ = write!(
                    h,
                    r#"<tr class="tool" data-tool="{tool}"><td>{tool}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    esc(t.server.as_deref().unwrap_or("no server")),
                    t.calls_24h,
                    if t.errors_24h > 0 { "down" } else { "" },
                    t.errors_24h,
                    t.callers_24h,
                    opt_ms(t.avg_duration_ms_24h),
                    opt_ms(t.max_duration_ms_24h),
                    ago(now, t.last_call_at_ms),
                    tool = esc(&t.tool),
                );
            }
            h.push_str("</tbody></table>");
        }
    }
    h.push_str("</section>");

    h.push_str(r#"<section id="capacity"><h2>models and hosts</h2>"#);
    if let Ok(hosts) = &d.hosts {
        h.push_str("<table><thead><tr><th>host</th><th>memory</th><th>models</th><th>used by models</th><th>headroom</th><th>loaded now</th><th>free now</th></tr></thead><tbody>");
        for x in hosts {
            let _ = write!(
                h,
                r#"<tr class="host" data-host="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td></tr>"#,
                esc(&x.host),
                esc(&x.host),
                bytes(x.memory_bytes),
                x.models,
                capacity_bar(x),
                bytes(x.headroom_bytes),
                x.loaded_models,
                bytes(Some(x.loaded_bytes)),
                bytes(x.free_bytes)
            );
        }
        h.push_str("</tbody></table>");
    }
    match &d.models {
        Err(e) => {
            let _ = write!(h, r#"<p class="banner">models unknown: {}</p>"#, esc(e));
        }
        Ok(models) => {
            h.push_str("<table><thead><tr><th>model</th><th>host</th><th>format</th><th>quant</th><th>context</th><th>on disk</th><th>memory</th><th>loaded</th></tr></thead><tbody>");
            for m in models {
                let loaded = match (&m.loaded_by, m.loaded) {
                    (Some(by), true) => format!(r#"<span class="up">by {}</span>"#, esc(by)),
                    _ => "–".to_owned(),
                };
                let _ = write!(
                    h,
                    r#"<tr class="model"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{loaded}</td></tr>"#,
                    esc(&m.model_id),
                    esc(m.host.as_deref().unwrap_or("–")),
                    esc(m.format.as_deref().unwrap_or("–")),
                    esc(m.quantization.as_deref().unwrap_or("–")),
                    m.context_length
                        .map_or_else(|| "–".to_owned(), |c| c.to_string()),
                    bytes(m.size_on_disk_bytes),
                    bytes(m.memory_footprint_bytes)
                );
            }
            h.push_str("</tbody></table>");
        }
    }
    h.push_str("</section>");

    if let Ok(errors) = &d.errors
        && !errors.is_empty()
    {
        h.push_str(r#"<section id="errors"><h2>recent errors</h2><table><tbody>"#);
        for e in errors {
            let _ = write!(
                h,
                "<tr><td>{} ago</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                ago(now, Some(e.at_ms)),
                esc(&e.source),
                esc(e.subject.as_deref().unwrap_or("–")),
                e.status.map_or_else(String::new, |s| s.to_string()),
                esc(&e
                    .error
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(160)
                    .collect::<String>())
            );
        }
        h.push_str("</tbody></table></section>");
    }
    h.push_str(r#"</main><footer class="muted">system-monitor · views of the system-docs DB · <a href="/api/status">/api/status</a> · <a href="/metrics">/metrics</a></footer></body></html>"#);
    h
}

const CSS: &str = "
:root{--bg:#0f1419;--fg:#d8dee9;--muted:#7b8794;--up:#3fb950;--degraded:#d29922;--down:#f85149;--none:#30363d;--card:#161b22}
body{margin:0;font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;background:var(--bg);color:var(--fg)}
header{display:flex;gap:1rem;align-items:center;padding:1rem 1.5rem;border-bottom:1px solid var(--none)}
h1{font-size:1.2rem;margin:0}h2{font-size:1rem;text-transform:capitalize;margin:1.5rem 0 .5rem}
main{padding:0 1.5rem 2rem}table{border-collapse:collapse;width:100%;background:var(--card)}
th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid var(--none);white-space:nowrap}
th{color:var(--muted);font-weight:500}td.err{white-space:normal;color:var(--muted);max-width:28rem}
.pill{padding:.15rem .6rem;border-radius:1rem;font-weight:600;color:#0f1419;background:var(--none)}
.pill.up{background:var(--up)}.pill.degraded{background:var(--degraded)}.pill.down{background:var(--down)}.pill.unknown{background:var(--muted)}
.dot{display:inline-block;width:.6rem;height:.6rem;border-radius:50%;margin-right:.5rem;background:var(--muted)}
.dot.up{background:var(--up)}.dot.degraded{background:var(--degraded)}.dot.down{background:var(--down)}
td.up{color:var(--up)}td.degraded{color:var(--degraded)}td.down{color:var(--down)}td.unknown{color:var(--muted)}
svg rect.up{fill:var(--up)}svg rect.degraded{fill:var(--degraded)}svg rect.down{fill:var(--down)}svg rect.none,svg rect.track{fill:var(--none)}
svg.spark polyline{fill:none;stroke:#58a6ff;stroke-width:1.5}
.muted{color:var(--muted)}.banner{background:#3d1f20;padding:.5rem 1rem;border-radius:.3rem}
a{color:#58a6ff}footer{padding:1rem 1.5rem}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn an_unreadable_db_still_renders_a_page() {
        let d = Data {
            services: Err("database is locked".into()),
            hourly: Vec::new(),
            handles: Err("database is locked".into()),
            callers: Vec::new(),
            models: Err("x".into()),
            hosts: Err("x".into()),
            errors: Err("x".into()),
            tools: Err("x".into()),
        };
        let page = render(&d, 0, 15);
        assert!(page.contains(r#"data-status="unknown""#));
        assert!(page.contains("database is locked"));
        assert!(page.ends_with("</html>"));
    }
}
