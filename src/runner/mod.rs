//! The runner: where the pipeline starts. [`Runner::start`] builds it in
//! order (signals, state directory, identity, supervision, sandbox,
//! executor discovery, API client, journal and outbox with crash recovery,
//! then the services); [`Runner::run`] registers, polls until a signal,
//! drains, and stops and joins every service it started.

mod error;
mod threads;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

pub use error::RunError;
pub use threads::SpawnError;
pub(crate) use threads::Threads;

use crate::api::Api;
use crate::cancel::{StopReason, Watcher};
use crate::config::Config;
use crate::executor::Discovery;
use crate::health::Health;
use crate::identity::Identity;
use crate::job::Context;
use crate::journal::Journal;
use crate::ledger::Ledger;
use crate::logship::LogShipper;
use crate::net::Net;
use crate::outbox::Outbox;
use crate::pool::Pool;
use crate::protocol::{zero_time, RegistrationRequest};
use crate::registration::{self, RegistrationError};
use crate::shutdown::{Never, Shutdown};
use crate::statedir::StateDir;
use crate::{dirwalk, disklimit, executor, fsutil, metrics, poller, recovery, retention};
use crate::{sandbox, supervise};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long the services get to end once the drain is over. Only one in a
/// network call (up to its 15 s timeout) takes that long; it is then left to
/// the process exit, as it always was.
const JOIN_LIMIT: Duration = Duration::from_secs(2);
/// How often the drain says how many executions it is waiting for.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(5);
/// After executions are stopped: their SIGKILL grace, then this long for
/// their results to go out, before the runner exits anyway.
const DRAIN_REPORT_LIMIT: Duration = Duration::from_secs(45);

/// A started runner: its configuration, its shared state and every service
/// thread it owns.
pub struct Runner {
    config: Config,
    shutdown: Shutdown,
    ctx: Arc<Context>,
    pool: Arc<Pool>,
    outbox: Outbox,
    registration: RegistrationRequest,
    metrics: Option<metrics::Server>,
    threads: Threads,
}

/// What the services are built on, made in order before any of them starts.
struct Foundation {
    identity: Arc<Identity>,
    sandbox: sandbox::Plan,
    api: Arc<Api>,
    registration: RegistrationRequest,
    ledger: Ledger,
    outbox: Outbox,
}

impl Runner {
    /// Builds the runner and starts its services. `Ok(None)`: a signal came
    /// while it waited for its state directory to become writable.
    pub fn start(config: Config) -> Result<Option<Self>, RunError> {
        // Signals first, so that a stop during a long registration retry is clean.
        let shutdown = Shutdown::new();
        install_signal_handler(&shutdown)?;
        // Before anything else touches the state directory: it must be ours alone.
        let state = StateDir::lock(&config.execution.state_directory)?;
        if !wait_writable(&state, &shutdown) {
            log::info!("stopped before the state directory could be written");
            return Ok(None);
        }
        let foundation = Foundation::lay(&config, &state)?;
        Self::start_services(config, shutdown, state, foundation).map(Some)
    }

    /// The heartbeat, log shipper, stop watcher, disk watch, workers and
    /// metrics; the poller and the outbox sender start once registered.
    fn start_services(
        config: Config,
        shutdown: Shutdown,
        state: StateDir,
        base: Foundation,
    ) -> Result<Self, RunError> {
        let mut threads = Threads::default();
        let health = Arc::new(Health::default());
        health.start_writer(state, shutdown.clone(), &mut threads)?;
        let Watches {
            shipper,
            watcher,
            disk,
        } = Watches::start(&config, &base.api, &shutdown, &mut threads)?;
        let ctx = Arc::new(Context {
            config: config.clone(),
            identity: base.identity,
            api: base.api,
            shipper,
            watcher,
            disk,
            sandbox: base.sandbox,
            ledger: base.ledger,
            health,
            shutdown: shutdown.clone(),
        });
        let workers = config.execution.max_concurrent_executors;
        let pool = Arc::new(Pool::start(ctx.clone(), workers, &mut threads)?);
        let metrics = match config.runner.metrics_listen {
            Some(addr) => Some(serve_metrics(
                addr,
                &ctx,
                &pool,
                &base.outbox,
                &mut threads,
            )?),
            None => None,
        };
        Ok(Self {
            config,
            shutdown,
            ctx,
            pool,
            outbox: base.outbox,
            registration: base.registration,
            metrics,
            threads,
        })
    }

