//! The runner's stop signal, and the wake-ups its loops wait on beside it.
//!
//! Shutdown comes in three stages, each a channel that closes (its only
//! sender is dropped) when the stage is reached, so that any loop can wait
//! for it in one `select!` together with its own work channel or timer, and
//! nothing has to poll a flag:
//!
//! 1. [`Shutdown::requested`]: the first SIGINT/SIGTERM. Stop taking work;
//!    running executions may finish within `runner.shutdown_grace_secs`.
//! 2. [`Shutdown::forced`]: a second signal. Stop running executions now.
//! 3. [`Shutdown::finished`]: the drain is over (every execution reported,
//!    or given up on); the services that served it (stop watcher, log
//!    shipper, outbox sender, disk watch, metrics) stop and are joined.
//!
//! A later stage implies the earlier ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// Nothing is ever sent on a stage channel: it only closes.
pub enum Never {}

#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    requested: Stage,
    forced: Stage,
    finished: Stage,
}

/// One stage: `reached` for a cheap check, the channel for waiting.
struct Stage {
    reached: AtomicBool,
    tx: Mutex<Option<Sender<Never>>>,
    rx: Receiver<Never>,
}

impl Default for Stage {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Self {
            reached: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
        }
    }
}

impl Stage {
    fn reach(&self) {
        self.reached.store(true, Ordering::SeqCst);
        // Dropping the only sender closes the channel for every receiver.
        drop(crate::sync::lock(&self.tx).take());
    }

    fn is_reached(&self) -> bool {
        self.reached.load(Ordering::SeqCst)
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// First signal: stop taking work, let running executions finish.
    pub fn request(&self) {
        self.0.requested.reach();
    }

    /// Second signal: stop everything now.
    pub fn force(&self) {
        self.0.requested.reach();
        self.0.forced.reach();
    }

    /// The drain is over: the remaining services stop.
    pub fn finish(&self) {
        self.0.requested.reach();
        self.0.finished.reach();
    }

    pub fn is_requested(&self) -> bool {
        self.0.requested.is_reached()
    }

    pub fn is_forced(&self) -> bool {
        self.0.forced.is_reached()
    }

    /// Closed once shutdown is requested: `recv(shutdown.requested())` in a
    /// `select!` fires then (with an error, as nothing is ever sent).
    pub fn requested(&self) -> &Receiver<Never> {
        &self.0.requested.rx
    }

    /// Closed on a second signal.
    pub fn forced(&self) -> &Receiver<Never> {
        &self.0.forced.rx
    }

    /// Closed when the drain is over.
    pub fn finished(&self) -> &Receiver<Never> {
        &self.0.finished.rx
    }

    /// Sleeps for `dur` unless shutdown is requested first. Returns `true`
    /// when it was interrupted by shutdown.
    pub fn sleep(&self, dur: Duration) -> bool {
        self.sleep_until(Instant::now() + dur, false)
    }

    /// Waits until `deadline`; wakes early on shutdown (or, with
    /// `only_forced`, only on a forced shutdown). Returns `true` if woken early.
    pub fn sleep_until(&self, deadline: Instant, only_forced: bool) -> bool {
        let stage = if only_forced {
            &self.0.forced
        } else {
            &self.0.requested
        };
        // Nothing is sent, so the wait ends on the deadline or on the close.
        stage.is_reached() || stage.rx.recv_deadline(deadline).is_err() && stage.is_reached()
    }
}

/// A coalescing wake-up for one waiting loop: any number of
/// [`Wake::notify`] calls before the loop looks again count as one. It
/// replaces a condition variable where the loop must also wait on a
/// [`Shutdown`] stage: see [`Wake::wait`].
#[derive(Clone)]
pub struct Wake {
    tx: Sender<()>,
    rx: Receiver<()>,
}

impl Default for Wake {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Self { tx, rx }
    }
}

impl Wake {
    /// Wakes the loop now, or at its next wait if it is busy.
    pub fn notify(&self) {
        // Full means a wake-up is already pending: one is enough.
        let _ = self.tx.try_send(());
    }

    /// Waits for a notification, `deadline` (`None`: none) or `stop`
    /// closing, whichever comes first. Returns `false` for `stop`.
    pub fn wait(&self, deadline: Option<Instant>, stop: &Receiver<Never>) -> bool {
        let timer = deadline.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        crossbeam_channel::select! {
            recv(self.rx) -> _ => true,
            recv(timer) -> _ => true,
            recv(stop) -> _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_close_their_channels_and_imply_the_earlier_ones() {
        let s = Shutdown::new();
        assert!(!s.sleep(Duration::from_millis(1)));
        assert!(s.requested().try_recv().is_err());
        s.force();
        assert!(s.is_requested() && s.is_forced());
        assert!(matches!(
            s.requested().try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ));
        assert!(s.sleep_until(Instant::now() + Duration::from_secs(60), true));
        assert!(matches!(
            s.finished().try_recv(),
            Err(crossbeam_channel::TryRecvError::Empty)
        ));
    }

    #[test]
    fn a_sleep_ends_when_another_thread_requests_shutdown() {
        let s = Shutdown::new();
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.sleep(Duration::from_secs(60)))
        };
        std::thread::sleep(Duration::from_millis(20));
        s.request();
        assert!(t.join().unwrap());
    }

    #[test]
    fn a_wake_coalesces_and_stops_on_the_stage() {
        let w = Wake::default();
        let s = Shutdown::new();
        w.notify();
        w.notify();
        assert!(w.wait(None, s.requested()));
        assert!(w.wait(Some(Instant::now()), s.requested()));
        s.request();
        assert!(!w.wait(None, s.requested()));
    }
}
