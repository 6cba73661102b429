//! The poll loop (PROTOCOL.md §4): ask for work only while a slot is free,
//! pace 204s by the check-in interval, back off on errors with full jitter.
//!
//! Shutdown and the poll in flight: the API may hold a poll for 25 s. The
//! runner does not wait for it; it exits with the request still open, so the
//! connection closes and the API does not hand that poll any work. Work that
//! did arrive is dispatched under the [`Gate`] lock, which the main thread
//! holds while it decides to exit: work is either dispatched (then run and
//! reported before exit) or never read.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::{ApiError, PollAnswer};
use crate::backoff::Backoff;
use crate::ids::{ExecutionId, FloId};
use crate::job::{Context, Work};
use crate::pool::Pool;
use crate::protocol::PendingExecution;
use crate::shutdown::Shutdown;
use crate::workspace::Job;

pub const ERROR_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(60);
const STATE_PROBE_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct Gate {
    state: Mutex<GateState>,
}

#[derive(Default)]
pub struct GateState {
    pub poll_in_flight: bool,
}

impl Gate {
    pub fn lock(&self) -> MutexGuard<'_, GateState> {
        crate::sync::lock(&self.state)
    }
}

pub fn run(ctx: &Context, pool: &Pool, gate: &Gate) {
    let mut backoff = Backoff::new(ERROR_BACKOFF_BASE, ERROR_BACKOFF_MAX);
    loop {
        ctx.health.poll_tick();
        if !ready(ctx, pool) {
            break;
        }
        let Some(polled) = poll(ctx, gate) else {
            break;
        };
        let pause = {
            let mut g = gate.lock();
            g.poll_in_flight = false;
            hand_over(ctx, pool, &mut backoff, polled)
        };
        if pause.wait(&ctx.shutdown) {
            break;
        }
    }
    log::debug!("poller stopped");
}

/// Waits until work could be taken: a free slot and a writable state
/// directory. Returns `false` on shutdown.
fn ready(ctx: &Context, pool: &Pool) -> bool {
    // Waiting for a slot is the loop working as it should: health
    // counts it as moving however long the executions take.
    let free = {
        let _parked = ctx.health.parked();
        pool.slots.wait_free(&ctx.shutdown)
    };
    if !free {
        return false;
    }
    // Work taken now could not be made durable: none until it can.
    if !ctx.ledger.state().is_writable() && !wait_writable(ctx) {
        return false;
    }
    // Sign the next claim ahead, off the path from "work available" to
    // "executor started", but only while nothing runs: under load it
    // would put a second signature on this one thread's path to the
    // next poll, and the claim can sign on its own worker instead.
    if pool.slots.busy() == 0 {
        ctx.api.presign_claim();
    }
    true
}

/// One poll's answer, and when the poll was sent (204s are paced from it).
struct Polled {
    answer: Result<PollAnswer, ApiError>,
    started: Instant,
}

/// One poll, marked in flight under the gate; `None` when shutdown was
/// requested before it went out.
fn poll(ctx: &Context, gate: &Gate) -> Option<Polled> {
    {
        let mut g = gate.lock();
        if ctx.shutdown.is_requested() {
            return None;
        }
        g.poll_in_flight = true;
    }
    let started = Instant::now();
    let answer = ctx.api.poll();
    ctx.health.poll_tick();

    // Health tells a refusal (403/404: waiting will not fix it) from an
    // outage (no answer, 5xx: restarting will not fix it either).
    match &answer {
        Ok(_) => ctx.health.poll_accepted(),
        Err(e) => {
            if let Some(code @ (401 | 403 | 404 | 405)) = e.status() {
                ctx.health
                    .poll_refused(code, ctx.config.runner.unhealthy_after_refused);
            }
        }
    }
    Some(Polled { answer, started })
}