    /// Registers, polls until a signal, drains, then stops and joins every
    /// service. A signal during registration is a clean stop.
    pub fn run(mut self) -> Result<(), RunError> {
        let outcome = self.serve();
        self.shutdown.finish();
        if let Some(m) = &self.metrics {
            m.stop();
        }
        self.threads.join(JOIN_LIMIT);
        outcome
    }

    fn serve(&mut self) -> Result<(), RunError> {
        let (ctx, config) = (&self.ctx, &self.config);
        let retry = &config.runner.registration_retry;
        match registration::register(&ctx.api, &self.registration, retry, &self.shutdown) {
            Ok(_) => ctx.health.mark_registered(),
            Err(RegistrationError::Interrupted) => {
                log::info!("stopped before registration completed");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        self.outbox
            .start_sender(ctx.api.clone(), self.shutdown.clone(), &mut self.threads)?;
        let exec = &config.execution;
        retention::Retention::new(
            &exec.execution_directory,
            ctx.ledger.journal().clone(),
            exec.retention,
            exec.retention_max_bytes,
        )
        .max_entries(exec.retention_max_entries)
        .every(exec.retention_interval)
        .sparing(ctx.disk.clone())
        .start(self.shutdown.clone(), &mut self.threads)?;

        let gate = poller::gate();
        {
            let (ctx, pool, gate) = (ctx.clone(), self.pool.clone(), gate.clone());
            self.threads
                .spawn_abandonable("poller", move || poller::run(&ctx, &pool, &gate))?;
        }
        log::info!(
            "polling {} for work with {} executor slot(s)",
            config.runner.url,
            exec.max_concurrent_executors
        );
        // Park until a signal: nothing is ever sent, the channel closes.
        let _ = self.shutdown.requested().recv();
        drain(config, &self.shutdown, &ctx.watcher, &self.pool, &gate);
        // Anything still in the runner's process tree would outlive it.
        supervise::stop_orphans();
        self.say_what_is_left();
        Ok(())
    }

    /// The last line: "stopped", or how many reports wait for the next start.
    fn say_what_is_left(&self) {
        let left = self.outbox.depth();
        if left > 0 {
            let dir = &self.config.execution.state_directory;
            log::warn!(
                "stopped with {left} report(s) not yet delivered; they are kept in {} and sent at the next start",
                dir.join(crate::outbox::OUTBOX_DIR).display()
            );
        } else {
            log::info!("stopped");
        }
    }
}

/// What watches the running executions: the log shipper, the stop watcher
/// and the disk watch (which stops an execution through the watcher).
struct Watches {
    shipper: LogShipper,
    watcher: Watcher,
    disk: disklimit::DiskWatch,
}

impl Watches {
    fn start(
        config: &Config,
        api: &Arc<Api>,
        stop: &Shutdown,
        threads: &mut Threads,
    ) -> Result<Self, RunError> {
        let exec = &config.execution;
        let shipper = LogShipper::start(
            api.clone(),
            exec.log_batch_lines,
            exec.log_flush,
            stop.clone(),
            threads,
        )?;
        let watcher = Watcher::start(api.clone(), exec.kill_grace, stop, threads)?;
        let limits = dirwalk::Limits {
            bytes: exec.max_dir_bytes,
            entries: exec.max_dir_entries,
        };
        let disk = disklimit::DiskWatch::start(limits, watcher.clone(), stop, threads)?;
        Ok(Self {
            shipper,
            watcher,
            disk,
        })
    }
}

impl Foundation {
    /// Execution directory, identity, process supervision, sandbox,
    /// executor discovery, API client, then the journal and outbox with
    /// crash recovery.
    fn lay(config: &Config, state: &StateDir) -> Result<Self, RunError> {
        let exec_dir = &config.execution.execution_directory;
        fsutil::create_dir_all(exec_dir).map_err(|source| RunError::ExecutionDir {
            path: exec_dir.clone(),
            source,
        })?;
        let identity = Arc::new(Identity::load_or_create(
            &config.execution.state_directory,
            &config.runner.certificate,
        )?);
        log::info!("runner identifier {}", identity.identifier);
        // Before the first child (discovery): the runner becomes the subreaper
        // of everything it starts, and per-execution cgroups are found.
        supervise::init(
            supervise::Limits {
                memory_max: config.execution.memory_max_bytes,
                pids_max: config.execution.pids_max,
            },
            config.execution.cgroups,
        );
        let (sandbox, warnings) =
            sandbox::Plan::new(config, &identity.key_path, std::env::vars_os().collect())?;
        for w in warnings {
            log::warn!("{w}");
        }
        log::info!("sandbox: {sandbox}");
        let discovery = executor::discover(config)?;
        log::info!("executor version {}", discovery.version.trim());
        let api = Arc::new(connect(config, identity.clone())?);
        let registration = registration_request(config, &identity, discovery);
        let (ledger, outbox) = open_ledger(config, state)?;
        Ok(Self {
            identity,
            sandbox,
            api,
            registration,
            ledger,
            outbox,
        })
    }
}

/// A first signal requests shutdown, a second forces it.
fn install_signal_handler(shutdown: &Shutdown) -> Result<(), RunError> {
    let count = AtomicUsize::new(0);
    let s = shutdown.clone();
    ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            s.request();
        } else {
            s.force();
        }
    })
    .map_err(RunError::Signals)
}

