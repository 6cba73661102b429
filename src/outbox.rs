//! The durable outbox (PROTOCOL.md §8, flo-runner goes further): every result,
//! and the last log lines of an execution, is written to
//! `{state_directory}/outbox/` and made durable (file fsync before the
//! rename, directory fsync after) before the first attempt to send it, and
//! removed only after a 2xx, once the journal's `done` line is durable. A
//! sender thread delivers what the first attempt could not, per execution in
//! order, with full-jitter backoff, across restarts.
//!
//! A result that cannot be written (a full or read-only disk) is kept in
//! memory instead and retried the same way (and written to disk as soon as
//! it can be); it is never dropped.
//!
//! Sending a result again: only when the previous attempt's outcome is
//! unknown, and always with the same bytes. Because the API notifies and
//! bills on every accepted result, a result whose earlier attempt may have
//! landed (a lost answer, a 5xx, or an entry left by an earlier run) is
//! re-sent only after the status route says the execution is not complete.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};
use crate::backoff::Backoff;
use crate::fsutil::{self, move_aside, CORRUPT_DIR};
use crate::groupsync::GroupSync;
use crate::ids::ExecutionId;
use crate::journal::Journal;
use crate::runner::{SpawnError, Threads};
use crate::shutdown::{Shutdown, Wake};
use crate::statedir::StateDir;

pub const OUTBOX_DIR: &str = "outbox";
pub const DEAD_DIR: &str = "dead";
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Status checks that fail with an unknown outcome before a result whose
/// delivery is in doubt is sent anyway: a duplicate beats a result never sent.
const STATUS_TRIES: u32 = 5;

/// What a report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /api/v1/execution/{id}/logs` body.
    Logs,
    /// `POST /api/v1/execution/{id}` body.
    Result,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Logs => "logs",
            Kind::Result => "result",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "logs" => Some(Kind::Logs),
            "result" => Some(Kind::Result),
            _ => None,
        }
    }
}

/// Where a report's bytes are.
#[derive(Clone)]
enum Stored {
    File(PathBuf),
    /// The outbox could not be written: held here until it can, or until
    /// the API acknowledges it.
    Memory(Arc<Vec<u8>>),
}

struct Entry {
    kind: Kind,
    execution_id: ExecutionId,
    stored: Stored,
    retry_at: Instant,
    backoff: Backoff,
    sending: bool,
    /// An earlier attempt may have reached the API.
    uncertain: bool,
    status_misses: u32,
    /// This result replaces one the API refused for good.
    replacement: bool,
}

/// One entry as an attempt sees it: a copy taken when the attempt starts.
struct Report {
    seq: u64,
    id: ExecutionId,
    kind: Kind,
    stored: Stored,
    /// An earlier attempt may have reached the API: ask before sending.
    uncertain: bool,
}

struct Shared {
    dir: PathBuf,
    entries: Mutex<BTreeMap<u64, Entry>>,
    /// Wakes the sender thread: an entry was added or put back.
    wake: Wake,
    next_seq: Mutex<u64>,
    journal: Journal,
    state: StateDir,
    /// Directory fsyncs shared by concurrent workers' renames.
    dir_sync: GroupSync,
}

/// Outcome of one delivery attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Left for the sender thread (outcome unknown, or an earlier report of the
    /// same execution is still pending).
    Pending,
    /// Refused for good (a 4xx other than 408/429): moved to `outbox/dead/`.
    Dead,
}

/// Whether the result just put is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    /// Kept in memory only (the outbox could not be written).
    InMemory,
}

/// A result file created empty (its name made durable) while the executor
/// runs: writing the result into it later takes one fdatasync, with no
/// rename and no directory sync on the path to the first POST.
#[derive(Debug)]
pub struct Reservation {
    seq: u64,
    path: PathBuf,
}

