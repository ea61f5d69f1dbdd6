//! The prober: every active service with a health URL, on its own interval with jitter, a
//! bounded number in flight, each probe one `health_checks` row. After each probe the
//! service's status is read back from the view (so flapping damping is the view's rule) and
//! a change goes to the alerter.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docsdb::health::Check;
use docsdb::monitor::ProbeTarget;

use crate::alerts::{self, Alert};
use crate::state::AppState;

/// How often the list of services is re-read from the registry.
const REFRESH: Duration = Duration::from_secs(5);

/// Runs until the task is aborted.
pub async fn run(state: Arc<AppState>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(
        state.config.probe_concurrency.max(1),
    ));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut due: HashMap<String, (Instant, ProbeTarget)> = HashMap::new();
    let mut refreshed: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if refreshed.is_none_or(|t| now.duration_since(t) >= REFRESH) {
            refreshed = Some(now);
            match docsdb::monitor::probe_targets(&state.db).await {
                Ok(targets) => {
                    let names: HashSet<String> =
                        targets.iter().map(|t| t.service.clone()).collect();
                    due.retain(|name, _| names.contains(name));
                    for t in targets {
                        match due.get_mut(&t.service) {
                            Some(slot) => slot.1 = t,
                            None => {
                                // Spread first probes over the first second (or interval).
                                let first =
                                    jitter(interval(&state, &t).min(Duration::from_secs(1)));
                                due.insert(t.service.clone(), (now + first, t));
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the services to probe"),
            }
        }
        for (name, (at, target)) in due.iter_mut() {
            if *at > now {
                continue;
            }
            let every = interval(&state, target);
            // ±10% jitter keeps probes from bunching up.
            *at = now + every.mul_f64(0.9) + jitter(every.mul_f64(0.2));
            {
                let Ok(mut f) = in_flight.lock() else {
                    continue;
                };
                if !f.insert(name.clone()) {
                    continue; // the previous probe is still running
                }
            }
            let (state, target, sem, in_flight) = (
                state.clone(),
                target.clone(),
                sem.clone(),
                in_flight.clone(),
            );
            let tasks = state.tasks.clone();
            tasks.spawn(async move {
                if let Ok(_permit) = sem.acquire_owned().await {
                    probe_and_record(&state, &target).await;
                }
                if let Ok(mut f) = in_flight.lock() {
                    f.remove(&target.service);
                }
            });
        }
        let next = due
            .values()
            .map(|(at, _)| *at)
            .min()
            .unwrap_or(now + REFRESH)
            .min(now + Duration::from_secs(1));
        tokio::time::sleep_until(next.into()).await;
    }
}

fn interval(state: &AppState, t: &ProbeTarget) -> Duration {
    t.interval_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or(state.config.probe_interval, Duration::from_millis)
        .max(Duration::from_millis(100))
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// Probes one service, records the check and reports a status change.
pub async fn probe_and_record(state: &AppState, target: &ProbeTarget) {
    let check = probe(&state.http, &target.url, state.config.probe_timeout).await;
    state.metrics.probe(check.ok);
    let at = docsdb::now_ms();
    if let Err(e) = docsdb::health::record(&state.db, &target.service, at, &check).await {
        tracing::warn!(service = %target.service, error = %e, "cannot record a probe");
        return;
    }
    let row = match docsdb::health::status(&state.db, &target.service).await {
        Ok(Some(row)) => row,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(service = %target.service, error = %e, "cannot read the status back");
            return;
        }
    };
    let previous = {
        let Ok(mut last) = state.last_status.lock() else {
            return;
        };
        last.insert(row.service.clone(), row.status.clone())
    };
    let from = previous.unwrap_or_else(|| "unknown".to_owned());
    if from != row.status {
        tracing::info!(service = %row.service, from = %from, to = %row.status, "status changed");
        if alerts::worth_telling(&from, &row.status, state.config.alert_degraded) {
            state.alert(Alert::from_row(&row, &from, at));
        }
    }
}

/// One GET of a health URL: 2xx is up; anything else, with what went wrong.
pub async fn probe(http: &reqwest::Client, url: &str, timeout: Duration) -> Check {
    let t0 = Instant::now();
    let res = http.get(url).timeout(timeout).send().await;
    let latency_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    match res {
        Ok(r) => {
            let status = r.status();
            if status.is_success() {
                Check {
                    ok: true,
                    status_code: Some(status.as_u16()),
                    latency_ms,
                    error: None,
                }
            } else {
                let body = tokio::time::timeout(Duration::from_secs(1), r.bytes())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let snippet: String = String::from_utf8_lossy(&body[..body.len().min(300)])
                    .trim()
                    .to_owned();
                Check {
                    ok: false,
                    status_code: Some(status.as_u16()),
                    latency_ms,
                    error: Some(if snippet.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {snippet}")
                    }),
                }
            }
        }
        Err(e) => Check {
            ok: false,
            status_code: None,
            latency_ms,
            error: Some(describe(&e, timeout)),
        },
    }
}

/// A one-line reason: "timed out after 5s", "connection refused", ...
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if e.is_connect() {
        format!("cannot connect: {msg}")
    } else {
        msg
    }
}
