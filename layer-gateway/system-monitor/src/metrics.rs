//! `GET /metrics`: Prometheus gauges of what the views say, read at scrape time, plus the
//! monitor's own counters.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use docsdb::monitor;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Error;
use crate::state::AppState;

type Labels = Vec<(String, String)>;
type FGauge = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Result<impl IntoResponse, Error> {
    let services = monitor::services(&state.db).await?;
    let handles = monitor::handles(&state.db).await?;
    let hosts = monitor::hosts(&state.db).await?;

    let mut reg = Registry::with_prefix("homelab");
    let up = FGauge::default();
    let uptime = FGauge::default();
    let latency = FGauge::default();
    for s in &services {
        let host = s.host.as_deref().unwrap_or("");
        let value = match s.status.as_str() {
            "up" => 1.0,
            "degraded" => 0.5,
            "down" => 0.0,
            _ => continue, // unknown or inactive: no sample rather than a false one
        };
        up.get_or_create(&labels(&[
            ("service", &s.service),
            ("layer", &s.layer),
            ("host", host),
        ]))
        .set(value);
        for (w, v) in [
            ("1h", s.uptime_1h),
            ("24h", s.uptime_24h),
            ("7d", s.uptime_7d),
        ] {
            if let Some(v) = v {
                uptime
                    .get_or_create(&labels(&[("service", &s.service), ("window", w)]))
                    .set(v);
            }
        }
        for (q, v) in [("0.5", s.latency_p50_ms), ("0.95", s.latency_p95_ms)] {
            if let Some(v) = v {
                latency
                    .get_or_create(&labels(&[("service", &s.service), ("quantile", q)]))
                    .set(v / 1000.0);
            }
        }
    }
    reg.register(
        "service_up",
        "Service status from the probes: 1 up, 0.5 degraded, 0 down",
        up,
    );
    reg.register(
        "service_uptime_ratio",
        "Share of successful probes over the window",
        uptime,
    );
    reg.register(
        "service_probe_latency_seconds",
        "Latency of successful probes over the last 24h",
        latency,
    );

    let requests = FGauge::default();
    let error_rate = FGauge::default();
    for h in &handles {
        for (w, n, rate) in [
            ("1h", h.requests_1h, h.error_rate_1h),
            ("24h", h.requests_24h, h.error_rate_24h),
        ] {
            requests
                .get_or_create(&labels(&[("handle", &h.handle), ("window", w)]))
                .set(n as f64);
            if let Some(r) = rate {
                error_rate
                    .get_or_create(&labels(&[("handle", &h.handle), ("window", w)]))
                    .set(r);
            }
        }
    }
    reg.register(
        "handle_requests",
        "Requests per handle over the window",
        requests,
    );
    reg.register(
        "handle_error_rate",
        "Share of failed requests per handle over the window",
        error_rate,
    );

    let headroom = FGauge::default();
    for h in &hosts {
        if let Some(b) = h.headroom_bytes {
            headroom
                .get_or_create(&labels(&[("host", &h.host)]))
                .set(b as f64);
        }
    }
    reg.register(
        "host_memory_headroom_bytes",
        "Host memory minus the footprint of its models",
        headroom,
    );

    let c = &state.metrics;
    let own = [
        ("monitor_probes_ok", "Probes that succeeded", &c.probes_ok),
        (
            "monitor_probes_failed",
            "Probes that failed",
            &c.probes_failed,
        ),
        ("monitor_alerts_sent", "Alerts delivered", &c.alerts_sent),
        (
            "monitor_alerts_failed",
            "Alerts given up after every attempt",
            &c.alerts_failed,
        ),
        (
            "monitor_alerts_dropped",
            "Alerts dropped because the queue was full",
            &c.alerts_dropped,
        ),
        (
            "monitor_rollup_rows",
            "Raw rows folded into rollups",
            &c.rollup_rows,
        ),
    ];
    for (name, help, v) in own {
        reg.register(name, help, ConstCounter::new(v.load(Ordering::Relaxed)));
    }

    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| Error::BadConfig(format!("metrics encoding: {e}")))?;
    if !out.ends_with('\n') {
        let _ = writeln!(out);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    ))
}
