//! The durable outbox (PROTOCOL.md §8, flo-runner goes further): every result,
//! and the last log lines of an execution, is written to
//! `{state_directory}/outbox/` before the first attempt to send it, and removed
//! only after a 2xx. A sender thread delivers what the first attempt could not,
//! per execution in order, with full-jitter backoff, across restarts.
//!
//! Why a resend is harmless: a report is re-sent only when the previous
//! attempt's outcome is unknown, always with the same bytes (the file), and the
//! API stores a result by overwriting the execution's record, so a duplicate
//! delivery writes the same result again. The runner builds one result per
//! execution, once, so it never sends two different ones.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};
use crate::backoff::Backoff;
use crate::fsutil::{self, move_aside, CORRUPT_DIR};
use crate::ids::ExecutionId;
use crate::shutdown::Shutdown;

pub const OUTBOX_DIR: &str = "outbox";
pub const DEAD_DIR: &str = "dead";
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

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

struct Entry {
    kind: Kind,
    execution_id: ExecutionId,
    path: PathBuf,
    retry_at: Instant,
    backoff: Backoff,
    sending: bool,
}

struct Shared {
    dir: PathBuf,
    entries: Mutex<BTreeMap<u64, Entry>>,
    wake: Condvar,
    next_seq: Mutex<u64>,
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

#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Opens (creating) `{state_dir}/outbox`, loading what a previous run left.
    /// Files that cannot be reports are moved to `outbox/corrupt/`.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join(OUTBOX_DIR);
        fsutil::create_dir_all(&dir)?;
        let mut entries = BTreeMap::new();
        let mut max_seq = 0;
        for item in fs::read_dir(&dir)? {
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
            match parsed.filter(|_| looks_like_json(&path)) {
                Some((seq, kind, execution_id)) => {
                    entries.insert(
                        seq,
                        Entry {
                            kind,
                            execution_id,
                            path,
                            retry_at: Instant::now(),
                            backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
                            sending: false,
                        },
                    );
                }
                None => move_aside(&dir.join(CORRUPT_DIR), &path, "not a readable report"),
            }
        }
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
                wake: Condvar::new(),
                next_seq: Mutex::new(max_seq + 1),
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

    /// Whether `id` has reports waiting.
    pub fn has_pending(&self, id: &ExecutionId) -> bool {
        self.lock().values().any(|e| &e.execution_id == id)
    }

    /// Writes a report atomically and durably. Nothing is sent yet: call
    /// [`Outbox::flush`].
    pub fn put(&self, kind: Kind, id: &ExecutionId, body: &[u8]) -> io::Result<u64> {
        let (seq, path) = self.put_unsynced(kind, id, body)?;
        fsutil::sync(&path)?;
        Ok(seq)
    }

    /// Writes a report atomically (complete or absent, never torn) but leaves
    /// the fsync to the caller, who runs it beside the first delivery attempt
    /// (see `job::report`) instead of before it. Returns the file.
    pub fn put_unsynced(
        &self,
        kind: Kind,
        id: &ExecutionId,
        body: &[u8],
    ) -> io::Result<(u64, PathBuf)> {
        let seq = {
            let mut next = crate::sync::lock(&self.shared.next_seq);
            let seq = *next;
            *next += 1;
            seq
        };
        let path = self
            .shared
            .dir
            .join(format!("{seq:016}.{}.{id}.json", kind.as_str()));
        fsutil::replace(&path, body, fsutil::FILE_MODE)?;
        self.lock().insert(
            seq,
            Entry {
                kind,
                execution_id: id.clone(),
                path: path.clone(),
                // The caller makes the first attempt; the sender waits a beat.
                retry_at: Instant::now() + RETRY_BASE,
                backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
                sending: false,
            },
        );
        Ok((seq, path))
    }

    /// Sends `id`'s reports in order now, on the caller's thread, stopping at
    /// the first one that does not go through (the sender thread takes over).
    /// Returns how the last attempted report fared.
    pub fn flush(&self, api: &Api, id: &ExecutionId) -> Attempt {
        loop {
            let next = {
                let mut entries = self.lock();
                let Some((seq, e)) = entries.iter_mut().find(|(_, e)| &e.execution_id == id) else {
                    return Attempt::Delivered;
                };
                if e.sending {
                    return Attempt::Pending;
                }
                e.sending = true;
                (*seq, e.kind, e.path.clone())
            };
            match self.attempt(api, next) {
                Attempt::Delivered | Attempt::Dead => continue,
                Attempt::Pending => return Attempt::Pending,
            }
        }
    }