/// At start-up, a state directory that cannot be written is waited for
/// (one line saying why), not fatal: a disk that fills up or a volume
/// mounted read-only for a while is fixed outside the runner. Returns
/// `false` if shutdown came first.
fn wait_writable(state: &StateDir, shutdown: &Shutdown) -> bool {
    while !state.probe() {
        if shutdown.sleep(Duration::from_secs(2)) {
            return false;
        }
    }
    true
}

/// The API client, through the proxy the environment names, if any.
fn connect(config: &Config, identity: Arc<Identity>) -> Result<Api, RunError> {
    let net = Net::from_config(config, &|k| std::env::var(k).ok())?;
    if let Some(proxy) = &net.proxy_url {
        crate::logging::add_url_secrets(proxy);
        log::info!("reaching the API through the proxy {proxy}");
    }
    Ok(Api::new(&config.runner.url, identity, &net))
}

fn registration_request(
    config: &Config,
    identity: &Identity,
    discovery: Discovery,
) -> RegistrationRequest {
    RegistrationRequest {
        id: String::new(),
        identifier: identity.identifier.to_string(),
        name: config.runner.name.clone(),
        registration_code: config.runner.registration_code.clone(),
        enrolled_at: zero_time(),
        last_contact_at: None,
        ip_address: None,
        version: Some(VERSION.to_string()),
        executor_version: Some(discovery.version),
        manifest: discovery.manifest,
        public_key: Some(identity.public_key_pem.clone()),
    }
}

/// The journal and the outbox, after crash recovery: executions a crashed
/// previous run left are stopped now and their results queued; the outbox
/// sends them once registered, beside polling.
fn open_ledger(config: &Config, state: &StateDir) -> Result<(Ledger, Outbox), RunError> {
    let dir = &config.execution.state_directory;
    let journal = Journal::open(dir).map_err(|source| RunError::Journal {
        dir: dir.clone(),
        source,
    })?;
    let outbox = Outbox::open(state, journal.clone()).map_err(|source| RunError::Outbox {
        dir: dir.clone(),
        source,
    })?;
    let exec = &config.execution;
    let ledger = Ledger::new(journal, outbox.clone(), state.clone(), exec.log_batch_lines);
    recovery::recover(&ledger, exec.kill_grace, exec.max_log_bytes);
    Ok((ledger, outbox))
}

