//! One execution, start to finish: claim (§6), journal, workspace (§5),
//! executor (§7), result into the outbox (§8). Runs on a pool worker thread.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};
use crate::backoff::Backoff;
use crate::cancel::Watcher;
use crate::config::Config;
use crate::executor;
use crate::fsutil;
use crate::identity::Identity;
use crate::ids::ExecutionId;
use crate::journal::{self, Journal, Record};
use crate::logship::{self, LogShipper};
use crate::outbox::{Kind, Outbox};
use crate::output::{LogTail, Output, OutputFile};
use crate::protocol::ExecutionResult;
use crate::report::{self, RESULT_FILE};
use crate::shutdown::Shutdown;
use crate::workspace::{self, Job};

/// How long a claim is retried on transport errors and 5xx.
pub const CLAIM_LIMIT: Duration = Duration::from_secs(60);
/// How long to wait for a log batch in flight before taking the rest.
const LOG_FINISH_LIMIT: Duration = Duration::from_secs(20);
pub const OUTPUT_FILE: &str = "output.log";

/// Everything a worker needs, shared by all workers.
pub struct Context {
    pub config: Config,
    pub identity: Arc<Identity>,
    pub api: Arc<Api>,
    pub shipper: LogShipper,
    pub watcher: Watcher,
    pub outbox: Outbox,
    pub journal: Journal,
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
            report(
                ctx,
                &execution_id,
                Vec::new(),
                &report::errored(&why, ""),
                None,
            );
        }
    }
}

fn run(ctx: &Context, job: &Job) {
    let id = &job.execution_id;
    let dir = workspace::execution_dir(&ctx.config.execution.execution_directory, &job.flo_id, id);
    let mut record = Record {
        execution_id: id.to_string(),
        flo_id: job.flo_id.to_string(),
        dir: dir.clone(),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        pid: None,
        pid_start: None,
        boot_id: journal::boot_id(),
    };
    // Journal first: if the runner dies from here on (even before the claim
    // is answered), the next start finds this entry and reports it. Its
    // write and fsync run beside the claim, and are done before anything runs.
    let claimed = std::thread::scope(|s| {
        let journal = s.spawn(|| ctx.journal.record(&record));
        let claimed = claim(&ctx.api, id, &ctx.shutdown);
        match journal.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("execution {id}: cannot write its journal entry: {e}"),
            Err(_) => log::warn!("execution {id}: writing its journal entry panicked"),
        }
        claimed
    });
    match claimed {
        Claim::Confirmed => {}
        Claim::Refused(code) => {
            log::warn!(
                "execution {id}: claim refused (HTTP {code}); it is no longer ours, not running it"
            );
            ctx.journal.remove(id);
            return;
        }
        Claim::GaveUp(e) => {
            // The server may have taken the claim; report so it does not
            // stay "running" there forever.
            let why = format!(
                "could not confirm the claim within {} s ({e}); not run",
                CLAIM_LIMIT.as_secs()
            );
            log::error!("execution {id}: {why}");
            report(ctx, id, Vec::new(), &report::errored(&why, ""), None);
            return;
        }
    }
    let ws = match workspace::prepare(&ctx.config, &ctx.identity.identifier, job) {
        Ok(ws) => ws,
        Err(e) => {
            let why = format!("cannot prepare the execution directory: {e}");
            log::error!("execution {id}: {why}");
            report(ctx, id, Vec::new(), &report::errored(&why, ""), None);
            return;
        }
    };
    let args = executor::arguments(&ctx.config, &ctx.identity, job, &ws);
    crate::metrics::global()
        .executions_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    log::info!("execution {id}: starting executor in {}", ws.dir.display());
    let started = Instant::now();

    let sink = Arc::new(Mutex::new(Sink {
        tail: LogTail::new(ctx.config.execution.max_log_bytes),
        file: OutputFile::new(
            &ws.dir.join(OUTPUT_FILE),
            ctx.config.execution.max_output_file_bytes,
        ),
    }));
    ctx.shipper.open(id);
    let outcome = {
        let sink = sink.clone();
        let shipper = ctx.shipper.clone();
        let line_id = id.clone();
        let on_spawn = |pid: u32| {
            record.pid = Some(pid);
            record.pid_start = journal::process_start(pid);
            if let Err(e) = ctx.journal.update(&record) {
                log::warn!("execution {id}: cannot update its journal entry: {e}");
            }
        };
        executor::run(
            &ctx.config,
            &ws.dir,
            args,
            job,
            &ctx.watcher,
            on_spawn,
            move |output| match output {
                Output::Line(line) => {
                    let mut s = crate::sync::lock(&sink);
                    s.tail.push(&line);
                    s.file.write_line(&line);
                    shipper.push(&line_id, line);
                }
                Output::CaughtUp => crate::sync::lock(&sink).file.flush(),
            },
        )
    };
    let unsent = ctx.shipper.finish(id, LOG_FINISH_LIMIT);
    let logs = {
        let mut s = crate::sync::lock(&sink);
        s.file.close();
        log::info!(
            "execution {id}: executor finished ({}) after {:.1} s, {} output lines",
            match &outcome.status {
                Ok(s) => s.to_string(),
                Err(e) => e.clone(),
            },
            started.elapsed().as_secs_f64(),
            s.tail.total_lines()
        );
        s.tail.render()
    };
    let result = report::build(&ws.dir, &outcome.status, outcome.stopped, logs);
    crate::metrics::global().execution_finished(match outcome.stopped {
        Some(crate::cancel::StopReason::TimedOut(_)) => "timed_out",
        Some(_) => "cancelled",
        None if result.has_errored => "errored",
        None => "success",
    });
    report(ctx, id, unsent, &result, Some(&ws.dir));
}

