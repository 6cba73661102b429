//! The shared server value every request thread gets a reference to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::state::State;

/// Which generation of the Flomation API the dev server plays
/// (PROTOCOL.md §4–§8 for the current one, §9 for the older one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generation {
    /// POST poll with long-poll, `/logs` and `/status`, claims answered 409
    /// for another runner's execution.
    #[default]
    Current,
    /// The public release of March 2026: GET poll signed over the empty body,
    /// no `/logs` and no `/status`, trigger data as base64, no long-poll.
    March2026,
}

impl Generation {
    /// The name on the command line (`--generation`).
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Current => "current",
            Generation::March2026 => "2026-03",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Generation::Current, Generation::March2026]
            .into_iter()
            .find(|g| g.as_str() == name)
    }
}

pub struct App {
    state: Mutex<State>,
    /// Signalled when work is enqueued (and on shutdown), waking long-polls.
    pub work: Condvar,
    pub registration_code: String,
    /// How long a poll waits for work before answering 204.
    pub long_poll: Duration,
    pub generation: Generation,
    started: Instant,
    stopping: AtomicBool,
}

impl App {
    pub fn new(registration_code: impl Into<String>, long_poll: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            registration_code: registration_code.into(),
            long_poll,
            generation: Generation::Current,
            started: Instant::now(),
            stopping: AtomicBool::new(false),
        }
    }

    /// The same server playing `generation` of the API.
    pub fn with_generation(mut self, generation: Generation) -> Self {
        self.generation = generation;
        // The state's copy shapes the poll answers it builds under its lock.
        self.lock().generation = generation;
        self
    }

    /// Locks the state. A handler that panicked while holding the lock
    /// leaves the state as consistent as any single-field update can, and a
    /// dev server that stops answering helps nobody, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on [`App::work`] for at most `timeout`.
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        match self.work.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.work.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Milliseconds since the server started (request log timestamps).
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
