//! The runner's threads: each one named, spawned through [`Threads`] so a
//! failed spawn is an error that names it, and joined at the end.

use std::io;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::shutdown::Never;

/// A thread could not be started: fatal at start-up, as the runner would
/// otherwise run without the service (timeouts, cancels, logs...).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {name} thread: {source}")]
pub struct SpawnError {
    pub name: String,
    #[source]
    pub source: io::Error,
}

/// The JoinHandles of the runner's services.
pub struct Threads {
    /// Joined at the end, waiting up to a limit.
    joined: Vec<(String, JoinHandle<()>)>,
    /// Joined only if they already ended: the poller may sit in an open
    /// poll that the runner abandons on purpose (see `poller`).
    abandonable: Vec<(String, JoinHandle<()>)>,
    /// Each joined thread holds a clone; the channel closes when the last
    /// of them ends, which is what [`Threads::join`] waits for.
    alive_tx: Sender<Never>,
    alive_rx: Receiver<Never>,
}

impl Default for Threads {
    fn default() -> Self {
        let (alive_tx, alive_rx) = crossbeam_channel::bounded(0);
        Self {
            joined: Vec::new(),
            abandonable: Vec::new(),
            alive_tx,
            alive_rx,
        }
    }
}

impl Threads {
    /// Starts a named thread that [`Threads::join`] waits for: it must end
    /// once shutdown reaches the stage it waits on.
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), SpawnError> {
        let alive = self.alive_tx.clone();
        let (name, handle) = start(name.into(), move || {
            f();
            drop(alive);
        })?;
        self.joined.push((name, handle));
        Ok(())
    }

    /// Starts a named thread that may be left running at exit (blocked in
    /// a network call whose answer no longer matters).
    pub fn spawn_abandonable(
        &mut self,
        name: impl Into<String>,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), SpawnError> {
        let (name, handle) = start(name.into(), f)?;
        self.abandonable.push((name, handle));
        Ok(())
    }

    /// Waits up to `limit` for the threads to end, and joins those that did.
    /// One still busy then (in a network call of up to its timeout) is left
    /// to the process exit, with a debug line naming it.
    pub fn join(self, limit: Duration) {
        let Self {
            joined,
            abandonable,
            alive_tx,
            alive_rx,
        } = self;
        drop(alive_tx);
        // Nothing is ever sent: this returns when every clone is dropped.
        let _ = alive_rx.recv_deadline(Instant::now() + limit);
        for (name, handle) in joined.into_iter().chain(abandonable) {
            if !handle.is_finished() {
                log::debug!("thread {name} is still busy; leaving it to the exit");
            } else if handle.join().is_err() {
                log::error!("thread {name} panicked");
            }
        }
    }
}

fn start(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<(String, JoinHandle<()>), SpawnError> {
    match thread::Builder::new().name(name.clone()).spawn(f) {
        Ok(handle) => Ok((name, handle)),
        Err(source) => Err(SpawnError { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_waits_for_the_joined_and_not_for_the_abandonable() {
        let mut threads = Threads::default();
        let (tx, rx) = crossbeam_channel::bounded::<()>(0);
        threads
            .spawn("quick", || std::thread::sleep(Duration::from_millis(20)))
            .unwrap();
        threads
            .spawn_abandonable("stuck", move || {
                let _ = rx.recv();
            })
            .unwrap();
        let started = Instant::now();
        threads.join(Duration::from_secs(10));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        drop(tx);
    }
}
