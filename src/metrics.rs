//! Prometheus metrics and `/healthz`, served on `runner.metrics_listen` when
//! it is set. Counters are process-wide atomics (or small maps for labelled
//! series); rendering happens only when scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::api::Generation;
use crate::health::Health;
use crate::runner::{SpawnError, Threads};

/// Upper bounds of the API latency histogram, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    pub executions_started: AtomicU64,
    finished: Mutex<BTreeMap<&'static str, u64>>,
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    pub log_lines_shipped: AtomicU64,
    pub log_lines_dropped: AtomicU64,
    /// 1 while the state directory cannot be written (no work is taken).
    pub state_dir_unwritable: AtomicU64,
    /// Results not re-sent because the API already had them (a lost answer).
    pub results_already_delivered: AtomicU64,
    /// Processes an execution left behind (escaped or not) that were killed.
    pub leftover_processes_killed: AtomicU64,
    /// What the API was found to have: its generation, whether it streams
    /// logs and whether it can cancel (`None`: nothing found yet).
    api: Mutex<Option<(Generation, bool, bool)>>,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// `outcome`: success, errored, cancelled, timed_out, rejected.
    pub fn execution_finished(&self, outcome: &'static str) {
        *crate::sync::lock(&self.finished)
            .entry(outcome)
            .or_default() += 1;
    }

    /// What the API client found out about the API (see `api::Api`).
    pub fn api_detected(&self, generation: Generation, log_streaming: bool, cancel: bool) {
        *crate::sync::lock(&self.api) = Some((generation, log_streaming, cancel));
    }

    /// One API call: its route, its HTTP status (or `error`), how long it took.
    pub fn api_request(&self, route: &'static str, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        *crate::sync::lock(&self.requests)
            .entry((route, status))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut latency = crate::sync::lock(&self.latency);
        let h = latency.entry(route).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }
}

