//! The stop watcher, for every running execution at once: one thread asks the
//! API for each execution's status every 2 s (PROTOCOL.md §7), one thread
//! runs the timers (`execution.timeout_secs`, the SIGKILL grace), so a slow
//! API never delays a kill; shutdown stops executions through the same path.
//! Stopping is one mechanism for every reason: SIGTERM to the execution's
//! processes, then SIGKILL after `kill_grace` (each step is
//! `supervise::ProcessGroup::signal`). An API without `/status`
//! (PROTOCOL.md §9) cannot cancel: the status thread then asks nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::api::Api;
use crate::ids::ExecutionId;
use crate::protocol::COMPLETION_CANCEL;
use crate::runner::{SpawnError, Threads};
use crate::shutdown::{Shutdown, Wake};
use crate::supervise::ProcessGroup;

pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// The same 15 s as every call but the poll.
const STATUS_TIMEOUT: Duration = crate::api::CALL_TIMEOUT;
/// How often an API without `/status` is asked whether that changed.
const CANCEL_RECHECK: Duration = Duration::from_secs(60);

/// Why an executor was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The server's `completion_status` said `cancel`.
    Cancelled,
    /// `execution.timeout_secs` passed.
    TimedOut(Duration),
    /// The runner is shutting down and the grace period ran out.
    Shutdown,
    /// The execution directory went over `execution.max_dir_bytes` or
    /// `execution.max_dir_entries` (`disklimit`).
    DiskLimit(crate::disklimit::Exceeded),
}

struct Entry {
    group: Arc<ProcessGroup>,
    deadline: Option<(Instant, Duration)>,
    next_status: Instant,
    stop: Option<(StopReason, Instant, bool)>,
}

#[derive(Clone)]
pub struct Watcher {
    shared: Arc<Shared>,
}

struct Shared {
    entries: Mutex<HashMap<ExecutionId, Entry>>,
    /// Wakes the timer thread: an entry or a stop changed its deadlines.
    wake: Wake,
    /// Wakes the status thread: an execution started.
    status_wake: Wake,
    kill_grace: Duration,
}