fn serve_metrics(
    addr: std::net::SocketAddr,
    ctx: &Context,
    pool: &Arc<Pool>,
    outbox: &Outbox,
    threads: &mut Threads,
) -> Result<metrics::Server, RunError> {
    let gauges = metrics::Gauges {
        health: ctx.health.clone(),
        busy: Box::new({
            let pool = pool.clone();
            move || pool.slots.busy()
        }),
        slots: ctx.config.execution.max_concurrent_executors,
        outbox_depth: Box::new({
            let outbox = outbox.clone();
            move || outbox.depth()
        }),
        results_in_memory: Box::new({
            let outbox = outbox.clone();
            move || outbox.in_memory()
        }),
    };
    let server = metrics::serve(addr, gauges, threads)?;
    let bound = server.addr();
    log::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    Ok(server)
}

/// Graceful shutdown: polling has stopped (the poller sees the signal); wait
/// for running executions up to the grace period, then stop them, and let
/// every worker report. Returns holding the poller gate, so no work that
/// arrives on an abandoned poll can be half-taken.
fn drain(
    config: &Config,
    shutdown: &Shutdown,
    watcher: &Watcher,
    pool: &Pool,
    gate: &poller::Gate,
) {
    let mut clock = DrainClock::new(config, shutdown);
    loop {
        let g = gate.lock();
        let busy = pool.slots.busy();
        if busy == 0 {
            if g.poll_in_flight {
                log::info!("abandoning the open poll");
            }
            // Keep the gate locked until the process exits.
            std::mem::forget(g);
            return;
        }
        drop(g);
        let now = Instant::now();
        if clock.stop_due(busy, now) {
            watcher.stop_all(StopReason::Shutdown);
        }
        // Wake when a slot frees, at the next deadline, or on a second signal.
        let Some((wake_at, second_signal)) = clock.next_wake(busy, now) else {
            return;
        };
        pool.slots.wait_change(wake_at, &second_signal);
    }
}

/// The drain's deadlines, in their order: the grace period (with a line
/// every [`DRAIN_REPORT_EVERY`] saying how many executions it waits for),
/// then, once they are told to stop, their kill grace and
/// [`DRAIN_REPORT_LIMIT`] for their results to go out.
struct DrainClock<'a> {
    shutdown: &'a Shutdown,
    grace_over: Instant,
    kill_grace: Duration,
    stopping_since: Option<Instant>,
    next_report: Instant,
}

impl<'a> DrainClock<'a> {
    fn new(config: &Config, shutdown: &'a Shutdown) -> Self {
        Self {
            shutdown,
            grace_over: Instant::now() + config.runner.shutdown_grace,
            kill_grace: config.execution.kill_grace,
            stopping_since: None,
            next_report: Instant::now(),
        }
    }

    /// True once: when the `busy` executions are to be stopped, on a second
    /// signal or at the end of the grace period (said in one line).
    fn stop_due(&mut self, busy: usize, now: Instant) -> bool {
        let forced = self.shutdown.is_forced();
        if self.stopping_since.is_some() || !(forced || now >= self.grace_over) {
            return false;
        }
        log::warn!(
            "{}: stopping {busy} running execution(s)",
            if forced {
                "second signal"
            } else {
                "shutdown grace period over"
            }
        );
        self.stopping_since = Some(now);
        true
    }

    /// The next deadline, and the second signal while it can still cut the
    /// grace period short; `None` (said in one line) when the executions'
    /// reports are given up on.
    fn next_wake(&mut self, busy: usize, now: Instant) -> Option<(Instant, Receiver<Never>)> {
        if let Some(since) = self.stopping_since {
            // Executors get SIGKILL after kill_grace; then results go out.
            let give_up = since + self.kill_grace + DRAIN_REPORT_LIMIT;
            if now >= give_up {
                log::error!("{busy} execution(s) did not finish reporting; exiting anyway");
                return None;
            }
            return Some((give_up, crossbeam_channel::never()));
        }
        if now >= self.next_report {
            let left = self.grace_over.saturating_duration_since(now);
            log::info!(
                "shutting down: waiting for {busy} execution(s), {} s left",
                left.as_secs()
            );
            self.next_report = now + DRAIN_REPORT_EVERY;
        }
        Some((
            self.next_report.min(self.grace_over),
            self.shutdown.forced().clone(),
        ))
    }
}