#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Opens (creating) `{state_dir}/outbox`, loading what a previous run left.
    /// Files that cannot be reports are moved to `outbox/corrupt/`. Results
    /// acknowledged by the API are finished in `journal`.
    pub fn open(state: &StateDir, journal: Journal) -> io::Result<Self> {
        let dir = state.path().join(OUTBOX_DIR);
        fsutil::create_dir_all(&dir)?;
        let (entries, max_seq) = load(&dir)?;
        if !entries.is_empty() {
            log::info!(
                "outbox: {} report(s) left by a previous run will be delivered",
                entries.len()
            );
        }
        Ok(Self {
            shared: Arc::new(Shared {
                dir,
                entries: Mutex::new(entries),
                wake: Wake::default(),
                next_seq: Mutex::new(max_seq + 1),
                journal,
                state: state.clone(),
                dir_sync: GroupSync::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        crate::sync::lock(&self.shared.entries)
    }

    /// Reports not yet acknowledged by the API.
    pub fn depth(&self) -> usize {
        self.lock().len()
    }

    /// Results held in memory because the outbox could not be written.
    pub fn in_memory(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(e.stored, Stored::Memory(_)))
            .count()
    }

    /// Whether `id` has a result waiting (log batches do not count: they
    /// are not a result).
    pub fn has_pending_result(&self, id: &ExecutionId) -> bool {
        self.lock()
            .values()
            .any(|e| &e.execution_id == id && e.kind == Kind::Result)
    }

    fn next_seq(&self) -> u64 {
        let mut next = crate::sync::lock(&self.shared.next_seq);
        let seq = *next;
        *next += 1;
        seq
    }

    fn path_for(&self, seq: u64, kind: Kind, id: &ExecutionId) -> PathBuf {
        self.shared
            .dir
            .join(format!("{seq:016}.{}.{id}.json", kind.as_str()))
    }

    /// Reserves `id`'s result file. `None` if it cannot be created (the
    /// result then takes the ordinary way, or memory).
    pub fn reserve(&self, id: &ExecutionId) -> Option<Reservation> {
        use std::os::unix::fs::OpenOptionsExt;
        let seq = self.next_seq();
        let path = self.path_for(seq, Kind::Result, id);
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(fsutil::FILE_MODE)
            .open(&path)
            .and_then(|_| self.sync_dir());
        match created {
            Ok(()) => Some(Reservation { seq, path }),
            Err(e) => {
                let _ = fs::remove_file(&path);
                self.shared.state.write_failed("outbox", &e);
                None
            }
        }
    }

    /// Writes the result into its reserved file, durably (fdatasync).
    fn fill(reservation: &Reservation, result: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(&reservation.path)?;
        let written = f.write_all(result).and_then(|()| f.sync_data());
        if written.is_err() {
            // Never leave half a result behind: empty means "none yet".
            let _ = f.set_len(0);
        }
        written
    }

    /// Puts an execution's last log batches and its result in the outbox,
    /// durably (each file synced before its rename, one directory sync for
    /// all), before anything is sent: call [`Outbox::flush`] next. A log
    /// batch that cannot be written is dropped (the result carries the log
    /// tail); a result that cannot be written is kept in memory. `uncertain`:
    /// the result may already have reached the API (recovery).
    pub fn put(
        &self,
        id: &ExecutionId,
        log_batches: &[Vec<u8>],
        result: &[u8],
        uncertain: bool,
        reservation: Option<Reservation>,
    ) -> Durability {
        let reserved = reservation.is_some();
        let mut added = self.write_logs(id, log_batches);
        let renamed = !added.is_empty();
        crate::failpoint::hit("outbox.logs-written");
        let (seq, entry, durability) = self.write_result(id, result, uncertain, reservation);
        added.push((seq, entry));
        if renamed || (!reserved && durability == Durability::Durable) {
            // One directory sync makes every rename above durable.
            if let Err(e) = self.sync_dir() {
                self.shared.state.write_failed("outbox directory sync", &e);
            }
        }
        let mut entries = self.lock();
        for (seq, mut entry) in added {
            // The caller makes the first attempt; the sender waits a beat.
            entry.retry_at = Instant::now() + RETRY_BASE;
            entries.insert(seq, entry);
        }
        drop(entries);
        self.shared.wake.notify();
        durability
    }

    /// Writes each log batch to its own file (synced, renamed into place;
    /// the directory sync is the caller's). One that cannot be written is
    /// left out.
    fn write_logs(&self, id: &ExecutionId, log_batches: &[Vec<u8>]) -> Vec<(u64, Entry)> {
        let mut added = Vec::new();
        for body in log_batches {
            let seq = self.next_seq();
            let path = self.path_for(seq, Kind::Logs, id);
            match fsutil::write_synced(&path, body, fsutil::FILE_MODE) {
                Ok(()) => {
                    added.push((
                        seq,
                        Entry::new(Kind::Logs, id.clone(), Stored::File(path), false),
                    ));
                }
                Err(e) => {
                    self.shared.state.write_failed("outbox", &e);
                    log::warn!("execution {id}: cannot keep its last log lines in the outbox ({e}); the result carries the log tail");
                }
            }
        }
        added
    }

    /// Writes the result into its reservation, or a new file, and returns
    /// its entry: in memory when the disk refused it.
    fn write_result(
        &self,
        id: &ExecutionId,
        result: &[u8],
        uncertain: bool,
        reservation: Option<Reservation>,
    ) -> (u64, Entry, Durability) {
        let (seq, path, written) = match reservation {
            Some(r) => {
                let written = Self::fill(&r, result);
                (r.seq, r.path, written)
            }
            None => {
                let seq = self.next_seq();
                let path = self.path_for(seq, Kind::Result, id);
                let written = fsutil::write_synced(&path, result, fsutil::FILE_MODE);
                (seq, path, written)
            }
        };
        match written {
            Ok(()) => {
                let entry = Entry::new(Kind::Result, id.clone(), Stored::File(path), uncertain);
                (seq, entry, Durability::Durable)
            }
            Err(e) => {
                let _ = fs::remove_file(&path);
                self.shared.state.write_failed("outbox", &e);
                log::error!(
                    "execution {id}: cannot write its result to the outbox ({e}); keeping it in memory and sending it until the API acknowledges it"
                );
                let body = Stored::Memory(Arc::new(result.to_vec()));
                let entry = Entry::new(Kind::Result, id.clone(), body, uncertain);
                (seq, entry, Durability::InMemory)
            }
        }
    }

    /// Makes the renames done so far durable, one directory fsync for all
    /// the workers that need one at the same time.
    fn sync_dir(&self) -> io::Result<()> {
        let ticket = self.shared.dir_sync.ticket();
        self.shared
            .dir_sync
            .wait(ticket, || fsutil::sync_dir(&self.shared.dir))
    }

    /// The path of `id`'s result entry, while it is on disk.
    #[cfg(test)]
    fn result_file(&self, id: &ExecutionId) -> Option<PathBuf> {
        self.lock().values().find_map(|e| match &e.stored {
            Stored::File(p) if &e.execution_id == id && e.kind == Kind::Result => Some(p.clone()),
            _ => None,
        })
    }

    /// Sends `id`'s reports in order now, on the caller's thread, stopping at
    /// the first one that does not go through (the sender thread takes over).
    /// Returns how the last attempted report fared.
    pub fn flush(&self, api: &Api, id: &ExecutionId) -> Attempt {
        loop {
            let next = {
                let mut entries = self.lock();
                let Some(seq) = next_of(&entries, id) else {
                    return Attempt::Delivered;
                };
                let Some(e) = entries.get_mut(&seq) else {
                    return Attempt::Delivered;
                };
                if e.sending {
                    return Attempt::Pending;
                }
                e.sending = true;
                seq
            };
            match self.attempt(api, next) {
                Attempt::Delivered | Attempt::Dead => continue,
                Attempt::Pending => return Attempt::Pending,
            }
        }
    }

    /// One send of entry `seq` (already marked `sending`).
    fn attempt(&self, api: &Api, seq: u64) -> Attempt {
        let Some(mut report) = self.report(seq) else {
            return Attempt::Delivered;
        };
        self.try_persist(&mut report);
        let Some(body) = self.read_body(&report) else {
            return Attempt::Delivered;
        };
        if report.kind == Kind::Result && report.uncertain {
            if let Some(settled) = self.check_status(api, &report) {
                return settled;
            }
        }
        let sent = send(api, &report, &body);
        self.settle(api, &report, sent)
    }

    /// A copy of what entry `seq` is, taken under the lock so the send
    /// runs without it.
    fn report(&self, seq: u64) -> Option<Report> {
        self.lock().get(&seq).map(|e| Report {
            seq,
            id: e.execution_id.clone(),
            kind: e.kind,
            stored: e.stored.clone(),
            uncertain: e.uncertain,
        })
    }

    /// The report's bytes; `None` (and the entry forgotten) if its file is gone.
    fn read_body(&self, report: &Report) -> Option<Arc<Vec<u8>>> {
        match &report.stored {
            Stored::Memory(body) => Some(body.clone()),
            Stored::File(path) => match fs::read(path) {
                Ok(body) => Some(Arc::new(body)),
                Err(e) => {
                    // Someone removed it (an operator clearing the outbox): drop it.
                    log::warn!("outbox: {} vanished ({e}); forgetting it", path.display());
                    self.lock().remove(&report.seq);
                    None
                }
            },
        }
    }

    /// Before a result whose delivery is in doubt goes again: `Some` when
    /// the status route settled the attempt (the API has it, or cannot tell
    /// yet), `None` when it is to be sent.
    fn check_status(&self, api: &Api, report: &Report) -> Option<Attempt> {
        match self.already_delivered(api, report.seq, &report.id) {
            Some(true) => {
                crate::metrics::global()
                    .results_already_delivered
                    .fetch_add(1, Ordering::Relaxed);
                self.acknowledge(report);
                Some(Attempt::Delivered)
            }
            Some(false) => None,
            None => Some(self.retry_later(report.seq, &report.id, "status check", None)),
        }
    }

    /// What follows from the API's answer to one send.
    fn settle(&self, api: &Api, report: &Report, sent: Result<(), ApiError>) -> Attempt {
        let (seq, id, kind) = (report.seq, &report.id, report.kind);
        match sent {
            Ok(()) => {
                log::info!("execution {id}: {} delivered", kind.as_str());
                self.acknowledge(report);
                Attempt::Delivered
            }
            Err(ApiError::RouteMissing(route)) => {
                self.forget_unroutable(report, route);
                Attempt::Delivered
            }
            Err(e) if e.outcome_unknown() => {
                if let Some(entry) = self.lock().get_mut(&seq) {
                    // It may have landed: ask before the next send.
                    entry.uncertain = true;
                    entry.status_misses = 0;
                }
                self.retry_later(seq, id, kind.as_str(), Some(&e))
            }
            Err(e) if kind == Kind::Result && self.replace_refused(report, &e) => {
                // The small errored result in its place goes out now.
                self.attempt(api, seq)
            }
            Err(e) => {
                self.bury(report, &e);
                Attempt::Dead
            }
        }
    }

    /// The API has no such route (PROTOCOL.md §9: no /logs): no attempt
    /// will ever be taken, and the lines are in output.log and the result
    /// already. Dropped, not a dead letter.
    fn forget_unroutable(&self, report: &Report, route: &str) {
        if let Stored::File(path) = &report.stored {
            let _ = fs::remove_file(path);
        }
        self.lock().remove(&report.seq);
        log::debug!(
            "execution {}: {} dropped: the API has no {route} route",
            report.id,
            report.kind.as_str()
        );
    }

    /// The API refused a result for good because of its body (413: too
    /// large; 400, 422: unreadable to it):
    /// the original goes to `dead/` for the operator, and a small errored
    /// result with the API's answer takes its place, so the execution does
    /// not stay "running". Only once per execution: returns `false` if this
    /// already was the replacement.
    fn replace_refused(&self, report: &Report, e: &ApiError) -> bool {
        let (seq, id) = (report.seq, &report.id);
        // Only refusals of the body itself: a smaller one may be taken. A
        // 403/404/409 is about the execution (not ours, unknown, already
        // complete), and a second result would not help.
        if !matches!(e.status(), Some(400 | 413 | 422)) {
            return false;
        }
        if self.lock().get(&seq).is_none_or(|entry| entry.replacement) {
            return false;
        }
        let why = format!(
            "the API refused this execution's result ({e}); this smaller result replaces it, and the runner kept the original in {}/{DEAD_DIR}/",
            self.shared.dir.display()
        );
        log::error!("execution {id}: {why}");
        let body = match serde_json::to_vec(&crate::report::errored(&why, "")) {
            Ok(b) => b,
            Err(_) => return false,
        };
        let replacement = match &report.stored {
            Stored::File(path) => {
                move_aside(&self.shared.dir.join(DEAD_DIR), path, &e.to_string());
                match fsutil::write_synced(path, &body, fsutil::FILE_MODE)
                    .and_then(|()| self.sync_dir())
                {
                    Ok(()) => Stored::File(path.clone()),
                    Err(err) => {
                        self.shared.state.write_failed("outbox", &err);
                        Stored::Memory(Arc::new(body))
                    }
                }
            }
            Stored::Memory(_) => Stored::Memory(Arc::new(body)),
        };
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&seq) else {
            return false;
        };
        entry.stored = replacement;
        entry.replacement = true;
        // Refused means not stored: nothing to ask about.
        entry.uncertain = false;
        true
    }

    /// Asks the status route whether the API already has `id`'s result.
    /// `None`: cannot tell yet (try again later).
    fn already_delivered(&self, api: &Api, seq: u64, id: &ExecutionId) -> Option<bool> {
        match api.status(id, crate::api::CALL_TIMEOUT) {
            Ok(status) if status.is_complete() => {
                log::info!(
                    "execution {id}: the API already has its result (completion_status {:?}); not sending it again",
                    status.completion_status.as_deref().unwrap_or("")
                );
                Some(true)
            }
            Ok(_) => Some(false),
            // No status route, or no such execution there: the result route
            // decides.
            Err(e) if !e.outcome_unknown() => Some(false),
            Err(e) => {
                let mut entries = self.lock();
                let entry = entries.get_mut(&seq)?;
                entry.status_misses += 1;
                if entry.status_misses >= STATUS_TRIES {
                    log::warn!("execution {id}: cannot ask the API whether it has the result ({e}); sending it again");
                    return Some(false);
                }
                log::warn!(
                    "execution {id}: cannot ask the API whether it has the result yet ({e})"
                );
                None
            }
        }
    }

    /// A memory-only entry is written to disk as soon as the disk allows.
    fn try_persist(&self, report: &mut Report) {
        let Stored::Memory(body) = &report.stored else {
            return;
        };
        let (seq, id) = (report.seq, &report.id);
        let path = self.path_for(seq, report.kind, id);
        let written =
            fsutil::write_synced(&path, body, fsutil::FILE_MODE).and_then(|()| self.sync_dir());
        match written {
            Ok(()) => {
                log::info!(
                    "execution {id}: its result is now kept in {}",
                    path.display()
                );
                let stored = Stored::File(path);
                if let Some(e) = self.lock().get_mut(&seq) {
                    e.stored = stored.clone();
                }
                report.stored = stored;
            }
            Err(_) => {
                let _ = fs::remove_file(&path);
            }
        }
    }

    fn retry_later(&self, seq: u64, id: &ExecutionId, what: &str, e: Option<&ApiError>) -> Attempt {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&seq) {
            let delay = entry.backoff.next_delay().max(Duration::from_millis(100));
            entry.retry_at = Instant::now() + delay;
            entry.sending = false;
            if let Some(e) = e {
                log::warn!(
                    "execution {id}: {what} not delivered ({e}); kept in the outbox, retrying in {} ms",
                    delay.as_millis()
                );
            }
        }
        drop(entries);
        self.shared.wake.notify();
        Attempt::Pending
    }

    /// The API has the report: for a result, `done` goes in the journal
    /// (durably) before the entry is removed, so no crash can make the
    /// next start report the execution again.
    fn acknowledge(&self, report: &Report) {
        let (seq, id, kind, stored) = (report.seq, &report.id, report.kind, &report.stored);
        let mut keep_file = false;
        if kind == Kind::Result {
            crate::failpoint::hit("ledger.acknowledged");
            if let Err(e) = self.shared.journal.done(id) {
                // The file stays: the next start finds it, asks the API,
                // and finishes it then.
                self.shared.state.write_failed("journal", &e);
                log::warn!("execution {id}: cannot record its delivery in the journal ({e})");
                keep_file = true;
            }
            crate::failpoint::hit("ledger.done");
        }
        self.lock().remove(&seq);
        if let (Stored::File(path), false) = (stored, keep_file) {
            if let Err(e) = fs::remove_file(path) {
                log::warn!("outbox: cannot remove delivered {}: {e}", path.display());
            }
        }
    }

    fn bury(&self, report: &Report, e: &ApiError) {
        let (seq, id, kind, stored) = (report.seq, &report.id, report.kind, &report.stored);
        match stored {
            Stored::File(path) => {
                log::error!(
                    "execution {id}: the API refused the {} for good ({e}); moved to {}/{DEAD_DIR}/",
                    kind.as_str(),
                    self.shared.dir.display()
                );
                move_aside(&self.shared.dir.join(DEAD_DIR), path, &e.to_string());
            }
            Stored::Memory(_) => {
                log::error!(
                    "execution {id}: the API refused the {} for good ({e}); dropped",
                    kind.as_str()
                );
            }
        }
        if kind == Kind::Result {
            // Nothing more will be sent for it: the next start must not report it.
            if let Err(e) = self.shared.journal.done(id) {
                log::warn!("execution {id}: cannot record its end in the journal ({e})");
            }
        }
        self.lock().remove(&seq);
    }

    /// Starts the sender thread, which delivers whatever the first attempts
    /// (or a previous run) left behind. It ends on a second signal or once
    /// shutdown is finished; what it did not deliver waits on disk.
    pub fn start_sender(
        &self,
        api: Arc<Api>,
        shutdown: Shutdown,
        threads: &mut Threads,
    ) -> Result<(), SpawnError> {
        let outbox = self.clone();
        threads.spawn("outbox", move || {
            while let Some(seq) = outbox.next_due(&shutdown) {
                outbox.attempt(&api, seq);
            }
        })
    }

    /// Waits for the earliest due report of any execution, marks it being
    /// sent and returns it; `None` when the sender is to stop.
    fn next_due(&self, shutdown: &Shutdown) -> Option<u64> {
        loop {
            if shutdown.is_forced() {
                return None;
            }
            let now = Instant::now();
            let next = {
                let mut entries = self.lock();
                match due(&entries, now) {
                    Due::Now(seq) => {
                        if let Some(e) = entries.get_mut(&seq) {
                            e.sending = true;
                            return Some(seq);
                        }
                        continue;
                    }
                    Due::At(at) => Some(at),
                    Due::Nothing => None,
                }
            };
            if !self.shared.wake.wait(next, shutdown.finished()) {
                return None;
            }
        }
    }
}

