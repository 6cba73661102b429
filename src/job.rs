//! One execution, start to finish: claim (§6), journal, workspace (§5),
//! executor (§7), result into the outbox (§8). Runs on a pool worker thread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};
use crate::backoff::Backoff;
use crate::cancel::Watcher;
use crate::config::Config;
use crate::executor;
use crate::identity::Identity;
use crate::ids::ExecutionId;
use crate::journal::Record;
use crate::ledger::{BeginError, Ledger, Open};
use crate::logship::LogShipper;
use crate::output::{LogTail, Output, OutputFile};
use crate::report;
use crate::shutdown::Shutdown;
use crate::workspace::{self, Job, Workspace};

/// How long a claim is retried on transport errors and 5xx.
pub const CLAIM_LIMIT: Duration = Duration::from_secs(60);
/// How often a worker tries again to begin an execution while the state
/// directory cannot be written.
const BEGIN_RETRY: Duration = Duration::from_secs(2);
/// How long to wait for a log batch in flight before taking the rest.
const LOG_FINISH_LIMIT: Duration = Duration::from_secs(20);

/// Everything a worker needs, shared by all workers.
pub struct Context {
    pub config: Config,
    pub identity: Arc<Identity>,
    pub api: Arc<Api>,
    pub shipper: LogShipper,
    pub watcher: Watcher,
    /// Disk limits of running execution directories.
    pub disk: crate::disklimit::DiskWatch,
    /// What executors may see and do, decided at start-up.
    pub sandbox: crate::sandbox::Plan,
    pub ledger: Ledger,
    pub health: Arc<crate::health::Health>,
    pub shutdown: Shutdown,
}

/// Work handed to the pool.
pub enum Work {
    Run(Box<Job>),
    /// Not runnable (bad ids, malformed answer), but it has an execution id
    /// the API will accept, so it is reported as errored.
    Reject {
        execution_id: ExecutionId,
        why: String,
    },
}

pub fn handle(ctx: &Context, work: Work) {
    match work {
        Work::Run(job) => run(ctx, &job),
        Work::Reject { execution_id, why } => {
            log::error!("execution {execution_id}: not run: {why}");
            crate::metrics::global().execution_finished("rejected");
            ctx.ledger
                .report_unjournaled(&ctx.api, &execution_id, &report::errored(&why, ""));
        }
    }
}

fn run(ctx: &Context, job: &Job) {
    let id = &job.execution_id;
    // The journal entry is durable before the claim goes out: if the runner
    // dies from here on, the next start knows this execution.
    let Some(open) = begin(ctx, record(ctx, job)) else {
        return;
    };
    let Some(mut open) = claimed(ctx, id, open) else {
        return;
    };
    let ws = match workspace::prepare(&ctx.config, &ctx.identity.identifier, job) {
        Ok(ws) => ws,
        Err(e) => {
            let why = format!("cannot prepare the execution directory: {e}");
            return not_run(ctx, open, id, &why);
        }
    };
    let ran = execute(ctx, job, &ws, &mut open);
    finish(ctx, open, &ws, ran);
}

/// The journal entry of a job about to be claimed: no executor yet.
fn record(ctx: &Context, job: &Job) -> Record {
    let id = &job.execution_id;
    let dir = workspace::execution_dir(&ctx.config.execution.execution_directory, &job.flo_id, id);
    Record {
        execution_id: id.to_string(),
        flo_id: job.flo_id.to_string(),
        dir,
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        pid: None,
        pid_start: None,
        boot_id: crate::supervise::boot_id(),
        cgroup: None,
    }
}

/// Sends the claim. The entry comes back only if the claim is confirmed;
/// otherwise it is closed here: abandoned when refused, reported as errored
/// when the outcome stayed unknown.
fn claimed<'a>(ctx: &Context, id: &ExecutionId, open: Open<'a>) -> Option<Open<'a>> {
    match claim(&ctx.api, id, &ctx.shutdown) {
        Claim::Confirmed => Some(open),
        Claim::Refused(code) => {
            log::warn!(
                "execution {id}: claim refused (HTTP {code}); it is no longer ours, not running it"
            );
            open.abandon();
            None
        }
        Claim::GaveUp(e) => {
            // The server may have taken the claim; report so it does not
            // stay "running" there forever.
            let why = format!(
                "could not confirm the claim within {} s ({e}); not run",
                CLAIM_LIMIT.as_secs()
            );
            not_run(ctx, open, id, &why);
            None
        }
    }
}

/// A claimed execution that will not run: reported as errored, with no
/// output and no execution directory.
fn not_run(ctx: &Context, open: Open<'_>, id: &ExecutionId, why: &str) {
    log::error!("execution {id}: {why}");
    open.settle(&ctx.api, &[], &report::errored(why, ""), None);
}

/// What a run of the executor left for its result.
struct Ran {
    outcome: executor::RunOutcome,
    /// Log lines the shipper could not send; they go with the result.
    unsent: Vec<String>,
    /// The tail of the output, for the result's `logs`.
    logs: String,
}

