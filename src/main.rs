//! flo-runner: the pipeline, wired top to bottom.
//!
//! config → identity → executor discovery → registration → poller → pool →
//! (per execution: claim → workspace → executor → report), with the log
//! shipper and the stop watcher beside them, and one shutdown signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flo_runner::api::Api;
use flo_runner::cancel::{StopReason, Watcher};
use flo_runner::config::{self, Config};
use flo_runner::health::{self, Health};
use flo_runner::identity::Identity;
use flo_runner::job::Context;
use flo_runner::journal::Journal;
use flo_runner::ledger::Ledger;
use flo_runner::logship::LogShipper;
use flo_runner::net::Net;
use flo_runner::outbox::Outbox;
use flo_runner::pool::Pool;
use flo_runner::protocol::{zero_time, RegistrationRequest};
use flo_runner::registration::{self, RegistrationError};
use flo_runner::shutdown::Shutdown;
use flo_runner::statedir::StateDir;
use flo_runner::{
    check, dirwalk, disklimit, executor, fsutil, metrics, poller, recovery, retention, sandbox,
    supervise,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP: &str = "\
flo-runner: a worker agent for the Flomation API

Usage:
  flo-runner [--config PATH]         run until SIGINT or SIGTERM
  flo-runner check [--config PATH]   check the configuration, key, directories,
                                     executor and API; print a checklist
  flo-runner health [--config PATH]  exit 0 if the runner using this state
                                     directory is registered and polling

Options:
  -c, --config PATH   configuration file (default: $FLO_RUNNER_CONFIG, else
                      ./config.json, which may be absent when FLOMATION_API /
                      RUNNER_URL and FLOMATION_REGISTRATION_CODE /
                      RUNNER_REGISTRATION_CODE are set)
  -V, --version       print the version and exit
  -h, --help          print this help and exit

A first SIGTERM/SIGINT stops polling and lets running executions finish (up to
runner.shutdown_grace_secs); a second stops them now. Logs go to stderr:
RUST_LOG sets the level (default info), FLO_LOG_FORMAT=json writes JSON lines.";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Check,
    Health,
}

enum Cli {
    Go {
        mode: Mode,
        config: PathBuf,
        explicit: bool,
    },
    Exit(ExitCode),
}

fn parse_args() -> Cli {
    let mut args = std::env::args_os().skip(1).peekable();
    let mode = match args.peek().and_then(|a| a.to_str()) {
        Some("check") => Mode::Check,
        Some("health") => Mode::Health,
        _ => Mode::Run,
    };
    if mode != Mode::Run {
        args.next();
    }
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => {
                println!("{HELP}");
                return Cli::Exit(ExitCode::SUCCESS);
            }
            Some("-V" | "--version") => {
                println!("flo-runner {VERSION}");
                return Cli::Exit(ExitCode::SUCCESS);
            }
            Some("-c" | "--config") => match args.next() {
                Some(p) => config = Some(PathBuf::from(p)),
                None => {
                    eprintln!("flo-runner: --config needs a path (see --help)");
                    return Cli::Exit(ExitCode::from(2));
                }
            },
            Some(s) if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            _ => {
                eprintln!(
                    "flo-runner: unexpected argument {:?} (see --help)",
                    arg.to_string_lossy()
                );
                return Cli::Exit(ExitCode::from(2));
            }
        }
    }
    // --config, then $FLO_RUNNER_CONFIG (both must exist), then ./config.json.
    let from_env = std::env::var_os("FLO_RUNNER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    match config.or(from_env) {
        Some(config) => Cli::Go {
            mode,
            config,
            explicit: true,
        },
        None => Cli::Go {
            mode,
            config: PathBuf::from(config::DEFAULT_CONFIG_FILE),
            explicit: false,
        },
    }
}

