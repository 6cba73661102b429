//! A fixed pool of `max_concurrent_executors` worker threads fed through a
//! bounded channel, with slot accounting so the poller only asks for work
//! when a worker is free.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::job::{self, Context, Work};
use crate::shutdown::Shutdown;

pub struct Slots {
    busy: Mutex<usize>,
    changed: Condvar,
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
    /// `tick` is called about every 200 ms while waiting (liveness).
    pub fn wait_free(&self, shutdown: &Shutdown, tick: &dyn Fn()) -> bool {
        let mut busy = self.lock();
        loop {
            tick();
            if shutdown.is_requested() {
                return false;
            }
            if *busy < self.max {
                return true;
            }
            // Timed wait so a shutdown request (signalled elsewhere) is seen.
            busy = crate::sync::wait_timeout(
                &self.changed,
                busy,
                std::time::Duration::from_millis(200),
            );
        }
    }

    /// Waits until no slot is busy or `deadline` passes; `true` when idle.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let mut busy = self.lock();
        loop {
            if *busy == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            busy = crate::sync::wait_timeout(&self.changed, busy, deadline - now);
        }
    }

    fn reserve(&self) {
        *self.lock() += 1;
        self.changed.notify_all();
    }

    fn release(&self) {
        let mut busy = self.lock();
        *busy = busy.saturating_sub(1);
        self.changed.notify_all();
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
    pub fn start(ctx: Arc<Context>, workers: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Work>(workers);
        let slots = Arc::new(Slots {
            busy: Mutex::new(0),
            changed: Condvar::new(),
            max: workers,
        });
        for n in 0..workers {
            let rx: Receiver<Work> = rx.clone();
            let ctx = ctx.clone();
            let slots = slots.clone();
            thread::Builder::new()
                .name(format!("worker-{}", n + 1))
                .spawn(move || {
                    for work in rx.iter() {
                        let _slot = SlotGuard(&slots);
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            job::handle(&ctx, work)
                        }));
                        if result.is_err() {
                            log::error!(
                                "a worker panicked while handling an execution; the slot is freed"
                            );
                        }
                    }
                })?;
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
