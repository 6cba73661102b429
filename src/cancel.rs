//! The stop watcher, for every running execution at once: one thread asks the
//! API for each execution's status every 2 s (PROTOCOL.md §7), one thread
//! runs the timers (`execution.timeout_secs`, the SIGKILL grace), so a slow
//! API never delays a kill; shutdown stops executions through the same path.
//! Stopping is one mechanism for every reason: SIGTERM to the execution's
//! processes, then SIGKILL after `kill_grace` (each step is
//! `supervise::ProcessGroup::signal`). An API without `/status`
//! (PROTOCOL.md §9) cannot cancel: the status thread then asks nothing.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::api::Api;
use crate::ids::ExecutionId;
use crate::protocol::COMPLETION_CANCEL;
use crate::supervise::ProcessGroup;

pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// The same 15 s as every call but the poll.
const STATUS_TIMEOUT: Duration = crate::api::CALL_TIMEOUT;
const TICK: Duration = Duration::from_millis(200);
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
    /// Wakes the timer thread.
    wake: Condvar,
    /// Wakes the status thread.
    status_wake: Condvar,
    kill_grace: Duration,
}

impl Watcher {
    pub fn start(api: Arc<Api>, kill_grace: Duration) -> Self {
        let shared = Arc::new(Shared {
            entries: Mutex::new(HashMap::new()),
            wake: Condvar::new(),
            status_wake: Condvar::new(),
            kill_grace,
        });
        let s = shared.clone();
        if let Err(e) = thread::Builder::new()
            .name("stop-timers".into())
            .spawn(move || watch_timers(&s))
        {
            log::error!("cannot start the stop timer thread: {e}; timeouts are off");
        }
        let s = shared.clone();
        if let Err(e) = thread::Builder::new()
            .name("cancel-watcher".into())
            .spawn(move || watch_status(&s, &api))
        {
            log::error!("cannot start the cancel watcher thread: {e}; server cancels are not seen");
        }
        Self { shared }
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
        self.shared.wake.notify_all();
        self.shared.status_wake.notify_all();
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
        self.shared.wake.notify_all();
    }

    /// Stops every running execution (shutdown grace over, or a second signal).
    pub fn stop_all(&self, reason: StopReason) {
        let mut entries = self.lock();
        for (id, e) in entries.iter_mut() {
            begin_stop(id, e, reason);
        }
        self.shared.wake.notify_all();
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
/// blocks on the network, so a slow API cannot delay a kill.
fn watch_timers(shared: &Shared) {
    let mut entries = crate::sync::lock(&shared.entries);
    loop {
        if entries.is_empty() {
            // Idle: nothing to time, sleep until an execution starts.
            entries = crate::sync::wait(&shared.wake, entries);
            continue;
        }
        let now = Instant::now();
        for (id, e) in entries.iter_mut() {
            if let Some((at, limit)) = e.deadline {
                if now >= at {
                    begin_stop(id, e, StopReason::TimedOut(limit));
                }
            }
            if let Some((_, term_at, killed)) = &mut e.stop {
                if !*killed && now >= *term_at + shared.kill_grace {
                    log::warn!(
                        "execution {id}: still running {} s after SIGTERM; SIGKILL to its processes",
                        shared.kill_grace.as_secs()
                    );
                    e.group.signal(Signal::KILL);
                    *killed = true;
                }
            }
        }
        entries = crate::sync::wait_timeout(&shared.wake, entries, TICK);
    }
}

/// The status poller: asks the API about each running execution about every
/// 2 s, one at a time, and starts the stop when the answer is `cancel`.
fn watch_status(shared: &Shared, api: &Api) {
    let mut entries = crate::sync::lock(&shared.entries);
    loop {
        if entries.is_empty() {
            entries = crate::sync::wait(&shared.status_wake, entries);
            continue;
        }
        if !api.can_cancel() {
            // The API has no /status (the Api warned, once). Look again now
            // and then: a re-registration may find an upgraded API.
            entries = crate::sync::wait_timeout(&shared.status_wake, entries, CANCEL_RECHECK);
            continue;
        }
        let now = Instant::now();
        let mut next = now + STATUS_INTERVAL;
        let mut due = None;
        for (id, e) in entries.iter_mut() {
            if e.stop.is_some() {
                continue;
            }
            if now >= e.next_status {
                e.next_status = now + STATUS_INTERVAL;
                due = Some(id.clone());
                break;
            }
            next = next.min(e.next_status);
        }
        let Some(id) = due else {
            entries = crate::sync::wait_timeout(&shared.status_wake, entries, next - now);
            continue;
        };
        drop(entries);
        let cancel = match api.status(&id, STATUS_TIMEOUT) {
            Ok(s) => s.completion_status.as_deref() == Some(COMPLETION_CANCEL),
            Err(e) => {
                log::debug!("execution {id}: status check failed: {e}");
                false
            }
        };
        entries = crate::sync::lock(&shared.entries);
        if cancel {
            if let Some(e) = entries.get_mut(&id) {
                log::info!("execution {id}: the server asked to cancel it");
                begin_stop(&id, e, StopReason::Cancelled);
                shared.wake.notify_all();
            }
        }
    }
}
