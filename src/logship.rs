//! The log shipper: one thread that batches the output lines of every running
//! execution into `POST /logs` requests (PROTOCOL.md §7). A batch goes out when
//! it holds `log_batch_lines` lines or 256 KiB, or when its oldest line has
//! waited `log_flush`. Failed batches are retried in order; while the API is
//! down each execution's queue is bounded and drops its oldest lines. An API
//! without `/logs` (PROTOCOL.md §9) turns shipping off for the session: lines
//! are then only in `output.log` and the result's `state.logs`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};
use crate::backoff::Backoff;
use crate::ids::ExecutionId;
use crate::runner::{SpawnError, Threads};
use crate::shutdown::{Shutdown, Wake};

pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Unsent lines kept per execution while the API is slow or down.
pub const MAX_QUEUED_LINES: usize = 10_000;
/// ... and unsent bytes (lines may be up to 64 KiB each).
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;
/// How long, in total per execution, output may be held back (the executor
/// blocks on its pipe) while the queue is full and the API is healthy but
/// slower than the executor prints. Past it, or while sends are failing, the
/// oldest unsent lines are dropped instead: memory stays bounded either way.
pub const BACKPRESSURE_BUDGET: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct LogShipper {
    shared: Arc<Shared>,
}

struct Shared {
    queues: Mutex<HashMap<ExecutionId, Queue>>,
    /// Wakes the sender: a batch filled, a queue started, or one is closing.
    work: Wake,
    /// Wakes `finish` callers: a queue drained.
    drained: Condvar,
    batch_lines: usize,
    flush: Duration,
    /// Asked whether the API streams logs at all.
    api: Arc<Api>,
}

struct Queue {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: u64,
    oldest_at: Option<Instant>,
    closing: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    sending: bool,
    /// Time output has been held back so far (see [`BACKPRESSURE_BUDGET`]).
    held: Duration,
}

impl Queue {
    fn full(&self) -> bool {
        self.lines.len() >= MAX_QUEUED_LINES || self.bytes >= MAX_QUEUED_BYTES
    }

    fn due(&self, now: Instant, batch_lines: usize, flush: Duration) -> Option<Instant> {
        if self.sending || (self.lines.is_empty() && self.dropped == 0) {
            return None;
        }
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        if self.closing || self.lines.len() >= batch_lines || self.bytes >= MAX_BATCH_BYTES {
            return Some(now);
        }
        Some(self.oldest_at.map_or(now, |t| t + flush))
    }
}

impl LogShipper {
    /// Starts the sender thread, which ends once shutdown is finished (by
    /// then every execution took its unsent lines with [`LogShipper::finish`]).
    pub fn start(
        api: Arc<Api>,
        batch_lines: usize,
        flush: Duration,
        shutdown: Shutdown,
        threads: &mut Threads,
    ) -> Result<Self, SpawnError> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(HashMap::new()),
            work: Wake::default(),
            drained: Condvar::new(),
            batch_lines: batch_lines.max(1),
            flush,
            api: api.clone(),
        });
        let s = shared.clone();
        threads.spawn("log-shipper", move || sender_loop(&s, &api, &shutdown))?;
        Ok(Self { shared })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ExecutionId, Queue>> {
        crate::sync::lock(&self.shared.queues)
    }

    pub fn open(&self, id: &ExecutionId) {
        self.lock().insert(
            id.clone(),
            Queue {
                lines: VecDeque::new(),
                bytes: 0,
                dropped: 0,
                oldest_at: None,
                closing: false,
                retry_at: None,
                backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
                sending: false,
                held: Duration::ZERO,
            },
        );
    }

    pub fn push(&self, id: &ExecutionId, line: String) {
        if !self.shared.api.streams_logs() {
            return;
        }
        let mut queues = self.lock();
        // Backpressure: while the queue is full and the API is taking
        // batches, wait for room rather than drop (within the budget).
        loop {
            let Some(q) = queues.get_mut(id) else { return };
            if !q.full() || q.retry_at.is_some() || q.held >= BACKPRESSURE_BUDGET {
                break;
            }
            self.shared.work.notify();
            let started = Instant::now();
            queues =
                crate::sync::wait_timeout(&self.shared.drained, queues, Duration::from_millis(100));
            if let Some(q) = queues.get_mut(id) {
                q.held += started.elapsed();
            }
        }
        let Some(q) = queues.get_mut(id) else { return };
        let was_empty = q.lines.is_empty();
        while q.full() {
            let Some(old) = q.lines.pop_front() else {
                break;
            };
            {
                q.bytes -= old.len();
                q.dropped += 1;
                crate::metrics::global()
                    .log_lines_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        q.bytes += line.len();
        q.lines.push_back(line);
        if was_empty {
            q.oldest_at = Some(Instant::now());
        }
        let full = q.lines.len() == self.shared.batch_lines || q.bytes >= MAX_BATCH_BYTES;
        if was_empty || full {
            self.shared.work.notify();
        }
    }

    /// Stops shipping `id`: waits (at most `limit`) for a batch in flight,
    /// then returns the lines not yet sent, oldest first, after a marker if
    /// any were dropped. The caller puts them in the outbox.
    pub fn finish(&self, id: &ExecutionId, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut queues = self.lock();
        loop {
            let sending = queues.get(id).is_some_and(|q| q.sending);
            let now = Instant::now();
            if !sending || now >= deadline {
                let Some(q) = queues.remove(id) else {
                    return Vec::new();
                };
                // Nowhere to send them: the outbox would only drop them.
                if !self.shared.api.streams_logs() {
                    return Vec::new();
                }
                let mut rest = Vec::with_capacity(q.lines.len() + 1);
                if q.dropped > 0 {
                    rest.push(dropped_marker(q.dropped));
                }
                rest.extend(q.lines);
                return rest;
            }
            queues = crate::sync::wait_timeout(&self.shared.drained, queues, deadline - now);
        }
    }
}

fn dropped_marker(n: u64) -> String {
    format!("[flo-runner: {n} lines dropped]")
}

/// Splits lines into `/logs` bodies of at most `batch_lines` lines and about
/// [`MAX_BATCH_BYTES`].
pub fn batch_bodies(lines: &[String], batch_lines: usize) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut start = 0;
    while start < lines.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < lines.len()
            && end - start < batch_lines.max(1)
            && (end == start || bytes + lines[end].len() <= MAX_BATCH_BYTES)
        {
            bytes += lines[end].len();
            end += 1;
        }
        if let Ok(body) = serde_json::to_vec(&crate::protocol::LogBatchRef {
            lines: &lines[start..end],
        }) {
            bodies.push(body);
        }
        start = end;
    }
    bodies
}

