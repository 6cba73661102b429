//! One shared stop signal that every loop checks, and sleeps that it interrupts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    requested: AtomicBool,
    forced: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// First signal: stop taking work, let running executions finish.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Second signal (or the grace period ran out): stop everything now.
    pub fn force(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        self.0.forced.store(true, Ordering::SeqCst);
        self.notify();
    }

    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    pub fn is_forced(&self) -> bool {
        self.0.forced.load(Ordering::SeqCst)
    }

    fn notify(&self) {
        let _guard = crate::sync::lock(&self.0.lock);
        self.0.cv.notify_all();
    }

    /// Sleeps for `dur` unless shutdown is requested first. Returns `true`
    /// when it was interrupted by shutdown.
    pub fn sleep(&self, dur: Duration) -> bool {
        self.sleep_until(Instant::now() + dur, false)
    }

    /// Waits until `deadline`; wakes early on shutdown (or, with
    /// `only_forced`, only on a forced shutdown). Returns `true` if woken early.
    pub fn sleep_until(&self, deadline: Instant, only_forced: bool) -> bool {
        let woken = |s: &Self| {
            if only_forced {
                s.is_forced()
            } else {
                s.is_requested()
            }
        };
        let mut guard = crate::sync::lock(&self.0.lock);
        loop {
            if woken(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = crate::sync::wait_timeout(&self.0.cv, guard, deadline - now);
        }
    }
}
