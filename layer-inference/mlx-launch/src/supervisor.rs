//! The children: one engine process per model, started on demand, reused while it runs,
//! stopped when idle or when its memory is needed, restarted when it died.
//!
//! Starting and stopping go through one async lock (`switch`), so model switches are
//! serialised and the memory budget is checked against a stable set of children; requests to
//! a model that already runs take only the short map lock and never wait behind a switch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::error::Error;
use crate::registry::ModelEntry;

/// Lines of a child's output kept for error messages.
const TAIL_LINES: usize = 8;

/// How children are started and kept.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The default command, as shell words with `{path}`, `{port}`, `{model_id}`.
    pub command: Vec<String>,
    /// Per-model commands.
    pub per_model: HashMap<String, Vec<String>>,
    /// The `model` sent to a child (`{model_id}`, `{path}` substituted).
    pub upstream_model: String,
    pub memory_budget: u64,
    pub idle_timeout: Duration,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
}

/// A running child.
struct Running {
    port: u16,
    process: Child,
    memory: u64,
    in_flight: Arc<AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
    started: Instant,
}

/// A request's hold on a running child: while any lease is alive the child is neither idle-
/// stopped nor evicted.
pub struct Lease {
    pub model_id: String,
    pub base_url: String,
    pub upstream_model: String,
    pub pid: Option<u32>,
    in_flight: Arc<AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One child, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildStatus {
    pub model_id: String,
    pub pid: Option<u32>,
    pub port: u16,
    pub memory_bytes: u64,
    pub in_flight: usize,
    pub idle_ms: u64,
    pub up_ms: u64,
}

/// Where the supervisor records which models are loaded (`model_residency`).
#[derive(Debug, Clone)]
pub struct Residency {
    pub db: docsdb::Db,
    pub host: String,
}

/// The service name residency rows carry.
pub const SERVICE: &str = "mlx-launch";

pub struct Supervisor {
    launch: Launch,
    residency: Option<Residency>,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    children: Mutex<HashMap<String, Running>>,
    switch: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    pub starts: AtomicU64,
    pub stops: AtomicU64,
}

impl Supervisor {
    pub fn new(
        launch: Launch,
        models: BTreeMap<String, ModelEntry>,
        residency: Option<Residency>,
    ) -> Self {
        Supervisor {
            launch,
            residency,
            models: RwLock::new(models),
            children: Mutex::new(HashMap::new()),
            switch: tokio::sync::Mutex::new(()),
            // Used for readiness probes and for forwarding: bodies pass through as the child
            // encoded them, redirects are not followed.
            http: reqwest::Client::builder()
                .no_gzip()
                .no_brotli()
                .no_deflate()
                .no_zstd()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            starts: AtomicU64::new(0),
            stops: AtomicU64::new(0),
        }
    }

    /// The HTTP client that talks to the children.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn budget(&self) -> u64 {
        self.launch.memory_budget
    }

    /// Replaces the registry (children of models no longer listed keep running until idle).
    pub fn set_models(&self, models: BTreeMap<String, ModelEntry>) {
        if let Ok(mut m) = self.models.write() {
            *m = models;
        }
    }

