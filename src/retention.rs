//! Disk retention: execution directories accumulate (the Go runner never
//! removes them, and an edge host fills up). A janitor thread removes
//! finished execution directories older than `execution.retention_hours`,
//! then the oldest ones while they total more than
//! `execution.retention_max_bytes` or hold more than
//! `execution.retention_max_entries` entries (files cost inodes even when
//! they are empty). Running executions are never touched, and nothing
//! outside the execution directory is.
//!
//! Flows run as the runner's user and may have rearranged what they left,
//! even while retention walks it. So a directory is removed only once it is
//! verified as a finished execution's: a real directory (not a link) exactly
//! two levels under the execution root, both names valid ids, not live in
//! the journal and not the directory of a running execution (by inode,
//! wherever the flow moved it). It is found, counted and removed through
//! directory descriptors (`dirwalk`): never by a path below the root, never
//! through a link, at any depth. At removal each name is opened again and
//! must still be the device and inode that was verified, and the last
//! `unlinkat` goes through the flow directory's descriptor.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::dirwalk::{self, FileId, Limits};
use crate::disklimit::DiskWatch;
use crate::ids::{ExecutionId, FloId};
use crate::journal::Journal;
use crate::runner::{SpawnError, Threads};
use crate::shutdown::Shutdown;

/// `execution.retention_interval_secs` unless set.
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
    /// `None`: no limit on entries.
    pub max_entries: Option<u64>,
    pub every: Duration,
    /// Directories of running executions, by identity.
    running: Option<DiskWatch>,
}