fn main() -> ExitCode {
    // First, before the process holds anything worth reading: flows of the
    // same uid must not read /proc/<runner>/environ or mem.
    let dumpable = sandbox::make_non_dumpable();
    let (mode, path, explicit) = match parse_args() {
        Cli::Go {
            mode,
            config,
            explicit,
        } => (mode, config, explicit),
        Cli::Exit(code) => return code,
    };
    flo_runner::logging::init();
    if let Err(e) = dumpable {
        log::warn!(
            "cannot mark the runner non-dumpable (flows of its user may read its memory): {e}"
        );
    }
    // No backtraces for users: a panic is a bug, reported in one line.
    std::panic::set_hook(Box::new(|info| {
        log::error!("internal error (please report): {info}");
    }));

    if mode == Mode::Health {
        // Only the state directory matters; the runner being checked may have
        // its URL and code in an environment this process does not share.
        let state_dir = config::state_directory(&path, &|name| std::env::var(name).ok());
        return match health::check(&state_dir) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("unhealthy: {why}");
                ExitCode::from(1)
            }
        };
    }
    let loaded = config::load(&path, explicit, &|name| std::env::var(name).ok());
    let (config, warnings) = match loaded {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Before anything can log them: the code, and passwords in URLs.
    flo_runner::logging::add_secret(&config.runner.registration_code);
    flo_runner::logging::add_url_secrets(&config.runner.url);
    for w in warnings {
        log::warn!("{w}");
    }
    // Health returned above; what is left is check or run.
    if mode == Mode::Check {
        return if check::run(&config, &mut std::io::stdout()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    match run(config, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            log::error!("{message}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config, path: &std::path::Path) -> Result<(), String> {
    match &config.source {
        Some(p) => log::info!("flo-runner {VERSION} starting with {}", p.display()),
        None => log::info!(
            "flo-runner {VERSION} starting from environment variables (no {})",
            path.display()
        ),
    }

    // Signals first, so that a stop during a long registration retry is clean.
    let shutdown = Shutdown::new();
    install_signal_handler(&shutdown)?;

    // Before anything else touches the state directory: it must be ours alone.
    let state = StateDir::lock(&config.execution.state_directory).map_err(|e| e.to_string())?;
    if !wait_writable(&state, &shutdown) {
        log::info!("stopped before the state directory could be written");
        return Ok(());
    }

    let exec_dir = &config.execution.execution_directory;
    fsutil::create_dir_all(exec_dir).map_err(|e| {
        format!(
            "cannot create execution directory {}: {e}",
            exec_dir.display()
        )
    })?;
    let identity = Arc::new(
        Identity::load_or_create(
            &config.execution.state_directory,
            &config.runner.certificate,
        )
        .map_err(|e| e.to_string())?,
    );
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
        sandbox::Plan::new(&config, &identity.key_path, std::env::vars_os().collect())
            .map_err(|e| e.to_string())?;
    for w in warnings {
        log::warn!("{w}");
    }
    log::info!("sandbox: {sandbox}");
    let discovery = executor::discover(&config).map_err(|e| e.to_string())?;
    log::info!("executor version {}", discovery.version.trim());

    let net = Net::from_config(&config, &|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    if let Some(proxy) = &net.proxy_url {
        flo_runner::logging::add_url_secrets(proxy);
        log::info!("reaching the API through the proxy {proxy}");
    }
    let api = Arc::new(Api::new(&config.runner.url, identity.clone(), &net));
    let body = RegistrationRequest {
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
    };
    // Executions a crashed previous run left: stop their executors now and
    // queue their results; the outbox goes out once registered, beside polling.
    let state_dir = &config.execution.state_directory;
    let journal = Journal::open(state_dir)
        .map_err(|e| format!("cannot open the journal in {}: {e}", state_dir.display()))?;
    let outbox = Outbox::open(&state, journal.clone())
        .map_err(|e| format!("cannot open the outbox in {}: {e}", state_dir.display()))?;
    let ledger = Ledger::new(
        journal,
        outbox.clone(),
        state.clone(),
        config.execution.log_batch_lines,
    );
    recovery::recover(
        &ledger,
        config.execution.kill_grace,
        config.execution.max_log_bytes,
    );

    let health = Arc::new(Health::default());
    health.start_writer(state.clone(), shutdown.clone());
    let shipper = LogShipper::start(
        api.clone(),
        config.execution.log_batch_lines,
        config.execution.log_flush,
        shutdown.clone(),
    );
    let watcher = Watcher::start(api.clone(), config.execution.kill_grace);
    let disk = disklimit::DiskWatch::start(
        dirwalk::Limits {
            bytes: config.execution.max_dir_bytes,
            entries: config.execution.max_dir_entries,
        },
        watcher.clone(),
    );
    let workers = config.execution.max_concurrent_executors;
    let ctx = Arc::new(Context {
        config: config.clone(),
        identity,
        api: api.clone(),
        shipper,
        watcher: watcher.clone(),
        disk: disk.clone(),
        sandbox,
        ledger,
        health: health.clone(),
        shutdown: shutdown.clone(),
    });
    let pool = Arc::new(
        Pool::start(ctx.clone(), workers).map_err(|e| format!("cannot start workers: {e}"))?,
    );
    if let Some(addr) = config.runner.metrics_listen {
        let gauges = metrics::Gauges {
            health: health.clone(),
            busy: Box::new({
                let pool = pool.clone();
                move || pool.slots.busy()
            }),
            slots: workers,
            outbox_depth: Box::new({
                let outbox = outbox.clone();
                move || outbox.depth()
            }),
            results_in_memory: Box::new({
                let outbox = outbox.clone();
                move || outbox.in_memory()
            }),
        };
        let bound = metrics::serve(addr, gauges)?;
        log::info!("metrics on http://{bound}/metrics, health on http://{bound}/healthz");
    }
    match registration::register(&api, &body, &config.runner.registration_retry, &shutdown) {
        Ok(_) => health.mark_registered(),
        Err(RegistrationError::Interrupted) => {
            log::info!("stopped before registration completed");
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    }

    outbox.start_sender(api.clone(), shutdown.clone());
    retention::Retention::new(
        &config.execution.execution_directory,
        ctx.ledger.journal().clone(),
        config.execution.retention,
        config.execution.retention_max_bytes,
    )
    .max_entries(config.execution.retention_max_entries)
    .every(config.execution.retention_interval)
    .sparing(disk)
    .start(shutdown.clone());

    let gate = poller::gate();
    {
        let (ctx, pool, gate) = (ctx.clone(), pool.clone(), gate.clone());
        std::thread::Builder::new()
            .name("poller".into())
            .spawn(move || poller::run(&ctx, &pool, &gate))
            .map_err(|e| format!("cannot start the poller: {e}"))?;
    }
    log::info!(
        "polling {} for work with {workers} executor slot(s)",
        config.runner.url
    );

    // Park until a signal.
    while !shutdown.sleep(Duration::from_secs(3600)) {}
    drain(&config, &shutdown, &watcher, &pool, &gate);
    // Anything still in the runner's process tree would outlive it.
    supervise::stop_orphans();
    let left = outbox.depth();
    if left > 0 {
        log::warn!(
            "stopped with {left} report(s) not yet delivered; they are kept in {} and sent at the next start",
            state_dir.join(flo_runner::outbox::OUTBOX_DIR).display()
        );
    } else {
        log::info!("stopped");
    }
    Ok(())
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

fn install_signal_handler(shutdown: &Shutdown) -> Result<(), String> {
    let count = Arc::new(AtomicUsize::new(0));
    let s = shutdown.clone();
    ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            s.request();
        } else {
            s.force();
        }
    })
    .map_err(|e| format!("cannot install the signal handler: {e}"))
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
    let grace = config.runner.shutdown_grace;
    let start = Instant::now();
    let mut stopping_since: Option<Instant> = None;
    let mut next_report = start;
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
        if stopping_since.is_none() && (shutdown.is_forced() || now >= start + grace) {
            log::warn!(
                "{}: stopping {busy} running execution(s)",
                if shutdown.is_forced() {
                    "second signal"
                } else {
                    "shutdown grace period over"
                }
            );
            watcher.stop_all(StopReason::Shutdown);
            stopping_since = Some(now);
        }
        if let Some(since) = stopping_since {
            // Executors get SIGKILL after kill_grace; then results go out.
            if now >= since + config.execution.kill_grace + Duration::from_secs(45) {
                log::error!("{busy} execution(s) did not finish reporting; exiting anyway");
                return;
            }
        } else if now >= next_report {
            let left = (start + grace).saturating_duration_since(now);
            log::info!(
                "shutting down: waiting for {busy} execution(s), {} s left",
                left.as_secs()
            );
            next_report = now + Duration::from_secs(5);
        }
        pool.slots.wait_idle(now + Duration::from_millis(250));
    }
}
