//! A fixed pool of `max_concurrent_executors` worker threads fed through a
//! bounded channel, with slot accounting so the poller only asks for work
//! when a worker is free.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::job::{self, Context, Work};
use crate::runner::{SpawnError, Threads};
use crate::shutdown::{Never, Shutdown, Wake};

pub struct Slots {
    busy: Mutex<usize>,
    /// A slot was freed. One thread waits on it at a time: the poller while
    /// it runs, the drain once it stopped.
    freed: Wake,
    max: usize,
}

impl Slots {
    fn lock(&self) -> MutexGuard<'_, usize> {
        crate::sync::lock(&self.busy)
    }

    pub fn busy(&self) -> usize {
        *self.lock()
    }

    /// Blocks until a slot is free. Returns `false` if shutdown came first.
    pub fn wait_free(&self, shutdown: &Shutdown) -> bool {
        loop {
            if shutdown.is_requested() {
                return false;
            }
            if *self.lock() < self.max {
                return true;
            }
            // A release after the check left its wake-up pending: not lost.
            if !self.freed.wait(None, shutdown.requested()) {
                return false;
            }
        }
    }

    /// Waits until a slot is freed, `deadline` passes or `stop` closes.
    pub fn wait_change(&self, deadline: Instant, stop: &Receiver<Never>) {
        self.freed.wait(Some(deadline), stop);
    }

    fn reserve(&self) {
        *self.lock() += 1;
    }

    fn release(&self) {
        let mut busy = self.lock();
        *busy = busy.saturating_sub(1);
        self.freed.notify();
    }
}

/// Releases a slot even if the job panics.
struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

pub struct Pool {
    tx: Sender<Work>,
    pub slots: Arc<Slots>,
}

impl Pool {
    /// Starts `workers` threads (`worker-1`...), which end when shutdown is
    /// finished: by then the drain saw every slot free.
    pub fn start(
        ctx: Arc<Context>,
        workers: usize,
        threads: &mut Threads,
    ) -> Result<Self, SpawnError> {
        let workers = workers.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Work>(workers);
        let slots = Arc::new(Slots {
            busy: Mutex::new(0),
            freed: Wake::default(),
            max: workers,
        });
        for n in 0..workers {
            let (rx, ctx, slots) = (rx.clone(), ctx.clone(), slots.clone());
            threads.spawn(format!("worker-{}", n + 1), move || work(&ctx, &rx, &slots))?;
        }
        Ok(Self { tx, slots })
    }

    /// Hands work to a free worker. The caller checked that a slot is free,
    /// so the bounded channel never blocks here.
    pub fn dispatch(&self, work: Work) {
        self.slots.reserve();
        if self.tx.send(work).is_err() {
            log::error!("the worker pool is gone; dropping work");
            self.slots.release();
        }
    }
}

/// One worker: the next execution, until shutdown is finished.
fn work(ctx: &Context, rx: &Receiver<Work>, slots: &Slots) {
    loop {
        let work = crossbeam_channel::select! {
            recv(rx) -> work => work,
            recv(ctx.shutdown.finished()) -> _ => return,
        };
        let Ok(work) = work else { return };
        let _slot = SlotGuard(slots);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job::handle(ctx, work)));
        if result.is_err() {
            log::error!("a worker panicked while handling an execution; the slot is freed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            busy: Mutex::new(0),
            freed: Wake::default(),
            max,
        })
    }

    #[test]
    fn wait_free_wakes_on_a_release_and_on_shutdown_without_ticking() {
        let (s, shutdown) = (slots(1), Shutdown::new());
        s.reserve();
        let waiter = {
            let (s, shutdown) = (s.clone(), shutdown.clone());
            std::thread::spawn(move || s.wait_free(&shutdown))
        };
        std::thread::sleep(Duration::from_millis(20));
        s.release();
        assert!(waiter.join().unwrap(), "a freed slot");

        s.reserve();
        let waiter = {
            let (s, shutdown) = (s.clone(), shutdown.clone());
            std::thread::spawn(move || s.wait_free(&shutdown))
        };
        std::thread::sleep(Duration::from_millis(20));
        shutdown.request();
        assert!(!waiter.join().unwrap(), "shutdown first");
    }
}
