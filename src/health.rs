//! Liveness without a port: the runner writes `{state_directory}/heartbeat`
//! every few seconds, saying whether it is registered and when its poll loop
//! last made progress; `flo-runner health` reads it. This is what container
//! health checks and Kubernetes exec probes use.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::shutdown::Shutdown;

pub const HEARTBEAT_FILE: &str = "heartbeat";
const WRITE_EVERY: Duration = Duration::from_secs(5);
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
}

/// Shared liveness state, updated by the registration and the poll loop.
#[derive(Default)]
pub struct Health {
    registered: AtomicBool,
    poll_loop_at: AtomicU64,
    /// Registration changed: write the heartbeat now rather than in 5 s.
    changed: AtomicBool,
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

    /// Why the runner is not healthy, if it is not.
    pub fn problem(&self) -> Option<String> {
        evaluate(self.is_registered(), self.poll_loop_at(), now_secs())
    }

    /// Writes the heartbeat file every few seconds until shutdown, then removes it.
    pub fn start_writer(self: &Arc<Self>, state_dir: &Path, shutdown: Shutdown) {
        let path = state_dir.join(HEARTBEAT_FILE);
        let health = self.clone();
        let spawned = thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                health.changed.store(false, Ordering::SeqCst);
                let beat = Heartbeat {
                    pid: std::process::id(),
                    written_at: now_secs(),
                    registered: health.is_registered(),
                    poll_loop_at: health.poll_loop_at(),
                };
                if let Ok(body) = serde_json::to_vec(&beat) {
                    if let Err(e) = fsutil::replace(&path, &body, fsutil::FILE_MODE) {
                        log::warn!("cannot write {}: {e}", path.display());
                    }
                }
                let due = std::time::Instant::now() + WRITE_EVERY;
                while std::time::Instant::now() < due && !health.changed.load(Ordering::SeqCst) {
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

fn evaluate(registered: bool, poll_loop_at: u64, now: u64) -> Option<String> {
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
        format!(
            "no heartbeat at {} ({e}): is the runner running?",
            path.display()
        )
    })?;
    let beat: Heartbeat = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a heartbeat: {e}", path.display()))?;
    let now = now_secs();
    if !Path::new(&format!("/proc/{}", beat.pid)).exists() {
        return Err(format!("the runner (pid {}) is not running", beat.pid));
    }
    let age = now.saturating_sub(beat.written_at);
    if age > STALE_AFTER {
        return Err(format!("the heartbeat is {age} s old (pid {})", beat.pid));
    }
    if let Some(problem) = evaluate(beat.registered, beat.poll_loop_at, now) {
        return Err(problem);
    }
    Ok(format!("healthy (pid {}, heartbeat {age} s ago)", beat.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_registration_and_poll_loop() {
        assert!(evaluate(false, 100, 100).is_some());
        assert!(evaluate(true, 100, 100 + POLL_STALE_AFTER).is_none());
        assert!(evaluate(true, 100, 101 + POLL_STALE_AFTER).is_some());
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