/// Runs the executor in the prepared directory, its output going to the
/// tail, `output.log` and the shipper, and its disk use watched.
fn execute(ctx: &Context, job: &Job, ws: &Workspace, open: &mut Open<'_>) -> Ran {
    let id = &job.execution_id;
    let args = executor::arguments(&ctx.config, &ctx.identity, job, ws);
    crate::metrics::global()
        .executions_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    log::info!("execution {id}: starting executor in {}", ws.dir.display());
    let started = Instant::now();

    let sink = Arc::new(Mutex::new(Sink {
        tail: LogTail::new(ctx.config.execution.max_log_bytes),
        file: OutputFile::new(ws.fd.clone(), ctx.config.execution.max_output_file_bytes),
    }));
    ctx.shipper.open(id);
    ctx.disk.register(id, ws.fd.clone());
    let outcome = launch(ctx, job, ws, args, open, &sink);
    ctx.disk.deregister(id);
    let unsent = ctx.shipper.finish(id, LOG_FINISH_LIMIT);
    let logs = {
        let mut s = crate::sync::lock(&sink);
        s.file.close();
        log::info!(
            "execution {id}: executor finished ({}) after {:.1} s, {} output lines",
            match &outcome.status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            started.elapsed().as_secs_f64(),
            s.tail.total_lines()
        );
        s.tail.render()
    };
    Ran {
        outcome,
        unsent,
        logs,
    }
}

/// One run of the executor; its pid goes into the journal entry once it is
/// spawned, each line of its output into the sink and the shipper.
fn launch(
    ctx: &Context,
    job: &Job,
    ws: &Workspace,
    args: Vec<std::ffi::OsString>,
    open: &mut Open<'_>,
    sink: &Arc<Mutex<Sink>>,
) -> executor::RunOutcome {
    let sink = sink.clone();
    let shipper = ctx.shipper.clone();
    let line_id = job.execution_id.clone();
    let on_spawn = |spawned: &crate::supervise::Spawned| open.spawned(spawned);
    let launch = executor::Launch {
        config: &ctx.config,
        sandbox: &ctx.sandbox,
        dir: &ws.dir,
        args,
        job,
        watcher: &ctx.watcher,
    };
    executor::run(launch, on_spawn, move |output| match output {
        Output::Line(line) => {
            let mut s = crate::sync::lock(&sink);
            s.tail.push(&line);
            s.file.write_line(&line);
            shipper.push(&line_id, line);
        }
        Output::CaughtUp => crate::sync::lock(&sink).file.flush(),
    })
}

/// The result built from the run, counted, and settled in the ledger.
fn finish(ctx: &Context, open: Open<'_>, ws: &Workspace, ran: Ran) {
    let Ran {
        outcome,
        unsent,
        logs,
    } = ran;
    let result = report::build(
        &ws.fd,
        &outcome.status,
        outcome.stopped,
        logs,
        ctx.config.execution.max_state_bytes,
    );
    crate::metrics::global().execution_finished(match outcome.stopped {
        Some(crate::cancel::StopReason::TimedOut(_)) => "timed_out",
        Some(crate::cancel::StopReason::DiskLimit(_)) => "errored",
        Some(_) => "cancelled",
        None if result.has_errored => "errored",
        None => "success",
    });
    open.settle(&ctx.api, &unsent, &result, Some(&ws.fd));
}

/// Step 1 of the ledger. While the state directory cannot be written the
/// execution waits here, unclaimed (the poller takes no more work meanwhile),
/// and goes ahead once it can; at shutdown it is left to the API unclaimed.
fn begin<'a>(ctx: &'a Context, record: Record) -> Option<Open<'a>> {
    let id = &record.execution_id;
    loop {
        match ctx.ledger.begin(record.clone()) {
            Ok(open) => return Some(open),
            Err(e @ BeginError::AlreadyLive) => {
                log::warn!("execution {id}: {e}");
                return None;
            }
            Err(e) => {
                if ctx.shutdown.is_requested() {
                    log::error!(
                        "execution {id}: not claimed and not run: {e}; the API still has it allocated to this runner"
                    );
                    return None;
                }
                log::warn!("execution {id}: waiting to claim it: {e}");
                if ctx.shutdown.sleep(BEGIN_RETRY) {
                    continue;
                }
                ctx.ledger.state().probe();
            }
        }
    }
}

struct Sink {
    tail: LogTail,
    file: OutputFile,
}

enum Claim {
    Confirmed,
    Refused(u16),
    GaveUp(ApiError),
}

/// `POST /state {"state":"running"}`: a 2xx confirms; 403/404/409 (or any
/// other definite 4xx) mean do not run; unknown outcomes are retried.
fn claim(api: &Api, id: &ExecutionId, shutdown: &Shutdown) -> Claim {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match api.claim(id) {
            Ok(_) => return Claim::Confirmed,
            Err(e) if e.outcome_unknown() => {
                let left = CLAIM_LIMIT.saturating_sub(started.elapsed());
                if left.is_zero() || shutdown.is_forced() {
                    return Claim::GaveUp(e);
                }
                let delay = backoff
                    .next_delay()
                    .max(Duration::from_millis(100))
                    .min(left);
                log::warn!(
                    "execution {id}: claim failed ({e}); retrying in {} ms",
                    delay.as_millis()
                );
                shutdown.sleep_until(Instant::now() + delay, true);
            }
            Err(e) => match e.status() {
                Some(code) => return Claim::Refused(code),
                None => return Claim::GaveUp(e),
            },
        }
    }
}