    pub fn models(&self) -> BTreeMap<String, ModelEntry> {
        self.models.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// The running children.
    pub fn status(&self) -> Vec<ChildStatus> {
        let Ok(children) = self.children.lock() else {
            return Vec::new();
        };
        let mut out: Vec<ChildStatus> = children
            .iter()
            .map(|(id, r)| ChildStatus {
                model_id: id.clone(),
                pid: r.process.id(),
                port: r.port,
                memory_bytes: r.memory,
                in_flight: r.in_flight.load(Ordering::Acquire),
                idle_ms: r
                    .last_used
                    .lock()
                    .map(|t| t.elapsed().as_millis() as u64)
                    .unwrap_or(0),
                up_ms: r.started.elapsed().as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.model_id.cmp(&b.model_id));
        out
    }

    /// A lease on `model_id`'s child, starting it (and making room for it) if needed.
    pub async fn acquire(&self, model_id: &str) -> Result<Lease, Error> {
        let entry = self
            .models
            .read()
            .ok()
            .and_then(|m| m.get(model_id).cloned())
            .ok_or_else(|| Error::UnknownModel(model_id.to_owned()))?;
        if let Some(l) = self.lease_running(&entry) {
            return Ok(l);
        }
        let _switch = self.switch.lock().await;
        if let Some(l) = self.lease_running(&entry) {
            return Ok(l);
        }
        self.make_room(&entry).await?;
        let running = match self.start(&entry).await {
            Ok(r) => r,
            Err(e) => {
                // A child that died before (and so may still be recorded) is gone for good.
                self.record(&entry.model_id, None).await;
                return Err(e);
            }
        };
        self.record(&entry.model_id, Some(entry.memory_bytes)).await;
        let mut children = self
            .children
            .lock()
            .map_err(|_| Error::BadRequest("supervisor state poisoned".into()))?;
        children.insert(entry.model_id.clone(), running);
        drop(children);
        self.lease_running(&entry).ok_or_else(|| Error::Spawn {
            model: entry.model_id.clone(),
            message: "it exited right after it became ready".into(),
        })
    }

    /// A lease on a child that is running now; a child found dead is removed.
    fn lease_running(&self, entry: &ModelEntry) -> Option<Lease> {
        let mut children = self.children.lock().ok()?;
        let r = children.get_mut(&entry.model_id)?;
        match r.process.try_wait() {
            Ok(None) => {
                r.in_flight.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut t) = r.last_used.lock() {
                    *t = Instant::now();
                }
                Some(Lease {
                    model_id: entry.model_id.clone(),
                    base_url: format!("http://127.0.0.1:{}", r.port),
                    upstream_model: self.upstream_model(entry),
                    pid: r.process.id(),
                    in_flight: r.in_flight.clone(),
                    last_used: r.last_used.clone(),
                })
            }
            exited => {
                tracing::warn!(model = %entry.model_id, status = ?exited, "engine exited; it will be started again");
                children.remove(&entry.model_id);
                None
            }
        }
    }

    /// Records `model_id` as loaded (with its memory) or not. A failure to write is logged:
    /// the inventory lags, serving goes on.
    async fn record(&self, model_id: &str, loaded: Option<u64>) {
        let Some(r) = &self.residency else {
            return;
        };
        let result = match loaded {
            Some(bytes) => docsdb::residency::mark_loaded(
                &r.db,
                &r.host,
                model_id,
                SERVICE,
                i64::try_from(bytes).unwrap_or(i64::MAX),
            )
            .await
            .map(|_| ()),
            None => docsdb::residency::mark_unloaded(&r.db, &r.host, model_id).await,
        };
        if let Err(e) = result {
            tracing::warn!(model = %model_id, error = %e, "could not record the model's residency");
        }
    }

    /// Forgets every residency row of this service on this host (at start and at stop).
    pub async fn clear_residency(&self) {
        if let Some(r) = &self.residency
            && let Err(e) = docsdb::residency::clear_service(&r.db, &r.host, SERVICE).await
        {
            tracing::warn!(error = %e, "could not clear the residency rows");
        }
    }

    fn upstream_model(&self, entry: &ModelEntry) -> String {
        self.launch
            .upstream_model
            .replace("{model_id}", &entry.model_id)
            .replace("{path}", &entry.path)
    }

    /// Stops least-recently-used idle children until `entry` fits in the budget.
    async fn make_room(&self, entry: &ModelEntry) -> Result<(), Error> {
        let budget = self.launch.memory_budget;
        if entry.memory_bytes > budget {
            return Err(Error::TooBig {
                model: entry.model_id.clone(),
                need: entry.memory_bytes,
                budget,
            });
        }
        loop {
            let (used, victim) = {
                let children = self
                    .children
                    .lock()
                    .map_err(|_| Error::BadRequest("supervisor state poisoned".into()))?;
                let used: u64 = children.values().map(|r| r.memory).sum();
                let victim = children
                    .iter()
                    .filter(|(_, r)| r.in_flight.load(Ordering::Acquire) == 0)
                    .min_by_key(|(_, r)| {
                        r.last_used
                            .lock()
                            .map(|t| *t)
                            .unwrap_or_else(|_| Instant::now())
                    })
                    .map(|(id, _)| id.clone());
                (used, victim)
            };
            if used + entry.memory_bytes <= budget {
                return Ok(());
            }
            match victim {
                Some(id) => {
                    tracing::info!(stop = %id, start = %entry.model_id, used, budget, "stopping the least recently used model to make room");
                    self.stop(&id).await;
                }
                None => {
                    return Err(Error::BudgetBusy {
                        model: entry.model_id.clone(),
                        need: entry.memory_bytes,
                        free: budget.saturating_sub(used),
                    });
                }
            }
        }
    }

    /// Starts the child and waits until it really answers a chat request.
    async fn start(&self, entry: &ModelEntry) -> Result<Running, Error> {
        let port = free_port().map_err(|e| Error::Spawn {
            model: entry.model_id.clone(),
            message: format!("no free port: {e}"),
        })?;
        let template = self
            .launch
            .per_model
            .get(&entry.model_id)
            .unwrap_or(&self.launch.command);
        let argv: Vec<String> = template
            .iter()
            .map(|w| {
                w.replace("{path}", &entry.path)
                    .replace("{port}", &port.to_string())
                    .replace("{model_id}", &entry.model_id)
            })
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(Error::Template(String::new(), "empty command".into()));
        };
        tracing::info!(model = %entry.model_id, port, command = %argv.join(" "), "starting engine");
        let mut process = Command::new(program)
            .args(args)
            // This supervisor records its children's residency; an engine child that reads
            // these would record itself a second time.
            .env_remove("HOMELAB_DB")
            .env_remove("HOMELAB_HOST")
            .env_remove("HOMELAB_SERVICE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Spawn {
                model: entry.model_id.clone(),
                message: format!("`{program}`: {e}"),
            })?;
        self.starts.fetch_add(1, Ordering::Relaxed);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut readers = Vec::new();
        if let Some(out) = process.stdout.take() {
            readers.push(forward_lines(out, entry.model_id.clone(), tail.clone()));
        }
        if let Some(err) = process.stderr.take() {
            readers.push(forward_lines(err, entry.model_id.clone(), tail.clone()));
        }
        let started = Instant::now();
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let probe = serde_json::json!({
            "model": self.upstream_model(entry),
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
            "stream": false
        });
        loop {
            if let Ok(Some(status)) = process.try_wait() {
                // Its last words may still be in the pipes.
                for r in readers {
                    let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
                }
                return Err(Error::Spawn {
                    model: entry.model_id.clone(),
                    message: format!("it exited ({status}){}", tail_text(&tail)),
                });
            }
            let left = self.launch.start_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                terminate(&mut process, self.launch.stop_timeout).await;
                return Err(Error::NotReady {
                    model: entry.model_id.clone(),
                    after: self.launch.start_timeout,
                    detail: tail_text(&tail),
                });
            }
            let answer = self.http.post(&url).json(&probe).timeout(left).send().await;
            match answer {
                // Loading engines answer 503 (llama-server, orin-llm-server) or not at all.
                Ok(r) if !r.status().is_server_error() => break,
                _ => tokio::time::sleep(Duration::from_millis(200).min(left)).await,
            }
        }
        tracing::info!(model = %entry.model_id, port, after_ms = started.elapsed().as_millis() as u64, "engine ready");
        Ok(Running {
            port,
            process,
            memory: entry.memory_bytes,
            in_flight: Arc::new(AtomicUsize::new(0)),
            last_used: Arc::new(Mutex::new(Instant::now())),
            started,
        })
    }

    /// Stops `model_id`'s child (SIGTERM, then SIGKILL after the stop timeout).
    pub async fn stop(&self, model_id: &str) {
        let removed = self
            .children
            .lock()
            .ok()
            .and_then(|mut c| c.remove(model_id));
        if let Some(mut r) = removed {
            terminate(&mut r.process, self.launch.stop_timeout).await;
            self.record(model_id, None).await;
            self.stops.fetch_add(1, Ordering::Relaxed);
            tracing::info!(model = %model_id, "engine stopped");
        }
    }

    /// Forgets a child a request found broken (if it is still the one the lease named), so
    /// the next acquire starts a fresh one.
    pub async fn discard(&self, lease: &Lease) {
        let _switch = self.switch.lock().await;
        let same = self
            .children
            .lock()
            .ok()
            .and_then(|c| c.get(&lease.model_id).map(|r| r.process.id() == lease.pid))
            .unwrap_or(false);
        if same {
            tracing::warn!(model = %lease.model_id, "engine stopped answering; restarting it");
            self.stop(&lease.model_id).await;
        }
    }

    /// Stops children idle longer than the idle timeout.
    pub async fn stop_idle(&self) {
        let idle: Vec<String> = self
            .children
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(_, r)| {
                        r.in_flight.load(Ordering::Acquire) == 0
                            && r.last_used
                                .lock()
                                .map(|t| t.elapsed() >= self.launch.idle_timeout)
                                .unwrap_or(false)
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in idle {
            let _switch = self.switch.lock().await;
            // Re-checked under the switch: a request may have taken it meanwhile.
            let still_idle = self.children.lock().ok().is_some_and(|c| {
                c.get(&id)
                    .is_some_and(|r| r.in_flight.load(Ordering::Acquire) == 0)
            });
            if still_idle {
                tracing::info!(model = %id, "stopping an idle engine");
                self.stop(&id).await;
            }
        }
    }

    /// Stops every child (shutdown).
    pub async fn stop_all(&self) {
        let _switch = self.switch.lock().await;
        let ids: Vec<String> = self
            .children
            .lock()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            self.stop(&id).await;
        }
    }
}

/// A port the OS says is free now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// SIGTERM, a wait of `grace`, then SIGKILL.
async fn terminate(process: &mut Child, grace: Duration) {
    if let Some(pid) = process
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(grace, process.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(
            pid = pid.as_raw_nonzero().get(),
            "engine ignored SIGTERM; killing it"
        );
    }
    let _ = process.kill().await;
}

/// Logs a child's output lines and keeps the last few for error messages.
fn forward_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    model: String,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "mlx_launch::child", model = %model, "{line}");
            if let Ok(mut t) = tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    })
}

fn tail_text(tail: &Arc<Mutex<VecDeque<String>>>) -> String {
    let lines: Vec<String> = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its last output: {}", lines.join(" | "))
    }
}