/// Values that live elsewhere, read at scrape time.
pub struct Gauges {
    pub health: Arc<Health>,
    pub busy: Box<dyn Fn() -> usize + Send + Sync>,
    pub slots: usize,
    pub outbox_depth: Box<dyn Fn() -> usize + Send + Sync>,
    pub results_in_memory: Box<dyn Fn() -> usize + Send + Sync>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The Prometheus text exposition of everything.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let out = &mut String::with_capacity(4096);
    family(out, "flo_runner_build_info", "gauge", "Build information.");
    let _ = writeln!(
        out,
        "flo_runner_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    single(
        out,
        "flo_runner_registered",
        "gauge",
        "1 when registered with the API.",
        u8::from(g.health.is_registered()),
    );
    // The same verdict as /healthz and `flo-runner health`.
    single(
        out,
        "flo_runner_healthy",
        "gauge",
        "1 when healthy (registered, polling, polls not all refused); /healthz says why not.",
        u8::from(g.health.problem().is_none()),
    );
    let (generation, log_streaming, cancel) =
        crate::sync::lock(&m.api).unwrap_or((Generation::Unknown, true, true));
    family(
        out,
        "flo_runner_api_generation",
        "gauge",
        "1 for the API generation detected: current (POST poll), 2026-03 (GET poll), unknown before a poll was answered.",
    );
    for g in Generation::ALL {
        let _ = writeln!(
            out,
            "flo_runner_api_generation{{generation=\"{}\"}} {}",
            g.as_str(),
            u8::from(g == generation)
        );
    }
    family(
        out,
        "flo_runner_api_feature",
        "gauge",
        "1 while the API offers the feature (log_streaming: /logs, cancel: /status); 0 once it was found missing.",
    );
    for (feature, on) in [("log_streaming", log_streaming), ("cancel", cancel)] {
        let _ = writeln!(
            out,
            "flo_runner_api_feature{{feature=\"{feature}\"}} {}",
            u8::from(on)
        );
    }
    single(
        out,
        "flo_runner_executions_started_total",
        "counter",
        "Executions claimed and started.",
        m.executions_started.load(Ordering::Relaxed),
    );
    family(
        out,
        "flo_runner_executions_finished_total",
        "counter",
        "Executions finished, by outcome.",
    );
    for (outcome, n) in crate::sync::lock(&m.finished).iter() {
        let _ = writeln!(
            out,
            "flo_runner_executions_finished_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    let busy = (g.busy)();
    single(
        out,
        "flo_runner_executions_running",
        "gauge",
        "Executions running now.",
        busy,
    );
    single(
        out,
        "flo_runner_slots_free",
        "gauge",
        "Free executor slots.",
        g.slots.saturating_sub(busy),
    );
    family(
        out,
        "flo_runner_api_requests_total",
        "counter",
        "API requests by route and HTTP status (error = no answer).",
    );
    for ((route, status), n) in crate::sync::lock(&m.requests).iter() {
        let _ = writeln!(
            out,
            "flo_runner_api_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    family(
        out,
        "flo_runner_api_request_duration_seconds",
        "histogram",
        "API request latency by route.",
    );
    for (route, h) in crate::sync::lock(&m.latency).iter() {
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "flo_runner_api_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "flo_runner_api_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "flo_runner_api_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "flo_runner_api_request_duration_seconds_count{{route=\"{route}\"}} {}",
            h.count
        );
    }
    single(
        out,
        "flo_runner_log_lines_shipped_total",
        "counter",
        "Log lines the API accepted.",
        m.log_lines_shipped.load(Ordering::Relaxed),
    );
    single(
        out,
        "flo_runner_log_lines_dropped_total",
        "counter",
        "Log lines dropped while the API was slow or down.",
        m.log_lines_dropped.load(Ordering::Relaxed),
    );
    single(
        out,
        "flo_runner_state_dir_unwritable",
        "gauge",
        "1 while the state directory cannot be written and no work is taken.",
        m.state_dir_unwritable.load(Ordering::Relaxed),
    );
    single(
        out,
        "flo_runner_results_already_delivered_total",
        "counter",
        "Results not sent again because the status route showed the API already had them.",
        m.results_already_delivered.load(Ordering::Relaxed),
    );
    single(
        out,
        "flo_runner_results_in_memory",
        "gauge",
        "Results held in memory because the outbox could not be written.",
        (g.results_in_memory)(),
    );
    single(
        out,
        "flo_runner_leftover_processes_killed_total",
        "counter",
        "Processes an execution left running after its executor exited (daemons, setsid, double forks), or that outlived a previous runner, and that were killed.",
        m.leftover_processes_killed.load(Ordering::Relaxed),
    );
    single(
        out,
        "flo_runner_outbox_depth",
        "gauge",
        "Reports waiting in the outbox.",
        (g.outbox_depth)(),
    );
    std::mem::take(out)
}

/// `runner.metrics_listen` cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot serve metrics on {addr} (runner.metrics_listen): {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Thread(#[from] SpawnError),
}

/// The metrics server: its address, and the handle that stops it.
pub struct Server {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Ends the serving thread (after the request in hand, if any).
    pub fn stop(&self) {
        self.server.unblock();
    }
}

/// Serves `/metrics` and `/healthz` on `addr` from a thread named
/// `metrics`, until [`Server::stop`].
pub fn serve(
    addr: SocketAddr,
    gauges: Gauges,
    threads: &mut Threads,
) -> Result<Server, ServeError> {
    let server =
        tiny_http::Server::http(addr).map_err(|source| ServeError::Listen { addr, source })?;
    let server = Arc::new(server);
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    let serving = server.clone();
    threads.spawn("metrics", move || {
        // Ends when `stop` unblocks it.
        for request in serving.incoming_requests() {
            respond(request, &gauges);
        }
    })?;
    Ok(Server {
        server,
        addr: bound,
    })
}

fn respond(request: tiny_http::Request, gauges: &Gauges) {
    let (code, body, kind) = match (request.method(), request.url()) {
        (tiny_http::Method::Get, "/metrics") => (
            200,
            render(global(), gauges),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (tiny_http::Method::Get, "/healthz") => match gauges.health.problem() {
            None => (200, "ok\n".to_string(), "text/plain; charset=utf-8"),
            Some(why) => (503, format!("{why}\n"), "text/plain; charset=utf-8"),
        },
        _ => (404, "not found\n".to_string(), "text/plain; charset=utf-8"),
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes());
    let mut response = tiny_http::Response::from_string(body).with_status_code(code);
    if let Ok(h) = header {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}