/// A finished execution directory, as verified when it was found.
struct Found {
    flo: CString,
    flo_id: FileId,
    exec: CString,
    exec_id: FileId,
    path: PathBuf,
    modified: SystemTime,
    bytes: u64,
    /// Entries below it, plus itself.
    entries: u64,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens `name` under `parent` if it is a real directory whose identity
/// is the same by name (`fstatat`) and by descriptor (`fstat`): a link is
/// refused by `O_NOFOLLOW`, a swap between the two calls by the comparison.
fn open_verified(parent: &OwnedFd, name: &CString) -> Option<(OwnedFd, FileId)> {
    let by_name = rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    if FileType::from_raw_mode(by_name.st_mode) != FileType::Directory {
        return None;
    }
    let fd = rfs::openat(parent, name, dir_flags(), Mode::empty()).ok()?;
    let id = FileId::of_fd(&fd).ok()?;
    (id == FileId::of(&by_name)).then_some((fd, id))
}

/// The names in `dir` that are valid ids of the kind `valid` accepts.
fn id_names(dir: &OwnedFd, valid: impl Fn(&str) -> bool) -> Vec<CString> {
    let Ok(list) = Dir::read_from(dir) else {
        return Vec::new();
    };
    list.filter_map(Result::ok)
        .filter(|e| e.file_type() == FileType::Directory || e.file_type() == FileType::Unknown)
        .map(|e| e.file_name().to_owned())
        // Ids come from JSON strings: a name that is not UTF-8 is not ours.
        .filter(|n| n.to_str().is_ok_and(&valid))
        .collect()
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
            max_entries: None,
            every: EVERY,
            running: None,
        }
    }

    pub fn max_entries(mut self, max: Option<u64>) -> Self {
        self.max_entries = max;
        self
    }

    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Spares the directories of the executions `running` watches, by
    /// inode: a running flow that renamed its directory is still running.
    pub fn sparing(mut self, running: DiskWatch) -> Self {
        self.running = Some(running);
        self
    }

    /// Sweeps every `every` on a thread of `threads` until the first stop
    /// signal; nothing to do (no limit set) starts nothing.
    pub fn start(self, shutdown: Shutdown, threads: &mut Threads) -> Result<(), SpawnError> {
        if self.max_age.is_none() && self.max_bytes.is_none() && self.max_entries.is_none() {
            return Ok(());
        }
        threads.spawn("retention", move || loop {
            let (removed, freed) = self.sweep();
            if removed > 0 {
                log::info!(
                    "retention: removed {removed} finished execution director{} ({} MiB)",
                    if removed == 1 { "y" } else { "ies" },
                    freed / (1024 * 1024)
                );
            }
            if shutdown.sleep(self.every) {
                return;
            }
        })
    }

    fn open_root(&self) -> Option<OwnedFd> {
        // The root itself is the operator's (it may well be a link).
        match rfs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(Errno::NOENT) => None,
            Err(e) => {
                log::warn!("retention: cannot open {}: {e}", self.root.display());
                None
            }
        }
    }

    /// One pass. Returns (directories removed, bytes freed).
    pub fn sweep(&self) -> (usize, u64) {
        let found = self.finished_dirs();
        self.remove_over_limits(found)
    }

    fn remove_over_limits(&self, mut dirs: Vec<Found>) -> (usize, u64) {
        dirs.sort_by_key(|d| d.modified);
        let now = SystemTime::now();
        let mut bytes: u64 = dirs.iter().map(|d| d.bytes).sum();
        let mut entries: u64 = dirs.iter().map(|d| d.entries).sum();
        let (mut removed, mut freed) = (0, 0);
        let Some(root) = self.open_root() else {
            return (0, 0);
        };
        for d in dirs {
            let too_old = self
                .max_age
                .is_some_and(|age| now.duration_since(d.modified).unwrap_or_default() > age);
            let too_big = self.max_bytes.is_some_and(|max| bytes > max);
            let too_many = self.max_entries.is_some_and(|max| entries > max);
            if !too_old && !too_big && !too_many {
                continue;
            }
            match self.remove(&root, &d) {
                Ok(true) => {
                    bytes = bytes.saturating_sub(d.bytes);
                    entries = entries.saturating_sub(d.entries);
                    removed += 1;
                    freed += d.bytes;
                }
                Ok(false) => log::warn!(
                    "retention: {} changed since it was checked (moved, replaced or running again); not removed",
                    d.path.display()
                ),
                Err(e) => log::warn!("retention: cannot remove {}: {e}", d.path.display()),
            }
        }
        (removed, freed)
    }

    fn spared(&self, exec: &CString, id: FileId) -> bool {
        let live = exec.to_str().is_ok_and(|n| self.journal.is_live(n));
        live || self
            .running
            .as_ref()
            .is_some_and(|r| r.running_dirs().contains(&id))
    }

    /// Removes `d` if its flow directory and itself are still what was
    /// verified, and it is still not running. `Ok(false)`: they are not.
    fn remove(&self, root: &OwnedFd, d: &Found) -> Result<bool, dirwalk::WalkError> {
        if self.spared(&d.exec, d.exec_id) {
            return Ok(false);
        }
        let Some((flo, flo_id)) = open_verified(root, &d.flo) else {
            return Ok(false);
        };
        if flo_id != d.flo_id {
            return Ok(false);
        }
        if !dirwalk::remove_dir_at(&flo, &d.exec, d.exec_id, &d.path)? {
            return Ok(false);
        }
        drop(flo);
        // The flow directory goes once empty (AT_REMOVEDIR fails otherwise),
        // and only if the name is still the one verified.
        if rfs::statat(root, &d.flo, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| FileId::of(&s) == d.flo_id)
        {
            let _ = rfs::unlinkat(root, &d.flo, AtFlags::REMOVEDIR);
        }
        Ok(true)
    }

    /// `{root}/{flo}/{execution}` directories verified as finished.
    fn finished_dirs(&self) -> Vec<Found> {
        let mut out = Vec::new();
        let Some(root) = self.open_root() else {
            return out;
        };
        for flo_name in id_names(&root, |n| FloId::parse(n).is_ok()) {
            let Some((flo, flo_id)) = open_verified(&root, &flo_name) else {
                continue;
            };
            let flo_path = self.root.join(flo_name.to_string_lossy().as_ref());
            for exec_name in id_names(&flo, |n| ExecutionId::parse(n).is_ok()) {
                let Some((exec, exec_id)) = open_verified(&flo, &exec_name) else {
                    continue;
                };
                if self.spared(&exec_name, exec_id) {
                    continue;
                }
                let path = flo_path.join(exec_name.to_string_lossy().as_ref());
                let usage = match dirwalk::usage(&path, &exec, Limits::default()) {
                    Ok(u) => u,
                    Err(e) => {
                        log::warn!(
                            "retention: cannot count {}: {e}; kept for now",
                            path.display()
                        );
                        continue;
                    }
                };
                out.push(Found {
                    flo: flo_name.clone(),
                    flo_id,
                    exec: exec_name,
                    exec_id,
                    path,
                    modified: usage.newest.unwrap_or(SystemTime::UNIX_EPOCH),
                    bytes: usage.bytes,
                    entries: usage.entries + 1,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

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
    #[test]
    fn counts_entries_so_many_empty_files_are_removed() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let a = exec_dir(root.path(), "f", "a", 0);
        for i in 0..3000 {
            fs::write(a.join(format!("e{i}")), b"").unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let b = exec_dir(root.path(), "f", "b", 10);
        let journal = Journal::open(state.path()).unwrap();
        let r = Retention::new(root.path(), journal, None, Some(1 << 30)).max_entries(Some(100));
        assert_eq!(r.sweep().0, 1);
        assert!(!a.exists() && b.exists());
    }

    #[test]
    fn removes_only_verified_execution_directories() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"x").unwrap();
        let running = exec_dir(root.path(), "g", "running", 10);
        let journal = Journal::open(state.path()).unwrap();
        journal
            .record(&crate::journal::test_record("running", &running))
            .unwrap();
        // Links at both levels, to a running execution and outside; a file
        // and a name that is no valid id where directories are expected.
        symlink(root.path().join("g"), root.path().join("linked-flow")).unwrap();
        fs::create_dir_all(root.path().join("f")).unwrap();
        symlink(&running, root.path().join("f").join("linked-exec")).unwrap();
        symlink(outside.path(), root.path().join("f").join("out")).unwrap();
        fs::write(root.path().join("f").join("file"), b"x").unwrap();
        let e = exec_dir(root.path(), "f", "e", 10);
        symlink(outside.path(), e.join("out")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let r = Retention::new(root.path(), journal, Some(Duration::from_millis(1)), None);
        assert_eq!(r.sweep().0, 1, "only f/e");
        assert!(!e.exists());
        assert!(running.join("output.log").exists());
        assert!(outside.path().join("keep").exists());
        assert!(root.path().join("f").join("linked-exec").exists());
    }

    #[test]
    fn a_directory_swapped_after_it_was_checked_is_not_removed() {
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let mine = exec_dir(root.path(), "f", "e", 10);
        let journal = Journal::open(state.path()).unwrap();
        let r = Retention::new(root.path(), journal, None, Some(1));
        let found = r.finished_dirs();
        assert_eq!(found.len(), 1);
        // Between the walk and the removal, the flow moves its directory
        // away and puts another flow's (same execution name) in its place,
        // first at the {flo} level, then at the {execution} level.
        let other = exec_dir(root.path(), "g", "e", 10);
        fs::rename(root.path().join("f"), root.path().join("f.moved")).unwrap();
        symlink(root.path().join("g"), root.path().join("f")).unwrap();
        assert_eq!(r.remove_over_limits(found).0, 0);
        assert!(other.join("output.log").exists());
        fs::remove_file(root.path().join("f")).unwrap();
        fs::rename(root.path().join("f.moved"), root.path().join("f")).unwrap();
        let found = r.finished_dirs();
        let theirs = exec_dir(root.path(), "h", "x", 10);
        fs::rename(&mine, root.path().join("f").join("e.moved")).unwrap();
        fs::rename(&theirs, &mine).unwrap();
        let removed = r.remove_over_limits(
            found
                .into_iter()
                .filter(|d| d.flo.as_bytes() == b"f" && d.exec.as_bytes() == b"e")
                .collect(),
        );
        assert_eq!(removed.0, 0);
        assert!(mine.join("output.log").exists());
    }
}

#[cfg(test)]
mod deep_tests {
    use super::*;
    use std::fs;

    #[test]
    fn removes_a_tree_deeper_than_path_max_and_the_open_file_limit() {
        use rustix::fs::{self as rfs, Mode, OFlags};
        // As under systemd's default soft limit: deeper than this many
        // open directories.
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(1024),
                maximum: lim.maximum,
            },
        );
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let e = root.path().join("f").join("e");
        fs::create_dir_all(&e).unwrap();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut cur = rfs::open(&e, flags, Mode::empty()).unwrap();
        for _ in 0..5000 {
            rfs::mkdirat(&cur, c"d", Mode::from_raw_mode(0o755)).unwrap();
            cur = rfs::openat(&cur, c"d", flags, Mode::empty()).unwrap();
        }
        drop(cur);
        std::thread::sleep(Duration::from_millis(30));
        let journal = Journal::open(state.path()).unwrap();
        let r = Retention::new(root.path(), journal, Some(Duration::from_millis(10)), None);
        assert_eq!(r.sweep().0, 1);
        assert!(!e.exists());
    }
}