impl Watcher {
    /// Starts the two threads, which end once shutdown is finished (the
    /// drain stops executions through them until then).
    pub fn start(
        api: Arc<Api>,
        kill_grace: Duration,
        shutdown: &Shutdown,
        threads: &mut Threads,
    ) -> Result<Self, SpawnError> {
        let shared = Arc::new(Shared {
            entries: Mutex::new(HashMap::new()),
            wake: Wake::default(),
            status_wake: Wake::default(),
            kill_grace,
        });
        let (s, stop) = (shared.clone(), shutdown.clone());
        threads.spawn("stop-timers", move || watch_timers(&s, &stop))?;
        let (s, stop) = (shared.clone(), shutdown.clone());
        threads.spawn("cancel-watcher", move || watch_status(&s, &api, &stop))?;
        Ok(Self { shared })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ExecutionId, Entry>> {
        crate::sync::lock(&self.shared.entries)
    }

    /// Starts watching a spawned executor.
    pub fn register(&self, id: &ExecutionId, group: Arc<ProcessGroup>, timeout: Option<Duration>) {
        let now = Instant::now();
        self.lock().insert(
            id.clone(),
            Entry {
                group,
                deadline: timeout.map(|t| (now + t, t)),
                next_status: now + STATUS_INTERVAL,
                stop: None,
            },
        );
        self.shared.wake.notify();
        self.shared.status_wake.notify();
    }

    /// Stops watching, once the executor exited. Returns why it was stopped,
    /// if it was.
    pub fn deregister(&self, id: &ExecutionId) -> Option<StopReason> {
        self.lock()
            .remove(id)
            .and_then(|e| e.stop.map(|(reason, _, _)| reason))
    }

    /// Stops one running execution for a reason found elsewhere (its disk
    /// use); nothing if it is not running (any more).
    pub fn stop(&self, id: &ExecutionId, reason: StopReason) {
        if let Some(e) = self.lock().get_mut(id) {
            begin_stop(id, e, reason);
        }
        self.shared.wake.notify();
    }

    /// Stops every running execution (shutdown grace over, or a second signal).
    pub fn stop_all(&self, reason: StopReason) {
        let mut entries = self.lock();
        for (id, e) in entries.iter_mut() {
            begin_stop(id, e, reason);
        }
        self.shared.wake.notify();
    }
}

fn begin_stop(id: &ExecutionId, e: &mut Entry, reason: StopReason) {
    if e.stop.is_some() {
        return;
    }
    log::info!("execution {id}: stopping executor ({reason:?}): SIGTERM to its processes");
    e.group.signal(Signal::TERM);
    e.stop = Some((reason, Instant::now(), false));
}

/// Timers: execution timeouts and SIGKILL after the grace period. Never
/// blocks on the network, so a slow API cannot delay a kill. Sleeps until
/// the next deadline of any entry, or until one changes.
fn watch_timers(shared: &Shared, shutdown: &Shutdown) {
    loop {
        let next = fire_timers(shared, Instant::now());
        if !shared.wake.wait(next, shutdown.finished()) {
            return;
        }
    }
}

/// Starts the stops and kills that are due at `now`; returns the next
/// deadline (`None`: nothing to time).
fn fire_timers(shared: &Shared, now: Instant) -> Option<Instant> {
    let mut entries = crate::sync::lock(&shared.entries);
    let mut next: Option<Instant> = None;
    let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
    for (id, e) in entries.iter_mut() {
        if let Some((deadline, limit)) = e.deadline {
            if e.stop.is_none() && now >= deadline {
                begin_stop(id, e, StopReason::TimedOut(limit));
            } else if e.stop.is_none() {
                at(deadline);
            }
        }
        if let Some((_, term_at, killed)) = &mut e.stop {
            let kill_at = *term_at + shared.kill_grace;
            if *killed {
                continue;
            }
            if now >= kill_at {
                log::warn!(
                    "execution {id}: still running {} s after SIGTERM; SIGKILL to its processes",
                    shared.kill_grace.as_secs()
                );
                e.group.signal(Signal::KILL);
                *killed = true;
            } else {
                at(kill_at);
            }
        }
    }
    next
}

/// The status poller: asks the API about each running execution about every
/// 2 s, one at a time, and starts the stop when the answer is `cancel`.
fn watch_status(shared: &Shared, api: &Api, shutdown: &Shutdown) {
    loop {
        let Some(id) = next_status(shared, api, shutdown) else {
            return;
        };
        let cancel = match api.status(&id, STATUS_TIMEOUT) {
            Ok(s) => s.completion_status.as_deref() == Some(COMPLETION_CANCEL),
            Err(e) => {
                log::debug!("execution {id}: status check failed: {e}");
                false
            }
        };
        if cancel {
            if let Some(e) = crate::sync::lock(&shared.entries).get_mut(&id) {
                log::info!("execution {id}: the server asked to cancel it");
                begin_stop(&id, e, StopReason::Cancelled);
                shared.wake.notify();
            }
        }
    }
}

/// Waits until an execution's status is due and returns it; `None` once
/// shutdown is finished.
fn next_status(shared: &Shared, api: &Api, shutdown: &Shutdown) -> Option<ExecutionId> {
    loop {
        let now = Instant::now();
        let wait_until = {
            let mut entries = crate::sync::lock(&shared.entries);
            if entries.is_empty() {
                None
            } else if !api.can_cancel() {
                // The API has no /status (the Api warned, once). Look again
                // now and then: a re-registration may find an upgraded API.
                Some(now + CANCEL_RECHECK)
            } else {
                let mut next = now + STATUS_INTERVAL;
                for (id, e) in entries.iter_mut() {
                    if e.stop.is_some() {
                        continue;
                    }
                    if now >= e.next_status {
                        e.next_status = now + STATUS_INTERVAL;
                        return Some(id.clone());
                    }
                    next = next.min(e.next_status);
                }
                Some(next)
            }
        };
        if !shared.status_wake.wait(wait_until, shutdown.finished()) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(kill_grace: Duration) -> Shared {
        Shared {
            entries: Mutex::new(HashMap::new()),
            wake: Wake::default(),
            status_wake: Wake::default(),
            kill_grace,
        }
    }

    #[test]
    fn with_nothing_to_time_the_timers_sleep_without_a_deadline() {
        assert_eq!(
            fire_timers(&shared(Duration::from_secs(1)), Instant::now()),
            None
        );
    }
}
