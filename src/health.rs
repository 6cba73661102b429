//! Liveness without a port: the runner writes `{state_directory}/heartbeat`
//! every few seconds, saying whether it is registered, when its poll loop
//! last made progress and whether the state directory can be written;
//! `flo-runner health` reads it. This is what container health checks and
//! Kubernetes exec probes use.
//!
//! The heartbeat is rewritten in place (one `pwrite` at offset 0 of a
//! padded, fixed-size body), not replaced: a full disk still takes it, so
//! the runner can say that its disk is full. A heartbeat that cannot be
//! written at all (a read-only directory) goes stale, and `health` then
//! tests the directory itself to say why.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::runner::{SpawnError, Threads};
use crate::shutdown::{Shutdown, Wake};
use crate::statedir::{self, StateDir};

pub const HEARTBEAT_FILE: &str = "heartbeat";
const WRITE_EVERY: Duration = Duration::from_secs(5);
/// While the state directory cannot be written, it is probed this often.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// The heartbeat's fixed size: JSON padded with spaces (valid JSON still).
const HEARTBEAT_BYTES: usize = 1024;
/// A heartbeat older than this means the runner is gone or wedged.
pub const STALE_AFTER: u64 = 30;
/// The poll loop may legitimately be quiet this long: a 35 s poll plus a
/// 60 s error backoff, with margin.
pub const POLL_STALE_AFTER: u64 = 120;

#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub pid: u32,
    pub written_at: u64,
    pub registered: bool,
    pub poll_loop_at: u64,
    /// Why the state directory cannot be written, while it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_problem: Option<String>,

    /// Since when every poll has been refused (0: the last one was not).
    #[serde(default)]
    pub poll_refused: PollRefused,
}

/// Polls refused in a row (403/404: a wrong key or a wrong URL, which no
/// amount of waiting fixes), unlike transport errors and 5xx (an outage,
/// which restarting the runner would not fix either). Kept apart from the
/// rest of the health state so the rule reads in one place.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PollRefused {
    /// Unix seconds of the first refusal in the row (0: none).
    #[serde(default)]
    pub since: u64,
    /// The status of the last refusal.
    #[serde(default)]
    pub status: u16,
    /// Seconds of refusals before the runner is unhealthy (0: never).
    #[serde(default)]
    pub window: u64,
}

impl PollRefused {
    fn problem(&self, now: u64) -> Option<String> {
        if self.since == 0 || self.window == 0 {
            return None;
        }
        let secs = now.saturating_sub(self.since);
        (secs >= self.window).then(|| {
            format!(
                "every poll for {secs} s was refused by the API (last: HTTP {}); a wrong runner.url or key is not fixed by waiting",
                self.status
            )
        })
    }
}

/// Shared liveness state, updated by the registration and the poll loop.
#[derive(Default)]
pub struct Health {
    registered: AtomicBool,
    poll_loop_at: AtomicU64,
    /// The poll loop is waiting for a free slot (see [`Health::parked`]).
    poll_parked: AtomicBool,
    /// Registration, refusals or writability changed: write the heartbeat
    /// now rather than in 5 s.
    changed: Wake,
    state: OnceLock<StateDir>,
    /// See [`PollRefused`]; `poll_refused_since` 0 means not refused.
    poll_refused_since: AtomicU64,
    poll_refused_status: AtomicU64,
    poll_refused_window: AtomicU64,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Health {
    pub fn mark_registered(&self) {
        self.registered.store(true, Ordering::SeqCst);
        self.poll_tick();
        self.changed.notify();
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }

    /// The poll loop is alive (called on every turn; see also [`Health::parked`]).
    pub fn poll_tick(&self) {
        self.poll_loop_at.store(now_secs(), Ordering::SeqCst);
    }

    /// When the poll loop last moved: now while it is parked.
    pub fn poll_loop_at(&self) -> u64 {
        if self.poll_parked.load(Ordering::SeqCst) {
            return now_secs();
        }
        self.poll_loop_at.load(Ordering::SeqCst)
    }

    /// The poll loop waits for a free slot until the guard is dropped: it
    /// is alive meanwhile, without waking to say so.
    pub fn parked(&self) -> Parked<'_> {
        self.poll_parked.store(true, Ordering::SeqCst);
        Parked(self)
    }

    fn state_problem(&self) -> Option<String> {
        self.state.get().and_then(StateDir::problem)
    }

