//! The state directory as one owned resource: the exclusive lock that makes
//! it this runner's alone, and whether it can be written right now.
//!
//! The lock (`flock` on `{state_directory}/flo-runner.lock`) is taken before
//! anything else touches the directory: two runners on one directory would
//! share an identity, stop each other's executors at start-up and number
//! their outbox entries alike. The kernel drops the lock when the process
//! dies, however it dies, so a stale lock file never blocks a restart.
//!
//! Writability: every durable write the runner makes (journal, outbox,
//! heartbeat) reports its failures here. While the directory cannot be
//! written the runner takes no new work (nothing it ran could be made
//! durable), and says why in the log, `health` and `/healthz`; a probe (a
//! small file created, synced and removed in each directory the runner
//! creates files in) tells when it can be written again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::fsutil;
use crate::shutdown::Wake;

pub const LOCK_FILE: &str = "flo-runner.lock";
const PROBE_FILE: &str = ".flo-probe";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "state directory {} is in use by another flo-runner{}: two runners must not share a state directory (give each its own execution.state_directory)",
        .dir.display(),
        match .pid { Some(p) => format!(" (pid {p})"), None => String::new() }
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock the state directory: {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The locked state directory, shared by everything that writes in it.
#[derive(Clone)]
pub struct StateDir {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Held open for the life of the process: the lock lives with it.
    _lock: File,
    writable: AtomicBool,
    problem: Mutex<Option<String>>,
    /// Told when `writable` flips (the heartbeat, so it says so at once).
    on_change: OnceLock<Wake>,
}

impl StateDir {
    /// Creates the directory if needed and takes its lock, failing at once
    /// (never waiting) when another process holds it.
    pub fn lock(path: &Path) -> Result<Self, LockError> {
        let lock_path = path.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: lock_path.clone(),
            source,
        };
        fsutil::create_dir_all(path).map_err(io_err)?;
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(fsutil::FILE_MODE)
            .open(&lock_path);
        let (mut file, can_write) = match opened {
            Ok(f) => (f, true),
            // A read-only directory can still be locked through an existing
            // file (flock needs no write access); the runner then waits for
            // the directory to become writable.
            Err(e) if lock_path.exists() => match File::open(&lock_path) {
                Ok(f) => (f, false),
                Err(_) => return Err(io_err(e)),
            },
            Err(e) => return Err(io_err(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: path.to_path_buf(),
                    pid: holder_pid(&mut file),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        if can_write {
            // Only for the error message of a second runner: best effort.
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                _lock: file,
                writable: AtomicBool::new(true),
                problem: Mutex::new(None),
                on_change: OnceLock::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the last write (or probe) succeeded.
    pub fn is_writable(&self) -> bool {
        self.inner.writable.load(Ordering::SeqCst)
    }

    /// Has `wake` notified whenever the directory becomes writable or
    /// unwritable (once; later calls are ignored).
    pub fn on_change(&self, wake: Wake) {
        let _ = self.inner.on_change.set(wake);
    }

    fn changed(&self) {
        if let Some(wake) = self.inner.on_change.get() {
            wake.notify();
        }
    }

    /// Why the directory cannot be written, while it cannot.
    pub fn problem(&self) -> Option<String> {
        crate::sync::lock(&self.inner.problem).clone()
    }

    /// A durable write (`what`) failed. The first failure is logged as the
    /// one line that says why the runner stops taking work.
    pub fn write_failed(&self, what: &str, e: &io::Error) {
        let why = format!(
            "state directory {} cannot be written ({what}: {e})",
            self.inner.path.display()
        );
        let mut problem = crate::sync::lock(&self.inner.problem);
        if self.inner.writable.swap(false, Ordering::SeqCst) {
            log::error!("{why}; taking no new work until it can be written again");
            crate::metrics::global()
                .state_dir_unwritable
                .store(1, Ordering::Relaxed);
            self.changed();
        }
        *problem = Some(why);
    }

    /// The directories the runner creates files in.
    fn dirs(&self) -> [PathBuf; 3] {
        [
            self.inner.path.clone(),
            self.inner.path.join(crate::outbox::OUTBOX_DIR),
            self.inner.path.join(crate::journal::JOURNAL_DIR),
        ]
    }

    /// A check without I/O, cheap enough for every claim and heartbeat:
    /// write permission, a read-only mount, no free space. Marks the
    /// directory unwritable (and returns `false`) if one fails; a full
    /// probe (with writes) is what marks it writable again.
    pub fn check(&self) -> bool {
        for dir in self.dirs() {
            if let Err(e) = check_dir(&dir) {
                self.write_failed(&format!("{} is not writable", dir.display()), &e);
                return false;
            }
        }
        true
    }

    /// Tries a small durable write in each directory the runner creates
    /// files in; on success after a failure, the runner takes work again.
    pub fn probe(&self) -> bool {
        for dir in &self.dirs() {
            if let Err(e) = fsutil::create_dir_all(dir)
                .and_then(|()| check_dir(dir))
                .and_then(|()| probe_dir(dir))
            {
                self.write_failed(&format!("test write in {}", dir.display()), &e);
                return false;
            }
        }
        let mut problem = crate::sync::lock(&self.inner.problem);
        if !self.inner.writable.swap(true, Ordering::SeqCst) {
            log::info!(
                "state directory {} can be written again; taking work",
                self.inner.path.display()
            );
            crate::metrics::global()
                .state_dir_unwritable
                .store(0, Ordering::Relaxed);
            self.changed();
        }
        *problem = None;
        true
    }
}

/// Write access for this process, a writable mount, some free space.
fn check_dir(dir: &Path) -> io::Result<()> {
    use rustix::fs::{Access, AtFlags, StatVfsMountFlags, CWD};
    rustix::fs::accessat(CWD, dir, Access::WRITE_OK, AtFlags::EACCESS)?;
    let vfs = rustix::fs::statvfs(dir)?;
    if vfs.f_flag.contains(StatVfsMountFlags::RDONLY) {
        return Err(rustix::io::Errno::ROFS.into());
    }
    if vfs.f_bavail == 0 {
        return Err(rustix::io::Errno::NOSPC.into());
    }
    Ok(())
}

/// Creates, writes, syncs and removes a small file in `dir`.
pub fn probe_dir(dir: &Path) -> io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(fsutil::FILE_MODE)
            .open(&path)?;
        f.write_all(b"probe\n")?;
        f.sync_all()
    })();
    let _ = fs::remove_file(&path);
    result
}

/// The pid a lock holder wrote into the lock file, if it is still alive.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(64).read_to_string(&mut text).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// For `check`: the pid of the process holding `dir`'s lock, if one does.
/// Takes and releases the lock when nobody holds it.
pub fn held_by(dir: &Path) -> Result<Option<u32>, io::Error> {
    let path = dir.join(LOCK_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        Err(fs::TryLockError::WouldBlock) => Ok(Some(holder_pid(&mut file).unwrap_or(0))),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::lock(dir.path()).unwrap();
        // flock locks belong to the open file: a second open in this same
        // process conflicts just as another process would.
        match StateDir::lock(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {:?}", other.err()),
        }
        assert_eq!(held_by(dir.path()).unwrap(), Some(std::process::id()));
        drop(first);
        assert_eq!(held_by(dir.path()).unwrap(), None);
        StateDir::lock(dir.path()).unwrap();
    }

    #[test]
    fn failure_then_probe() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::lock(dir.path()).unwrap();
        fs::create_dir_all(dir.path().join(crate::outbox::OUTBOX_DIR)).unwrap();
        fs::create_dir_all(dir.path().join(crate::journal::JOURNAL_DIR)).unwrap();
        assert!(s.is_writable());
        s.write_failed("outbox", &io::Error::other("disk full"));
        assert!(!s.is_writable());
        assert!(s.problem().unwrap().contains("disk full"));
        assert!(s.probe());
        assert!(s.is_writable() && s.problem().is_none());
    }
}
