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

/// What one scrape reads once, so that the families sharing a value agree.
struct Scrape<'a> {
    m: &'a Metrics,
    g: &'a Gauges,
    /// Executions running: both `executions_running` and `slots_free`.
    busy: usize,
    /// What the API was found to have; before anything was found, the
    /// generation is unknown and the features are assumed present.
    api: (Generation, bool, bool),
}

impl<'a> Scrape<'a> {
    fn take(m: &'a Metrics, g: &'a Gauges) -> Self {
        let api = crate::sync::lock(&m.api).unwrap_or((Generation::Unknown, true, true));
        Scrape {
            m,
            g,
            busy: (g.busy)(),
            api,
        }
    }
}

/// The Prometheus metric types this endpoint exposes.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// How a family's samples are read from a scrape.
enum Samples {
    /// One unlabelled sample: `name value`.
    One(fn(&Scrape) -> u64),
    /// Labelled samples, written by the function given the family's name.
    Labelled(fn(&mut String, &str, &Scrape)),
}

/// One metric family: its `# HELP` and `# TYPE` lines, then its samples.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Samples,
}

impl Family {
    fn write(&self, out: &mut String, scrape: &Scrape) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} {}", self.kind.as_str());
        match self.samples {
            Samples::One(read) => {
                let _ = writeln!(out, "{name} {}", read(scrape));
            }
            Samples::Labelled(write) => write(out, name, scrape),
        }
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Every family, in the order of the exposition.
const FAMILIES: &[Family] = &[
    Family {
        name: "flo_runner_build_info",
        kind: Kind::Gauge,
        help: "Build information.",
        samples: Samples::Labelled(build_info),
    },
    Family {
        name: "flo_runner_registered",
        kind: Kind::Gauge,
        help: "1 when registered with the API.",
        samples: Samples::One(|s| u64::from(s.g.health.is_registered())),
    },
    // The same verdict as /healthz and `flo-runner health`.
    Family {
        name: "flo_runner_healthy",
        kind: Kind::Gauge,
        help: "1 when healthy (registered, polling, polls not all refused); /healthz says why not.",
        samples: Samples::One(|s| u64::from(s.g.health.problem().is_none())),
    },
    Family {
        name: "flo_runner_api_generation",
        kind: Kind::Gauge,
        help: "1 for the API generation detected: current (POST poll), 2026-03 (GET poll), unknown before a poll was answered.",
        samples: Samples::Labelled(api_generation),
    },
    Family {
        name: "flo_runner_api_feature",
        kind: Kind::Gauge,
        help: "1 while the API offers the feature (log_streaming: /logs, cancel: /status); 0 once it was found missing.",
        samples: Samples::Labelled(api_features),
    },
    Family {
        name: "flo_runner_executions_started_total",
        kind: Kind::Counter,
        help: "Executions claimed and started.",
        samples: Samples::One(|s| load(&s.m.executions_started)),
    },
    Family {
        name: "flo_runner_executions_finished_total",
        kind: Kind::Counter,
        help: "Executions finished, by outcome.",
        samples: Samples::Labelled(executions_finished),
    },
    Family {
        name: "flo_runner_executions_running",
        kind: Kind::Gauge,
        help: "Executions running now.",
        samples: Samples::One(|s| s.busy as u64),
    },
    Family {
        name: "flo_runner_slots_free",
        kind: Kind::Gauge,
        help: "Free executor slots.",
        samples: Samples::One(|s| s.g.slots.saturating_sub(s.busy) as u64),
    },
    Family {
        name: "flo_runner_api_requests_total",
        kind: Kind::Counter,
        help: "API requests by route and HTTP status (error = no answer).",
        samples: Samples::Labelled(api_requests),
    },
    Family {
        name: "flo_runner_api_request_duration_seconds",
        kind: Kind::Histogram,
        help: "API request latency by route.",
        samples: Samples::Labelled(api_latency),
    },
    Family {
        name: "flo_runner_log_lines_shipped_total",
        kind: Kind::Counter,
        help: "Log lines the API accepted.",
        samples: Samples::One(|s| load(&s.m.log_lines_shipped)),
    },
    Family {
        name: "flo_runner_log_lines_dropped_total",
        kind: Kind::Counter,
        help: "Log lines dropped while the API was slow or down.",
        samples: Samples::One(|s| load(&s.m.log_lines_dropped)),
    },
    Family {
        name: "flo_runner_state_dir_unwritable",
        kind: Kind::Gauge,
        help: "1 while the state directory cannot be written and no work is taken.",
        samples: Samples::One(|s| load(&s.m.state_dir_unwritable)),
    },
    Family {
        name: "flo_runner_results_already_delivered_total",
        kind: Kind::Counter,
        help: "Results not sent again because the status route showed the API already had them.",
        samples: Samples::One(|s| load(&s.m.results_already_delivered)),
    },
    Family {
        name: "flo_runner_results_in_memory",
        kind: Kind::Gauge,
        help: "Results held in memory because the outbox could not be written.",
        samples: Samples::One(|s| (s.g.results_in_memory)() as u64),
    },
    Family {
        name: "flo_runner_leftover_processes_killed_total",
        kind: Kind::Counter,
        help: "Processes an execution left running after its executor exited (daemons, setsid, double forks), or that outlived a previous runner, and that were killed.",
        samples: Samples::One(|s| load(&s.m.leftover_processes_killed)),
    },
    Family {
        name: "flo_runner_outbox_depth",
        kind: Kind::Gauge,
        help: "Reports waiting in the outbox.",
        samples: Samples::One(|s| (s.g.outbox_depth)() as u64),
    },
];