fn sender_loop(shared: &Shared, api: &Api, shutdown: &Shutdown) {
    loop {
        let mut queues = crate::sync::lock(&shared.queues);
        let now = Instant::now();
        let id = match earliest_due(&queues, now, shared.batch_lines, shared.flush) {
            Some((at, id)) if at <= now => id,
            other => {
                // Idle: sleep until the next batch is due, or until woken.
                drop(queues);
                if !shared
                    .work
                    .wait(other.map(|(at, _)| at), shutdown.finished())
                {
                    return;
                }
                continue;
            }
        };
        let Some(q) = queues.get_mut(&id) else {
            continue;
        };
        let batch = q.take_batch(shared.batch_lines);
        drop(queues);

        let result = api.send_logs(&id, &batch.lines);

        let mut queues = crate::sync::lock(&shared.queues);
        let Some(q) = queues.get_mut(&id) else {
            continue;
        };
        q.settle(&id, batch, result, shutdown);
        shared.drained.notify_all();
    }
}

/// The queue whose batch is due first, and when.
fn earliest_due(
    queues: &HashMap<ExecutionId, Queue>,
    now: Instant,
    batch_lines: usize,
    flush: Duration,
) -> Option<(Instant, ExecutionId)> {
    let mut next: Option<(Instant, &ExecutionId)> = None;
    for (id, q) in queues {
        if let Some(at) = q.due(now, batch_lines, flush) {
            if next.is_none_or(|(t, _)| at < t) {
                next = Some((at, id));
            }
        }
    }
    next.map(|(at, id)| (at, id.clone()))
}

/// A batch taken from a queue and in flight: its lines, oldest first, after
/// the dropped-lines marker when `dropped` is not zero.
struct Batch {
    lines: Vec<String>,
    dropped: u64,
}

impl Queue {
    /// Takes the next batch (at most `batch_lines` lines and about
    /// [`MAX_BATCH_BYTES`]) and marks the queue as sending.
    fn take_batch(&mut self, batch_lines: usize) -> Batch {
        let mut lines = Vec::new();
        let mut bytes = 0;
        if self.dropped > 0 {
            lines.push(dropped_marker(self.dropped));
        }
        while let Some(line) = self.lines.front() {
            if lines.len() >= batch_lines
                || (!lines.is_empty() && bytes + line.len() > MAX_BATCH_BYTES)
            {
                break;
            }
            bytes += line.len();
            if let Some(line) = self.lines.pop_front() {
                lines.push(line);
            }
        }
        let dropped = std::mem::take(&mut self.dropped);
        self.bytes -= bytes;
        self.sending = true;
        Batch { lines, dropped }
    }

    /// Applies how sending `batch` went.
    fn settle(
        &mut self,
        id: &ExecutionId,
        batch: Batch,
        result: Result<(), ApiError>,
        shutdown: &Shutdown,
    ) {
        self.sending = false;
        match result {
            Ok(()) => {
                crate::metrics::global().log_lines_shipped.fetch_add(
                    batch.lines.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.backoff.reset();
                self.retry_at = None;
                self.oldest_at = (!self.lines.is_empty()).then(Instant::now);
            }
            Err(ApiError::RouteMissing(_)) => {
                // The API has no /logs (the Api said so, once): drop what
                // is queued; push() queues nothing from now on.
                self.lines.clear();
                self.bytes = 0;
                self.dropped = 0;
                self.retry_at = None;
                self.oldest_at = None;
            }
            Err(e) if shutdown.is_forced() => {
                log::warn!(
                    "execution {id}: dropping {} log lines: {e}",
                    batch.lines.len()
                );
            }
            Err(e) => {
                self.put_back(batch);
                let delay = self.backoff.next_delay().max(Duration::from_millis(100));
                log::warn!(
                    "execution {id}: sending logs failed ({e}); retrying in {} ms",
                    delay.as_millis()
                );
                self.retry_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Puts a failed batch back in front, in order, within the bound.
    fn put_back(&mut self, batch: Batch) {
        let mut lines = batch.lines.into_iter();
        if batch.dropped > 0 {
            // The marker: the count goes back instead.
            lines.next();
            self.dropped += batch.dropped;
        }
        for line in lines.rev() {
            if self.lines.len() >= MAX_QUEUED_LINES {
                self.dropped += 1;
                continue;
            }
            self.bytes += line.len();
            self.lines.push_front(line);
        }
    }
}