    /// A poll was refused with `status` (403/404...); unhealthy once that
    /// has gone on for `window` (`None`: never).
    pub fn poll_refused(&self, status: u16, window: Option<std::time::Duration>) {
        self.poll_refused_status
            .store(u64::from(status), Ordering::SeqCst);
        self.poll_refused_window
            .store(window.map_or(0, |w| w.as_secs().max(1)), Ordering::SeqCst);
        let first = self
            .poll_refused_since
            .compare_exchange(0, now_secs().max(1), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if first {
            self.changed.notify();
        }
    }

    /// A poll was answered (2xx): whatever was refused before is over.
    pub fn poll_accepted(&self) {
        if self.poll_refused_since.swap(0, Ordering::SeqCst) != 0 {
            self.changed.notify();
        }
    }

    fn refused(&self) -> PollRefused {
        PollRefused {
            since: self.poll_refused_since.load(Ordering::SeqCst),
            status: u16::try_from(self.poll_refused_status.load(Ordering::SeqCst)).unwrap_or(0),
            window: self.poll_refused_window.load(Ordering::SeqCst),
        }
    }

    /// Why the runner is not healthy, if it is not.
    pub fn problem(&self) -> Option<String> {
        let now = now_secs();
        evaluate(
            self.is_registered(),
            self.poll_loop_at(),
            self.state_problem(),
            now,
        )
        .or_else(|| self.refused().problem(now))
    }

    /// Writes the heartbeat file every few seconds, and at once when
    /// registration, refusals or the state directory's writability change,
    /// until shutdown is requested; then
    /// removes it. While the state directory cannot be written, it probes
    /// it, so the runner takes work again as soon as it can.
    pub fn start_writer(
        self: &Arc<Self>,
        state: StateDir,
        shutdown: Shutdown,
        threads: &mut Threads,
    ) -> Result<(), SpawnError> {
        let path = state.path().join(HEARTBEAT_FILE);
        let _ = self.state.set(state.clone());
        // A write elsewhere failing (or a probe succeeding) changes what
        // the heartbeat says, and how often it probes: beat now.
        state.on_change(self.changed.clone());
        let health = self.clone();
        threads.spawn("heartbeat", move || loop {
            health.beat(&state, &path);
            let every = if state.is_writable() {
                WRITE_EVERY
            } else {
                PROBE_EVERY
            };
            if !health
                .changed
                .wait(Some(Instant::now() + every), shutdown.requested())
            {
                let _ = std::fs::remove_file(&path);
                return;
            }
        })
    }

    /// One heartbeat: the state directory checked (or probed while it
    /// cannot be written), then the file rewritten.
    fn beat(&self, state: &StateDir, path: &Path) {
        if state.is_writable() {
            // No I/O: permissions, a read-only mount, no space.
            state.check();
        } else {
            state.probe();
        }
        let beat = Heartbeat {
            pid: std::process::id(),
            written_at: now_secs(),
            registered: self.is_registered(),
            poll_loop_at: self.poll_loop_at(),
            state_problem: state.problem(),
            poll_refused: self.refused(),
        };
        if let Err(e) = write_heartbeat(path, &beat) {
            state.write_failed("heartbeat", &e);
        }
    }
}

/// See [`Health::parked`].
pub struct Parked<'a>(&'a Health);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.poll_tick();
        self.0.poll_parked.store(false, Ordering::SeqCst);
    }
}

/// Overwrites the heartbeat in place (creating it, full size, the first
/// time), so that a full disk does not stop it.
fn write_heartbeat(path: &Path, beat: &Heartbeat) -> io::Result<()> {
    let mut body = serde_json::to_vec(beat).map_err(io::Error::other)?;
    if body.len() > HEARTBEAT_BYTES {
        return Err(io::Error::other("heartbeat too long"));
    }
    body.resize(HEARTBEAT_BYTES, b' ');
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(f) if f.metadata()?.len() == HEARTBEAT_BYTES as u64 => f.write_all_at(&body, 0),
        Ok(_) => fsutil::replace(path, &body, fsutil::FILE_MODE),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fsutil::replace(path, &body, fsutil::FILE_MODE)
        }
        Err(e) => Err(e),
    }
}

fn evaluate(
    registered: bool,
    poll_loop_at: u64,
    state_problem: Option<String>,
    now: u64,
) -> Option<String> {
    if let Some(problem) = state_problem {
        return Some(format!("{problem}; no new work is taken"));
    }
    if !registered {
        return Some("not registered with the API yet".into());
    }
    let quiet = now.saturating_sub(poll_loop_at);
    if quiet > POLL_STALE_AFTER {
        return Some(format!("the poll loop has not moved for {quiet} s"));
    }
    None
}

/// A runner that `flo-runner health` finds well.
#[derive(Debug)]
pub struct Healthy {
    pub pid: u32,
    /// Seconds since its last heartbeat.
    pub age: u64,
}

impl fmt::Display for Healthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "healthy (pid {}, heartbeat {} s ago)",
            self.pid, self.age
        )
    }
}