/// One send of `report`'s bytes to its route.
fn send(api: &Api, report: &Report, body: &[u8]) -> Result<(), ApiError> {
    match report.kind {
        Kind::Logs => api.send_logs_body(&report.id, body).map(|_| {
            let lines = serde_json::from_slice::<crate::protocol::LogBatch>(body)
                .map_or(0, |b| b.lines.len() as u64);
            crate::metrics::global()
                .log_lines_shipped
                .fetch_add(lines, Ordering::Relaxed);
        }),
        Kind::Result => api.send_result(&report.id, body).map(|_| ()),
    }
}

enum Due {
    Now(u64),
    At(Instant),
    Nothing,
}

/// The first report of each execution, in order, is the one that may go:
/// the earliest of those that is due now, or when the next one will be.
fn due(entries: &BTreeMap<u64, Entry>, now: Instant) -> Due {
    let mut seen = Vec::new();
    let mut next = Due::Nothing;
    for e in entries.values() {
        if seen.contains(&&e.execution_id) {
            continue;
        }
        seen.push(&e.execution_id);
        let Some(seq) = next_of(entries, &e.execution_id) else {
            continue;
        };
        let Some(e) = entries.get(&seq) else {
            continue;
        };
        if e.sending {
            continue;
        }
        if e.retry_at <= now {
            return Due::Now(seq);
        }
        next = match next {
            Due::At(at) if at <= e.retry_at => Due::At(at),
            _ => Due::At(e.retry_at),
        };
    }
    next
}

