//! Group commit: many threads that each need "my write is durable" share
//! one fsync. A thread takes a ticket after its write; if a sync is in
//! flight it waits for it, and the next sync (by whichever thread gets there
//! first) covers every ticket issued before it started. Under load one
//! fsync serves many executions; alone, a thread pays exactly one.

use std::io;
use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct GroupSync {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Default)]
struct State {
    issued: u64,
    synced: u64,
    syncing: bool,
}

/// A write that has happened and is waiting to be made durable.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

impl GroupSync {
    /// Call after the write: a sync that starts from now on covers it.
    pub fn ticket(&self) -> Ticket {
        let mut s = crate::sync::lock(&self.state);
        s.issued += 1;
        Ticket(s.issued)
    }

    /// Returns once `ticket`'s write is durable, running `sync` (outside
    /// the lock) if no sync in flight or done since covers it. `sync` must
    /// make durable everything written before it is called.
    pub fn wait(&self, ticket: Ticket, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut s = crate::sync::lock(&self.state);
        loop {
            if s.synced >= ticket.0 {
                return Ok(());
            }
            if !s.syncing {
                break;
            }
            s = crate::sync::wait(&self.done, s);
        }
        s.syncing = true;
        let target = s.issued;
        drop(s);
        let result = sync();
        let mut s = crate::sync::lock(&self.state);
        s.syncing = false;
        if result.is_ok() {
            s.synced = s.synced.max(target);
        }
        self.done.notify_all();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn concurrent_waiters_share_syncs_and_all_return_durable() {
        let g = GroupSync::default();
        let syncs = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let t = g.ticket();
                        g.wait(t, || {
                            syncs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            Ok(())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let n = syncs.load(Ordering::SeqCst);
        assert!((1..=400).contains(&n), "{n} syncs for 400 writes");
        let s = g.state.lock().unwrap();
        assert_eq!(s.synced, 400);
    }

    #[test]
    fn a_failed_sync_is_retried_by_the_next_waiter() {
        let g = GroupSync::default();
        let t = g.ticket();
        assert!(g.wait(t, || Err(io::Error::other("EIO"))).is_err());
        g.wait(t, || Ok(())).unwrap();
    }
}