/// Why `flo-runner health` finds the runner unwell.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("state directory {} cannot be written ({source}); the runner takes no new work until it can", dir.display())]
    StateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no heartbeat at {} ({source}): is the runner running?", path.display())]
    NoHeartbeat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a heartbeat: {source}", path.display())]
    NotAHeartbeat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the runner (pid {pid}) is not running")]
    Gone { pid: u32 },
    #[error("the runner (pid {pid}) is not running: that pid is now {now:?}")]
    PidReused { pid: u32, now: String },
    #[error("the heartbeat is {age} s old (pid {pid})")]
    Stale { age: u64, pid: u32 },
    /// What the heartbeat itself reports: not registered, a stuck poll
    /// loop, an unwritable state directory, every poll refused.
    #[error("{0}")]
    Reported(String),
}

/// `flo-runner health`: reads the heartbeat of the runner using `state_dir`.
pub fn check(state_dir: &Path) -> Result<Healthy, Unhealthy> {
    let path: PathBuf = state_dir.join(HEARTBEAT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(source) => {
            return Err(disk_problem(state_dir).unwrap_or(Unhealthy::NoHeartbeat { path, source }))
        }
    };
    let beat: Heartbeat = serde_json::from_slice(&bytes)
        .map_err(|source| Unhealthy::NotAHeartbeat { path, source })?;
    let now = now_secs();
    let pid = beat.pid;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Unhealthy::Gone { pid });
    }
    // A heartbeat left by a runner that died, whose pid now belongs to
    // some other program, must not pass for a live runner.
    match (comm(&pid.to_string()), comm("self")) {
        (Some(theirs), Some(ours)) if theirs != ours => {
            return Err(Unhealthy::PidReused { pid, now: theirs });
        }
        _ => {}
    }
    let age = now.saturating_sub(beat.written_at);
    if age > STALE_AFTER {
        // A runner that cannot write its heartbeat most likely cannot write
        // anything else there either: say that rather than "stale".
        return Err(disk_problem(state_dir).unwrap_or(Unhealthy::Stale { age, pid }));
    }
    if let Some(problem) = evaluate(beat.registered, beat.poll_loop_at, beat.state_problem, now)
        .or_else(|| beat.poll_refused.problem(now))
    {
        return Err(Unhealthy::Reported(problem));
    }
    Ok(Healthy { pid, age })
}

/// The command name of a process (`/proc/<pid>/comm`: readable even for a
/// non-dumpable runner, unlike its `exe`).
fn comm(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

/// Why `state_dir` cannot be written, if a test write fails there.
fn disk_problem(state_dir: &Path) -> Option<Unhealthy> {
    statedir::probe_dir(state_dir)
        .err()
        .map(|source| Unhealthy::StateDir {
            dir: state_dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_registration_and_poll_loop() {
        assert!(evaluate(false, 100, None, 100).is_some());
        assert!(evaluate(true, 100, None, 100 + POLL_STALE_AFTER).is_none());
        assert!(evaluate(true, 100, None, 101 + POLL_STALE_AFTER).is_some());
        let why = evaluate(true, 100, Some("state directory /s is full".into()), 100).unwrap();
        assert!(why.contains("/s is full"), "{why}");
    }

    #[test]
    fn check_reads_a_fresh_heartbeat() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check(dir.path()).is_err());
        let beat = Heartbeat {
            pid: std::process::id(),
            written_at: now_secs(),
            registered: true,
            poll_loop_at: now_secs(),
            state_problem: None,
            poll_refused: PollRefused::default(),
        };
        std::fs::write(
            dir.path().join(HEARTBEAT_FILE),
            serde_json::to_vec(&beat).unwrap(),
        )
        .unwrap();
        assert!(check(dir.path()).is_ok());
        let stale = Heartbeat {
            written_at: 1,
            ..beat
        };
        std::fs::write(
            dir.path().join(HEARTBEAT_FILE),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        assert!(check(dir.path()).unwrap_err().to_string().contains("old"));
    }

    #[test]
    fn refused_polls_make_it_unhealthy_after_the_window_and_an_answer_clears_them() {
        let refused = |since, window| PollRefused {
            since,
            status: 403,
            window,
        };
        assert!(refused(0, 180).problem(1000).is_none());
        assert!(refused(900, 180).problem(1000).is_none());
        let why = refused(800, 180).problem(1000).unwrap();
        assert!(why.contains("200 s") && why.contains("403"), "{why}");
        assert!(refused(800, 0).problem(1000).is_none(), "window 0: never");

        let health = Health::default();
        health.mark_registered();
        health.poll_refused(404, Some(std::time::Duration::from_secs(1)));
        health.poll_refused_since.store(1, Ordering::SeqCst);
        assert!(health.problem().unwrap().contains("HTTP 404"));
        health.poll_accepted();
        assert!(health.problem().is_none());
        // A heartbeat from before this field existed is still read.
        let old: Heartbeat =
            serde_json::from_str(r#"{"pid":1,"written_at":2,"registered":true,"poll_loop_at":3}"#)
                .unwrap();
        assert_eq!(old.poll_refused, PollRefused::default());
    }
}
