//! The disk limits of running executions (`execution.max_dir_bytes`,
//! `execution.max_dir_entries`): a flow that fills the disk or the inode
//! table from its execution directory makes every later execution fail, so
//! one thread walks each running execution's directory now and then and
//! stops the execution through the stop watcher (the same SIGTERM, grace,
//! SIGKILL as a timeout) once it is over a limit. The walk goes through the
//! directory descriptor the runner holds (`dirwalk`), so neither a swapped
//! directory nor a link makes it count somewhere else, and it stops
//! counting once over, so a directory of millions of entries costs at most
//! the limit. Its cost is bounded in time too: the next walk of a directory
//! waits at least ten times as long as the last one took.
//!
//! The registry also tells retention which directories (by device and
//! inode) belong to running executions, wherever a flow moved them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cancel::{StopReason, Watcher};
use crate::dirwalk::{self, FileId, Limits};
use crate::flowdir::FlowDir;
use crate::ids::ExecutionId;
use crate::runner::{SpawnError, Threads};
use crate::shutdown::{Shutdown, Wake};

/// The shortest time between two walks of one directory.
pub const EVERY: Duration = Duration::from_secs(3);
/// The next walk waits at least this many times the last walk's duration,
/// so walking stays under a tenth of a core however large directories are.
const COST_FACTOR: u32 = 10;

/// Which limit a running execution's directory went over: the reason in its
/// result (`Copy`, so that `StopReason` stays `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `execution.max_dir_bytes`, in bytes.
    Bytes(u64),
    /// `execution.max_dir_entries`, in entries.
    Entries(u64),
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(n) => write!(
                f,
                "the execution directory exceeded execution.max_dir_bytes ({n} bytes)"
            ),
            Self::Entries(n) => write!(
                f,
                "the execution directory exceeded execution.max_dir_entries ({n} entries)"
            ),
        }
    }
}

struct Watched {
    dir: Arc<FlowDir>,
    id: FileId,
    next: Instant,
}

struct Shared {
    entries: Mutex<HashMap<ExecutionId, Watched>>,
    /// Wakes the walking thread: a directory was registered.
    wake: Wake,
    limits: Limits,
}

/// Running execution directories: their limits, and their identities.
#[derive(Clone)]
pub struct DiskWatch {
    shared: Arc<Shared>,
}

impl DiskWatch {
    /// Starts the walking thread when a limit is set (without one, only the
    /// registry of running directories is kept, for retention). It ends
    /// once shutdown is finished.
    pub fn start(
        limits: Limits,
        watcher: Watcher,
        shutdown: &Shutdown,
        threads: &mut Threads,
    ) -> Result<Self, SpawnError> {
        let shared = Arc::new(Shared {
            entries: Mutex::new(HashMap::new()),
            wake: Wake::default(),
            limits,
        });
        if limits.bytes.is_some() || limits.entries.is_some() {
            let (s, stop) = (shared.clone(), shutdown.clone());
            threads.spawn("disk-limits", move || watch(&s, &watcher, &stop))?;
        }
        Ok(Self { shared })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ExecutionId, Watched>> {
        crate::sync::lock(&self.shared.entries)
    }

    /// Watches an execution's directory until [`DiskWatch::deregister`].
    pub fn register(&self, id: &ExecutionId, dir: Arc<FlowDir>) {
        let fid = match FileId::of_fd(&*dir) {
            Ok(f) => f,
            Err(e) => {
                log::warn!(
                    "execution {id}: cannot stat {} ({e}); its disk use is not watched",
                    dir.path().display()
                );
                return;
            }
        };
        self.lock().insert(
            id.clone(),
            Watched {
                dir,
                id: fid,
                next: Instant::now() + EVERY,
            },
        );
        self.shared.wake.notify();
    }

    pub fn deregister(&self, id: &ExecutionId) {
        self.lock().remove(id);
    }

    /// The directories of running executions, by identity.
    pub fn running_dirs(&self) -> Vec<FileId> {
        self.lock().values().map(|w| w.id).collect()
    }
}

fn watch(shared: &Shared, watcher: &Watcher, shutdown: &Shutdown) {
    let limits = shared.limits;
    loop {
        let now = Instant::now();
        let (due, next) = {
            let entries = crate::sync::lock(&shared.entries);
            let due = entries
                .iter()
                .find(|(_, w)| w.next <= now)
                .map(|(id, w)| (id.clone(), w.dir.clone()));
            (due, entries.values().map(|w| w.next).min())
        };
        let Some((id, dir)) = due else {
            if !shared.wake.wait(next, shutdown.finished()) {
                return;
            }
            continue;
        };
        // The walk runs unlocked: registering and deregistering do not wait.
        let started = Instant::now();
        let found = dirwalk::usage(dir.path(), &*dir, limits);
        let took = started.elapsed();
        if let Some(w) = crate::sync::lock(&shared.entries).get_mut(&id) {
            w.next = Instant::now() + EVERY.max(took * COST_FACTOR);
        }
        let usage = match found {
            Ok(u) => u,
            Err(e) => {
                // Most likely the flow moving things while they were
                // counted; the next walk counts again.
                log::debug!("execution {id}: cannot count its directory: {e}");
                continue;
            }
        };
        let over = match (limits.bytes, limits.entries) {
            (Some(max), _) if usage.bytes > max => Some(Exceeded::Bytes(max)),
            (_, Some(max)) if usage.entries > max => Some(Exceeded::Entries(max)),
            _ => None,
        };
        if let Some(over) = over {
            log::warn!("execution {id}: {over}; stopping it");
            watcher.stop(&id, StopReason::DiskLimit(over));
        }
    }
}