fn build_info(out: &mut String, name: &str, _: &Scrape) {
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(out, "{name}{{version=\"{version}\"}} 1");
}

/// One sample per generation, 1 for the one detected.
fn api_generation(out: &mut String, name: &str, s: &Scrape) {
    for generation in Generation::ALL {
        let _ = writeln!(
            out,
            "{name}{{generation=\"{}\"}} {}",
            generation.as_str(),
            u8::from(generation == s.api.0)
        );
    }
}

fn api_features(out: &mut String, name: &str, s: &Scrape) {
    let (_, log_streaming, cancel) = s.api;
    for (feature, on) in [("log_streaming", log_streaming), ("cancel", cancel)] {
        let _ = writeln!(out, "{name}{{feature=\"{feature}\"}} {}", u8::from(on));
    }
}

fn executions_finished(out: &mut String, name: &str, s: &Scrape) {
    for (outcome, n) in crate::sync::lock(&s.m.finished).iter() {
        let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {n}");
    }
}

fn api_requests(out: &mut String, name: &str, s: &Scrape) {
    for ((route, status), n) in crate::sync::lock(&s.m.requests).iter() {
        let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
    }
}

/// Per route: the cumulative buckets, then `+Inf`, the sum and the count.
fn api_latency(out: &mut String, name: &str, s: &Scrape) {
    for (route, h) in crate::sync::lock(&s.m.latency).iter() {
        for (bound, n) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", h.count);
    }
}