/// Puts the last log lines and the result in the outbox (atomically, before
/// any attempt), keeps a `result.json` copy, then makes the first delivery
/// attempt on this thread while another makes the files durable and closes
/// the journal entry; the outbox sender retries whatever does not go through.
/// Should the runner die in between, recovery finds the journal entry and
/// re-sends this same result (from the outbox or `result.json`).
pub fn report(
    ctx: &Context,
    id: &ExecutionId,
    unsent_lines: Vec<String>,
    result: &ExecutionResult,
    dir: Option<&Path>,
) {
    let body = match serde_json::to_vec(result) {
        Ok(b) => b,
        Err(e) => {
            log::error!("execution {id}: cannot serialise the result: {e}");
            return;
        }
    };
    // Atomic writes now; their fsyncs run beside the first delivery attempt
    // (a crash of the runner loses nothing either way; only a host crash in
    // that millisecond could, and then the journal reports the execution).
    let mut written = Vec::new();
    for logs in logship::batch_bodies(&unsent_lines, ctx.config.execution.log_batch_lines) {
        match ctx.outbox.put_unsynced(Kind::Logs, id, &logs) {
            Ok((_, path)) => written.push(path),
            Err(e) => {
                log::warn!("execution {id}: cannot keep the last log lines in the outbox: {e}")
            }
        }
    }
    let result_path = match ctx.outbox.put_unsynced(Kind::Result, id, &body) {
        Ok((_, path)) => path,
        Err(e) => {
            // Not durable, but not lost yet: send it now, as the Go runner would.
            log::error!(
                "execution {id}: cannot write the result to the outbox ({e}); sending it directly"
            );
            if let Some(dir) = dir {
                if let Err(e) = fsutil::replace(&dir.join(RESULT_FILE), &body, fsutil::FILE_MODE) {
                    log::warn!("execution {id}: cannot keep a copy of the result: {e}");
                }
            }
            if let Err(e) = ctx.api.send_result(id, &body) {
                log::error!("execution {id}: result lost: {e}");
            }
            ctx.journal.remove(id);
            return;
        }
    };
    written.push(result_path.clone());
    // The copy for operators comes after the outbox entry: a crash in between
    // leaves the outbox entry, which recovery sees, never a result.json that
    // recovery would contradict. It is a second name for the outbox file
    // (no new inode) where the filesystem allows.
    if let Some(dir) = dir {
        let copy = dir.join(RESULT_FILE);
        if let Err(e) = fsutil::link_or_copy(&result_path, &copy, &body, fsutil::FILE_MODE) {
            log::warn!("execution {id}: cannot keep a copy of the result: {e}");
        }
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            for path in &written {
                if let Err(e) = fsutil::sync(path) {
                    log::warn!(
                        "execution {id}: cannot make {} durable: {e}",
                        path.display()
                    );
                }
            }
            // The journal entry goes only once the result is durable.
            ctx.journal.remove(id);
        });
        ctx.outbox.flush(&ctx.api, id);
    });
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