/// Acts on a poll's answer, under the gate lock: work is dispatched to the
/// pool, anything else logged. Returns how long to wait before the next.
fn hand_over(ctx: &Context, pool: &Pool, backoff: &mut Backoff, polled: Polled) -> Pause {
    match polled.answer {
        Ok(PollAnswer::NoWork) => {
            backoff.reset();
            Pause::Until(polled.started + ctx.config.runner.checkin_timeout)
        }
        Ok(PollAnswer::Work(pending)) => {
            backoff.reset();
            if let Some(work) = to_work(*pending) {
                pool.dispatch(work);
            }
            Pause::None
        }
        Ok(PollAnswer::Malformed { execution_id, why }) => {
            log::error!("the API answered a poll with an unusable pending execution: {why}");
            if let Some(id) = execution_id.and_then(|id| ExecutionId::parse(&id).ok()) {
                pool.dispatch(Work::Reject {
                    execution_id: id,
                    why: format!("the runner could not read the pending execution: {why}"),
                });
            }
            Pause::For(backoff.next_delay())
        }
        Err(e) => {
            let delay = backoff.next_delay();
            log_poll_error(ctx, &e, delay);
            Pause::For(delay)
        }
    }
}

/// One line per failed poll; a refused signature and a URL that is not the
/// API say what to check.
fn log_poll_error(ctx: &Context, e: &ApiError, delay: Duration) {
    match e.status() {
        Some(403) => log::error!(
            "the API refused this runner's signature on a poll (HTTP 403): is {} the key this identifier first registered with? retrying in {} ms",
            ctx.identity.key_path.display(),
            delay.as_millis()
        ),
        Some(code @ (404 | 405)) => log::error!(
            "{} does not answer the runner's poll in either form (HTTP {code} to the POST and to the GET of /api/v1/runner/{{identifier}}/execution): is runner.url the Flomation API's base URL? retrying in {} ms",
            ctx.config.runner.url,
            delay.as_millis()
        ),
        _ => log::warn!("polling for work failed: {e}; retrying in {} ms", delay.as_millis()),
    }
}

/// Waits, without polling, until the state directory can be written again
/// (the heartbeat thread probes it too). Returns `false` on shutdown.
fn wait_writable(ctx: &Context) -> bool {
    loop {
        ctx.health.poll_tick();
        if ctx.shutdown.sleep(STATE_PROBE_EVERY) {
            return false;
        }
        if ctx.ledger.state().probe() {
            return true;
        }
    }
}

/// How long the poller waits before its next poll.
enum Pause {
    None,
    /// 204s are paced from when the poll was sent, not from its answer.
    Until(Instant),
    /// Error backoff.
    For(Duration),
}

impl Pause {
    /// Returns `true` when shutdown interrupted the wait.
    fn wait(self, shutdown: &Shutdown) -> bool {
        match self {
            Pause::None => false,
            Pause::Until(t) => shutdown.sleep_until(t, false),
            Pause::For(d) => shutdown.sleep(d),
        }
    }
}

/// Validates the ids that will become paths and URL segments.
fn to_work(pending: PendingExecution) -> Option<Work> {
    let execution_id = match ExecutionId::parse(&pending.execution.id) {
        Ok(id) => id,
        Err(e) => {
            log::error!(
                "refusing a pending execution: {e}; nothing was written, and it cannot be reported because its id is not usable in a URL"
            );
            return None;
        }
    };
    let flo_id = match FloId::parse(&pending.execution.flo_id) {
        Ok(id) => id,
        Err(e) => {
            return Some(Work::Reject {
                execution_id,
                why: format!("refused: {e}"),
            })
        }
    };
    log::info!(
        "execution {execution_id} of flow {flo_id} received ({})",
        pending.flo.name.as_deref().unwrap_or("unnamed flow")
    );
    Some(Work::Run(Box::new(Job {
        execution_id,
        flo_id,
        pending,
    })))
}

/// A shareable gate, for the runner and the poller thread.
pub fn gate() -> Arc<Gate> {
    Arc::new(Gate::default())
}