/// The Prometheus text exposition of everything.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let scrape = Scrape::take(m, g);
    let mut out = String::with_capacity(4096);
    for family in FAMILIES {
        family.write(&mut out, &scrape);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape with every kind of series filled in, from fixed values.
    fn scrape() -> String {
        let m = Metrics::default();
        m.executions_started.store(3, Ordering::Relaxed);
        m.execution_finished("success");
        m.execution_finished("success");
        m.execution_finished("timed_out");
        m.api_request("register", Some(200), Duration::from_millis(3));
        m.api_request("poll", None, Duration::from_millis(40));
        m.api_request("poll", Some(204), Duration::from_secs(12));
        m.api_detected(Generation::March2026, false, true);
        m.log_lines_shipped.store(7, Ordering::Relaxed);
        m.log_lines_dropped.store(2, Ordering::Relaxed);
        m.state_dir_unwritable.store(1, Ordering::Relaxed);
        m.results_already_delivered.store(4, Ordering::Relaxed);
        m.leftover_processes_killed.store(5, Ordering::Relaxed);
        let health = Arc::new(Health::default());
        health.mark_registered();
        let g = Gauges {
            health,
            busy: Box::new(|| 1),
            slots: 4,
            outbox_depth: Box::new(|| 6),
            results_in_memory: Box::new(|| 8),
        };
        render(&m, &g)
    }

    /// The exposition, byte for byte: scrapers and dashboards depend on it.
    #[test]
    fn a_scrape_renders_every_family_in_order() {
        let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert_eq!(scrape(), EXPECTED.replace("version=\"VERSION\"", &version));
    }

    /// A labelled family with no samples yet is its two header lines alone.
    #[test]
    fn an_empty_family_is_its_header() {
        let g = Gauges {
            health: Arc::new(Health::default()),
            busy: Box::new(|| 0),
            slots: 1,
            outbox_depth: Box::new(|| 0),
            results_in_memory: Box::new(|| 0),
        };
        let text = render(&Metrics::default(), &g);
        assert!(text.contains(
            "# TYPE flo_runner_executions_finished_total counter\n\
             # HELP flo_runner_executions_running "
        ));
        assert!(text.contains("flo_runner_api_generation{generation=\"unknown\"} 1\n"));
        assert!(text.contains("flo_runner_api_feature{feature=\"cancel\"} 1\n"));
    }

    const EXPECTED: &str = r#"# HELP flo_runner_build_info Build information.
# TYPE flo_runner_build_info gauge
flo_runner_build_info{version="VERSION"} 1
# HELP flo_runner_registered 1 when registered with the API.
# TYPE flo_runner_registered gauge
flo_runner_registered 1
# HELP flo_runner_healthy 1 when healthy (registered, polling, polls not all refused); /healthz says why not.
# TYPE flo_runner_healthy gauge
flo_runner_healthy 1
# HELP flo_runner_api_generation 1 for the API generation detected: current (POST poll), 2026-03 (GET poll), unknown before a poll was answered.
# TYPE flo_runner_api_generation gauge
flo_runner_api_generation{generation="unknown"} 0
flo_runner_api_generation{generation="current"} 0
flo_runner_api_generation{generation="2026-03"} 1
# HELP flo_runner_api_feature 1 while the API offers the feature (log_streaming: /logs, cancel: /status); 0 once it was found missing.
# TYPE flo_runner_api_feature gauge
flo_runner_api_feature{feature="log_streaming"} 0
flo_runner_api_feature{feature="cancel"} 1
# HELP flo_runner_executions_started_total Executions claimed and started.
# TYPE flo_runner_executions_started_total counter
flo_runner_executions_started_total 3
# HELP flo_runner_executions_finished_total Executions finished, by outcome.
# TYPE flo_runner_executions_finished_total counter
flo_runner_executions_finished_total{outcome="success"} 2
flo_runner_executions_finished_total{outcome="timed_out"} 1
# HELP flo_runner_executions_running Executions running now.
# TYPE flo_runner_executions_running gauge
flo_runner_executions_running 1
# HELP flo_runner_slots_free Free executor slots.
# TYPE flo_runner_slots_free gauge
flo_runner_slots_free 3
# HELP flo_runner_api_requests_total API requests by route and HTTP status (error = no answer).
# TYPE flo_runner_api_requests_total counter
flo_runner_api_requests_total{route="poll",status="204"} 1
flo_runner_api_requests_total{route="poll",status="error"} 1
flo_runner_api_requests_total{route="register",status="200"} 1
# HELP flo_runner_api_request_duration_seconds API request latency by route.
# TYPE flo_runner_api_request_duration_seconds histogram
flo_runner_api_request_duration_seconds_bucket{route="poll",le="0.005"} 0
flo_runner_api_request_duration_seconds_bucket{route="poll",le="0.01"} 0
flo_runner_api_request_duration_seconds_bucket{route="poll",le="0.025"} 0
flo_runner_api_request_duration_seconds_bucket{route="poll",le="0.05"} 1
flo_runner_api_request_duration_seconds_bucket{route="poll",le="0.1"} 1
flo_runner_api_request_duration_seconds_bucket{route="poll",le="0.25"} 1
flo_runner_api_request_duration_seconds_bucket{route="poll",le="0.5"} 1
flo_runner_api_request_duration_seconds_bucket{route="poll",le="1"} 1
flo_runner_api_request_duration_seconds_bucket{route="poll",le="2.5"} 1
flo_runner_api_request_duration_seconds_bucket{route="poll",le="10"} 1
flo_runner_api_request_duration_seconds_bucket{route="poll",le="30"} 2
flo_runner_api_request_duration_seconds_bucket{route="poll",le="+Inf"} 2
flo_runner_api_request_duration_seconds_sum{route="poll"} 12.04
flo_runner_api_request_duration_seconds_count{route="poll"} 2
flo_runner_api_request_duration_seconds_bucket{route="register",le="0.005"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="0.01"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="0.025"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="0.05"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="0.1"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="0.25"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="0.5"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="1"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="2.5"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="10"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="30"} 1
flo_runner_api_request_duration_seconds_bucket{route="register",le="+Inf"} 1
flo_runner_api_request_duration_seconds_sum{route="register"} 0.003
flo_runner_api_request_duration_seconds_count{route="register"} 1
# HELP flo_runner_log_lines_shipped_total Log lines the API accepted.
# TYPE flo_runner_log_lines_shipped_total counter
flo_runner_log_lines_shipped_total 7
# HELP flo_runner_log_lines_dropped_total Log lines dropped while the API was slow or down.
# TYPE flo_runner_log_lines_dropped_total counter
flo_runner_log_lines_dropped_total 2
# HELP flo_runner_state_dir_unwritable 1 while the state directory cannot be written and no work is taken.
# TYPE flo_runner_state_dir_unwritable gauge
flo_runner_state_dir_unwritable 1
# HELP flo_runner_results_already_delivered_total Results not sent again because the status route showed the API already had them.
# TYPE flo_runner_results_already_delivered_total counter
flo_runner_results_already_delivered_total 4
# HELP flo_runner_results_in_memory Results held in memory because the outbox could not be written.
# TYPE flo_runner_results_in_memory gauge
flo_runner_results_in_memory 8
# HELP flo_runner_leftover_processes_killed_total Processes an execution left running after its executor exited (daemons, setsid, double forks), or that outlived a previous runner, and that were killed.
# TYPE flo_runner_leftover_processes_killed_total counter
flo_runner_leftover_processes_killed_total 5
# HELP flo_runner_outbox_depth Reports waiting in the outbox.
# TYPE flo_runner_outbox_depth gauge
flo_runner_outbox_depth 6
"#;
}