    /// One send of entry `seq` (already marked `sending`).
    fn attempt(&self, api: &Api, (seq, kind, path): (u64, Kind, PathBuf)) -> Attempt {
        let id = match self.lock().get(&seq) {
            Some(e) => e.execution_id.clone(),
            None => return Attempt::Delivered,
        };
        let result = match fs::read(&path) {
            Ok(body) => match kind {
                Kind::Logs => api.send_logs_body(&id, &body).map(|_| {
                    let lines = serde_json::from_slice::<crate::protocol::LogBatch>(&body)
                        .map_or(0, |b| b.lines.len() as u64);
                    crate::metrics::global()
                        .log_lines_shipped
                        .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
                }),
                Kind::Result => api.send_result(&id, &body).map(|_| ()),
            },
            Err(e) => {
                // Someone removed it (an operator clearing the outbox): drop it.
                log::warn!("outbox: {} vanished ({e}); forgetting it", path.display());
                self.lock().remove(&seq);
                return Attempt::Delivered;
            }
        };
        match result {
            Ok(()) => {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("outbox: cannot remove delivered {}: {e}", path.display());
                }
                self.lock().remove(&seq);
                log::info!("execution {id}: {} delivered", kind.as_str());
                Attempt::Delivered
            }
            Err(ApiError::RouteMissing(route)) => {
                // The API has no such route (PROTOCOL.md §9: no /logs): no
                // attempt will ever be taken, and the lines are in output.log
                // and the result already. Dropped, not a dead letter.
                let _ = fs::remove_file(&path);
                self.lock().remove(&seq);
                log::debug!(
                    "execution {id}: {} dropped: the API has no {route} route",
                    kind.as_str()
                );
                Attempt::Delivered
            }
            Err(e) if e.outcome_unknown() => {
                let mut entries = self.lock();
                if let Some(entry) = entries.get_mut(&seq) {
                    let delay = entry.backoff.next_delay().max(Duration::from_millis(100));
                    entry.retry_at = Instant::now() + delay;
                    entry.sending = false;
                    log::warn!(
                        "execution {id}: {} not delivered ({e}); kept in the outbox, retrying in {} ms",
                        kind.as_str(),
                        delay.as_millis()
                    );
                }
                self.shared.wake.notify_all();
                Attempt::Pending
            }
            Err(e) => {
                self.bury(seq, &path, &id, kind, &e);
                Attempt::Dead
            }
        }
    }

    fn bury(&self, seq: u64, path: &Path, id: &ExecutionId, kind: Kind, e: &ApiError) {
        log::error!(
            "execution {id}: the API refused the {} for good ({e}); moved to {}/{DEAD_DIR}/",
            kind.as_str(),
            self.shared.dir.display()
        );
        move_aside(&self.shared.dir.join(DEAD_DIR), path, &e.to_string());
        self.lock().remove(&seq);
    }

    /// Starts the sender thread, which delivers whatever the first attempts
    /// (or a previous run) left behind.
    pub fn start_sender(&self, api: Arc<Api>, shutdown: Shutdown) {
        let outbox = self.clone();
        let spawned = thread::Builder::new()
            .name("outbox".into())
            .spawn(move || outbox.sender_loop(&api, &shutdown));
        if let Err(e) = spawned {
            log::error!("cannot start the outbox sender: {e}; reports wait for the next start");
        }
    }

    fn sender_loop(&self, api: &Api, shutdown: &Shutdown) {
        loop {
            let next = {
                let mut entries = self.lock();
                loop {
                    let now = Instant::now();
                    // The earliest report of each execution that is due.
                    let mut seen = Vec::new();
                    let mut due = None;
                    let mut wait = Duration::from_secs(3600);
                    for (seq, e) in entries.iter() {
                        if seen.contains(&&e.execution_id) {
                            continue;
                        }
                        seen.push(&e.execution_id);
                        if e.sending {
                            continue;
                        }
                        if e.retry_at <= now {
                            due = Some(*seq);
                            break;
                        }
                        wait = wait.min(e.retry_at - now);
                    }
                    if let Some(seq) = due {
                        let Some(e) = entries.get_mut(&seq) else {
                            continue;
                        };
                        e.sending = true;
                        break (seq, e.kind, e.path.clone());
                    }
                    if shutdown.is_forced() {
                        return;
                    }
                    entries = crate::sync::wait_timeout(&self.shared.wake, entries, wait);
                }
            };
            self.attempt(api, next);
        }
    }
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

    #[test]
    fn reopens_pending_reports_and_moves_corrupt_ones_aside() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let id = ExecutionId::parse("e1").unwrap();
        outbox.put(Kind::Logs, &id, br#"{"lines":["a"]}"#).unwrap();
        outbox
            .put(Kind::Result, &id, br#"{"has_errored":false,"state":{}}"#)
            .unwrap();
        let out = dir.path().join(OUTBOX_DIR);
        fs::write(out.join("0000000000000009.result.e2.json"), b"").unwrap();
        fs::write(out.join("junk.txt"), b"x").unwrap();
        let again = Outbox::open(dir.path()).unwrap();
        assert_eq!(again.depth(), 2);
        assert!(again.has_pending(&id));
        assert!(out.join(CORRUPT_DIR).join("junk.txt").exists());
        assert!(out
            .join(CORRUPT_DIR)
            .join("0000000000000009.result.e2.json")
            .exists());
        let seq = again
            .put(Kind::Result, &ExecutionId::parse("e3").unwrap(), b"{}")
            .unwrap();
        assert!(seq > 9, "sequence continues after what was on disk");
    }
}
