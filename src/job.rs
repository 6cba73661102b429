//! One execution, start to finish: claim (§6), workspace (§5), executor (§7),
//! report (§8). Runs on a pool worker thread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};
use crate::backoff::Backoff;
use crate::cancel::Watcher;
use crate::config::Config;
use crate::executor;
use crate::identity::Identity;
use crate::ids::ExecutionId;
use crate::logship::LogShipper;
use crate::output::{LogTail, OutputFile};
use crate::report;
use crate::shutdown::Shutdown;
use crate::workspace::{self, Job};

/// How long a claim is retried on transport errors and 5xx.
pub const CLAIM_LIMIT: Duration = Duration::from_secs(60);
/// How long the last log lines may take to reach the API before the result goes.
const LOG_FLUSH_LIMIT: Duration = Duration::from_secs(30);
pub const OUTPUT_FILE: &str = "output.log";

/// Everything a worker needs, shared by all workers.
pub struct Context {
    pub config: Config,
    pub identity: Arc<Identity>,
    pub api: Arc<Api>,
    pub shipper: LogShipper,
    pub watcher: Watcher,
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
            report::deliver(
                &ctx.api,
                &execution_id,
                &report::errored(&why),
                None,
                &ctx.shutdown,
            );
        }
    }
}

fn run(ctx: &Context, job: &Job) {
    let id = &job.execution_id;
    match claim(&ctx.api, id, &ctx.shutdown) {
        Claim::Confirmed => {}
        Claim::Refused(code) => {
            log::warn!(
                "execution {id}: claim refused (HTTP {code}); it is no longer ours, not running it"
            );
            return;
        }
        Claim::GaveUp(e) => {
            log::error!(
                "execution {id}: could not claim it within {} s ({e}); not running it",
                CLAIM_LIMIT.as_secs()
            );
            return;
        }
    }

    let ws = match workspace::prepare(&ctx.config, &ctx.identity.identifier, job) {
        Ok(ws) => ws,
        Err(e) => {
            let why = format!("cannot prepare the execution directory: {e}");
            log::error!("execution {id}: {why}");
            report::deliver(&ctx.api, id, &report::errored(&why), None, &ctx.shutdown);
            return;
        }
    };
    let args = executor::arguments(&ctx.config, &ctx.identity, job, &ws);
    log::info!("execution {id}: starting executor in {}", ws.dir.display());
    let started = Instant::now();

    let sink = Arc::new(Mutex::new(Sink {
        tail: LogTail::new(ctx.config.execution.max_log_bytes),
        file: OutputFile::create(
            &ws.dir.join(OUTPUT_FILE),
            ctx.config.execution.max_output_file_bytes,
        ),
    }));
    ctx.shipper.open(id);
    let outcome = {
        let sink = sink.clone();
        let shipper = ctx.shipper.clone();
        let line_id = id.clone();
        executor::run(&ctx.config, &ws.dir, args, job, &ctx.watcher, move |line| {
            let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
            s.tail.push(&line);
            s.file.write_line(&line);
            shipper.push(&line_id, line);
        })
    };
    // The last batch of logs goes out before the result.
    ctx.shipper.finish(id, LOG_FLUSH_LIMIT);
    let logs = {
        let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
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
    let result = report::build(Some(&ws.dir), &outcome.status, outcome.stopped, logs);
    report::deliver(&ctx.api, id, &result, Some(&ws.dir), &ctx.shutdown);
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
