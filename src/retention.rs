//! Disk retention: execution directories accumulate (the Go runner never
//! removes them, and an edge host fills up). A janitor thread removes
//! finished execution directories older than `execution.retention_hours`,
//! then the oldest ones while they total more than
//! `execution.retention_max_bytes`. Running executions (journal entries) are
//! never touched, and nothing outside the execution directory is.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::journal::Journal;
use crate::shutdown::Shutdown;

const EVERY: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct Retention {
    pub root: PathBuf,
    /// Which executions are running (never removed).
    pub journal: Journal,
    /// `None`: keep regardless of age.
    pub max_age: Option<Duration>,
    /// `None`: no size limit.
    pub max_bytes: Option<u64>,
}

struct Dir {
    path: PathBuf,
    modified: SystemTime,
    bytes: u64,
}

impl Retention {
    pub fn new(
        root: &Path,
        journal: Journal,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Self {
        Self {
            root: root.to_path_buf(),
            journal,
            max_age,
            max_bytes,
        }
    }

    pub fn start(self, shutdown: Shutdown) {
        if self.max_age.is_none() && self.max_bytes.is_none() {
            return;
        }
        let spawned = thread::Builder::new()
            .name("retention".into())
            .spawn(move || loop {
                let (removed, freed) = self.sweep();
                if removed > 0 {
                    log::info!(
                        "retention: removed {removed} finished execution director{} ({} MiB)",
                        if removed == 1 { "y" } else { "ies" },
                        freed / (1024 * 1024)
                    );
                }
                if shutdown.sleep(EVERY) {
                    return;
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the retention thread: {e}; execution directories are kept");
        }
    }

    /// One pass. Returns (directories removed, bytes freed).
    pub fn sweep(&self) -> (usize, u64) {
        let mut dirs = self.finished_dirs();
        dirs.sort_by_key(|d| d.modified);
        let now = SystemTime::now();
        let mut total: u64 = dirs.iter().map(|d| d.bytes).sum();
        let (mut removed, mut freed) = (0, 0);
        for d in dirs {
            let too_old = self
                .max_age
                .is_some_and(|age| now.duration_since(d.modified).unwrap_or_default() > age);
            let too_big = self.max_bytes.is_some_and(|max| total > max);
            if !too_old && !too_big {
                continue;
            }
            match fs::remove_dir_all(&d.path) {
                Ok(()) => {
                    total = total.saturating_sub(d.bytes);
                    removed += 1;
                    freed += d.bytes;
                    if let Some(flow) = d.path.parent() {
                        // Only succeeds when the flow directory is now empty.
                        let _ = fs::remove_dir(flow);
                    }
                }
                Err(e) => log::warn!("retention: cannot remove {}: {e}", d.path.display()),
            }
        }
        (removed, freed)
    }

    /// `{root}/{flo}/{execution}` directories with no journal entry.
    fn finished_dirs(&self) -> Vec<Dir> {
        let mut out = Vec::new();
        let Ok(flows) = fs::read_dir(&self.root) else {
            return out;
        };
        for flow in flows.flatten() {
            if !flow.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(executions) = fs::read_dir(flow.path()) else {
                continue;
            };
            for exec in executions.flatten() {
                if !exec.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = exec.file_name();
                if self.journal.is_live(&name.to_string_lossy()) {
                    continue;
                }
                let (bytes, modified) = usage(&exec.path());
                out.push(Dir {
                    path: exec.path(),
                    modified,
                    bytes,
                });
            }
        }
        out
    }
}

/// Total size and newest modification time below `dir` (links not followed).
fn usage(dir: &Path) -> (u64, SystemTime) {
    let mut bytes = 0;
    let mut newest = fs::symlink_metadata(dir)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if let Ok(m) = meta.modified() {
                newest = newest.max(m);
            }
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    (bytes, newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_dir(root: &Path, flo: &str, id: &str, bytes: usize) -> PathBuf {
        let d = root.join(flo).join(id);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("output.log"), vec![b'x'; bytes]).unwrap();
        d
    }

    #[test]
    fn removes_oldest_over_the_size_cap_and_spares_running_ones() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let a = exec_dir(root.path(), "f", "a", 1000);
        std::thread::sleep(Duration::from_millis(20));
        let b = exec_dir(root.path(), "f", "b", 1000);
        std::thread::sleep(Duration::from_millis(20));
        let c = exec_dir(root.path(), "g", "c", 1000);
        // `a` is the oldest but still running.
        let journal = Journal::open(state.path()).unwrap();
        journal
            .record(&crate::journal::test_record("a", &a))
            .unwrap();
        let r = Retention::new(root.path(), journal, None, Some(1500));
        let (removed, _) = r.sweep();
        assert_eq!(removed, 1);
        assert!(a.exists() && !b.exists() && c.exists());
    }

    #[test]
    fn removes_by_age_and_empty_flow_dirs() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let a = exec_dir(root.path(), "f", "a", 10);
        std::thread::sleep(Duration::from_millis(50));
        let journal = Journal::open(state.path()).unwrap();
        let r = Retention::new(
            root.path(),
            journal.clone(),
            Some(Duration::from_millis(10)),
            None,
        );
        assert_eq!(r.sweep().0, 1);
        assert!(!a.exists() && !root.path().join("f").exists());
        let keep = Retention::new(root.path(), journal, Some(Duration::from_secs(3600)), None);
        exec_dir(root.path(), "f", "b", 10);
        assert_eq!(keep.sweep().0, 0);
    }
}