impl Entry {
    fn new(kind: Kind, execution_id: ExecutionId, stored: Stored, uncertain: bool) -> Self {
        Self {
            kind,
            execution_id,
            stored,
            retry_at: Instant::now(),
            backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
            sending: false,
            uncertain,
            status_misses: 0,
            replacement: false,
        }
    }
}

/// The report of `id` to send next: its log batches before its result
/// (a result file is reserved before the last log lines are written, so it
/// can have the lower number), each in number order.
fn next_of(entries: &BTreeMap<u64, Entry>, id: &ExecutionId) -> Option<u64> {
    let mut result = None;
    for (seq, e) in entries {
        if &e.execution_id != id {
            continue;
        }
        match e.kind {
            Kind::Logs => return Some(*seq),
            Kind::Result => result = result.or(Some(*seq)),
        }
    }
    result
}

/// What a previous run left in `dir`: the reports to deliver, and the
/// highest number in use (never reused, even a corrupt report's).
fn load(dir: &Path) -> io::Result<(BTreeMap<u64, Entry>, u64)> {
    let mut entries = BTreeMap::new();
    let mut max_seq = 0;
    for item in fs::read_dir(dir)? {
        let item = item?;
        let path = item.path();
        if !item.file_type()?.is_file() {
            continue;
        }
        let name = item.file_name().to_string_lossy().into_owned();
        if fsutil::is_temp(&name) {
            // A write that never finished: it was never handed to anyone.
            let _ = fs::remove_file(&path);
            continue;
        }
        let parsed = parse_name(&name);
        if let Some((seq, _, _)) = &parsed {
            // Even a corrupt report's number is never reused.
            max_seq = max_seq.max(*seq);
        }
        if item.metadata()?.len() == 0 {
            // A reservation never filled: the execution's journal entry
            // stands for it (recovery reports it).
            let _ = fs::remove_file(&path);
            continue;
        }
        match parsed.filter(|_| looks_like_json(&path)) {
            Some((seq, kind, execution_id)) => {
                // The previous run may have sent it: ask before resending.
                entries.insert(
                    seq,
                    Entry::new(kind, execution_id, Stored::File(path), true),
                );
            }
            None => move_aside(&dir.join(CORRUPT_DIR), &path, "not a readable report"),
        }
    }
    Ok((entries, max_seq))
}

