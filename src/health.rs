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

use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::shutdown::Shutdown;
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
}

/// Shared liveness state, updated by the registration and the poll loop.
#[derive(Default)]
pub struct Health {
    registered: AtomicBool,
    poll_loop_at: AtomicU64,
    /// Registration changed: write the heartbeat now rather than in 5 s.
    changed: AtomicBool,
    state: OnceLock<StateDir>,
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
        self.changed.store(true, Ordering::SeqCst);
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::SeqCst)
    }

    /// The poll loop is alive (called on every turn and while waiting for a slot).
    pub fn poll_tick(&self) {
        self.poll_loop_at.store(now_secs(), Ordering::SeqCst);
    }

    pub fn poll_loop_at(&self) -> u64 {
        self.poll_loop_at.load(Ordering::SeqCst)
    }

    fn state_problem(&self) -> Option<String> {
        self.state.get().and_then(StateDir::problem)
    }

    /// Why the runner is not healthy, if it is not.
    pub fn problem(&self) -> Option<String> {
        evaluate(
            self.is_registered(),
            self.poll_loop_at(),
            self.state_problem(),
            now_secs(),
        )
    }

    /// Writes the heartbeat file every few seconds until shutdown, then
    /// removes it. While the state directory cannot be written, it probes
    /// it, so the runner takes work again as soon as it can.
    pub fn start_writer(self: &Arc<Self>, state: StateDir, shutdown: Shutdown) {
        let path = state.path().join(HEARTBEAT_FILE);
        let _ = self.state.set(state.clone());
        let health = self.clone();
        let spawned = thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                health.changed.store(false, Ordering::SeqCst);
                if state.is_writable() {
                    // No I/O: permissions, a read-only mount, no space.
                    state.check();
                } else {
                    state.probe();
                }
                let was_writable = state.is_writable();
                let beat = Heartbeat {
                    pid: std::process::id(),
                    written_at: now_secs(),
                    registered: health.is_registered(),
                    poll_loop_at: health.poll_loop_at(),
                    state_problem: state.problem(),
                };
                if let Err(e) = write_heartbeat(&path, &beat) {
                    state.write_failed("heartbeat", &e);
                }
                let every = if state.is_writable() {
                    WRITE_EVERY
                } else {
                    PROBE_EVERY
                };
                let due = std::time::Instant::now() + every;
                while std::time::Instant::now() < due
                    && !health.changed.load(Ordering::SeqCst)
                    && state.is_writable() == was_writable
                {
                    if shutdown.sleep(Duration::from_secs(1)) {
                        let _ = std::fs::remove_file(&path);
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the heartbeat thread: {e}; `flo-runner health` will fail");
        }
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

/// `flo-runner health`: reads the heartbeat of the runner using `state_dir`.
pub fn check(state_dir: &Path) -> Result<String, String> {
    let path: PathBuf = state_dir.join(HEARTBEAT_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        disk_problem(state_dir).unwrap_or_else(|| {
            format!(
                "no heartbeat at {} ({e}): is the runner running?",
                path.display()
            )
        })
    })?;
    let beat: Heartbeat = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a heartbeat: {e}", path.display()))?;
    let now = now_secs();
    if !Path::new(&format!("/proc/{}", beat.pid)).exists() {
        return Err(format!("the runner (pid {}) is not running", beat.pid));
    }
    let age = now.saturating_sub(beat.written_at);
    if age > STALE_AFTER {
        // A runner that cannot write its heartbeat most likely cannot write
        // anything else there either: say that rather than "stale".
        return Err(disk_problem(state_dir)
            .unwrap_or_else(|| format!("the heartbeat is {age} s old (pid {})", beat.pid)));
    }
    if let Some(problem) = evaluate(beat.registered, beat.poll_loop_at, beat.state_problem, now) {
        return Err(problem);
    }
    Ok(format!("healthy (pid {}, heartbeat {age} s ago)", beat.pid))
}

/// Why `state_dir` cannot be written, if a test write fails there.
fn disk_problem(state_dir: &Path) -> Option<String> {
    statedir::probe_dir(state_dir).err().map(|e| {
        format!(
            "state directory {} cannot be written ({e}); the runner takes no new work until it can",
            state_dir.display()
        )
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
        assert!(check(dir.path()).unwrap_err().contains("old"));
    }
}