/// `{seq}.{kind}.{execution_id}.json`
fn parse_name(name: &str) -> Option<(u64, Kind, ExecutionId)> {
    let rest = name.strip_suffix(".json")?;
    let mut parts = rest.splitn(3, '.');
    let seq = parts.next()?.parse().ok()?;
    let kind = Kind::parse(parts.next()?)?;
    let id = ExecutionId::parse(parts.next()?).ok()?;
    Some((seq, kind, id))
}

fn looks_like_json(path: &Path) -> bool {
    fs::read(path)
        .ok()
        .is_some_and(|b| serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let (seq, kind, id) = parse_name("0000000000000042.result.abc-1.2.json").unwrap();
        assert_eq!(seq, 42);
        assert_eq!(kind, Kind::Result);
        assert_eq!(id.as_str(), "abc-1.2");
        assert!(parse_name("x.result.a.json").is_none());
        assert!(parse_name("1.other.a.json").is_none());
        assert!(parse_name("1.logs..json").is_none());
    }

    fn open(dir: &Path) -> Outbox {
        let state = StateDir::lock(dir).unwrap();
        let journal = Journal::open(dir).unwrap();
        Outbox::open(&state, journal).unwrap()
    }

    #[test]
    fn reopens_pending_reports_and_moves_corrupt_ones_aside() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path());
        let id = ExecutionId::parse("e1").unwrap();
        let logs = vec![br#"{"lines":["a"]}"#.to_vec()];
        let put = outbox.put(
            &id,
            &logs,
            br#"{"has_errored":false,"state":{}}"#,
            false,
            None,
        );
        assert_eq!(put, Durability::Durable);
        drop(outbox);
        let out = dir.path().join(OUTBOX_DIR);
        fs::write(out.join("0000000000000009.result.e2.json"), b"{torn").unwrap();
        fs::write(out.join("junk.txt"), b"x").unwrap();
        let again = open(dir.path());
        assert_eq!(again.depth(), 2);
        assert!(again.has_pending_result(&id));
        assert!(out.join(CORRUPT_DIR).join("junk.txt").exists());
        assert!(out
            .join(CORRUPT_DIR)
            .join("0000000000000009.result.e2.json")
            .exists());
        let e3 = ExecutionId::parse("e3").unwrap();
        again.put(&e3, &[], b"{}", false, None);
        let seq = again.lock().keys().last().copied().unwrap();
        assert!(seq > 9, "sequence continues after what was on disk");
    }

    #[test]
    fn a_logs_only_entry_is_not_a_pending_result() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(OUTBOX_DIR);
        fs::create_dir_all(&out).unwrap();
        fs::write(
            out.join("0000000000000001.logs.e1.json"),
            br#"{"lines":[]}"#,
        )
        .unwrap();
        let outbox = open(dir.path());
        let id = ExecutionId::parse("e1").unwrap();
        assert_eq!(outbox.depth(), 1);
        assert!(!outbox.has_pending_result(&id));
    }

    #[test]
    fn a_result_that_cannot_be_written_is_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path());
        // A directory where the file would go: the write fails.
        let id = ExecutionId::parse("e1").unwrap();
        let seq = *crate::sync::lock(&outbox.shared.next_seq);
        fs::create_dir_all(outbox.path_for(seq, Kind::Result, &id)).unwrap();
        assert_eq!(
            outbox.put(&id, &[], b"{}", false, None),
            Durability::InMemory
        );
        assert!(outbox.has_pending_result(&id));
        assert!(outbox.result_file(&id).is_none());
    }

    #[test]
    fn a_reserved_result_is_filled_in_place_and_an_unfilled_one_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path());
        let id = ExecutionId::parse("e1").unwrap();
        let r = outbox.reserve(&id).unwrap();
        let path = r.path.clone();
        let logs = vec![br#"{"lines":["last"]}"#.to_vec()];
        let put = outbox.put(
            &id,
            &logs,
            br#"{"has_errored":false,"state":{}}"#,
            false,
            Some(r),
        );
        assert_eq!(put, Durability::Durable);
        assert_eq!(
            fs::read(&path).unwrap(),
            br#"{"has_errored":false,"state":{}}"#
        );
        // The log batch has the higher number but goes first.
        let entries = outbox.lock();
        let first = next_of(&entries, &id).unwrap();
        assert_eq!(entries[&first].kind, Kind::Logs);
        drop(entries);
        let e2 = ExecutionId::parse("e2").unwrap();
        let unfilled = outbox.reserve(&e2).unwrap().path;
        drop(outbox);
        let again = open(dir.path());
        assert!(!unfilled.exists(), "an unfilled reservation is removed");
        assert_eq!(again.depth(), 2);
        assert!(!again.has_pending_result(&e2));
    }
}
