//! Walking and removing what a flow left on disk, through directory file
//! descriptors only. The flow runs as the runner's user and may leave
//! anything: links to elsewhere, trees thousands of levels deep (deeper than
//! `PATH_MAX`, deeper than the open-file limit), directories moved around
//! while they are walked. So no path below the starting directory is ever
//! resolved: each step is one name under an open descriptor, `fstatat` with
//! `AT_SYMLINK_NOFOLLOW`, `openat` with `O_NOFOLLOW`; a link is an entry
//! like a file, never a way somewhere. Going back up is `openat("..")`,
//! checked against the device and inode recorded on the way down, so the
//! walk holds two or three descriptors whatever the depth, and a directory
//! moved meanwhile stops the walk instead of sending it elsewhere. Nothing
//! on another filesystem (a mount inside) is counted or removed.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// A directory's identity: what a name must still point to before the
/// runner acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(stat: &Stat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }

    /// The identity of an open descriptor.
    pub fn of_fd(fd: impl AsFd) -> io::Result<Self> {
        Ok(Self::of(&rfs::fstat(fd)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot {what} {name:?} ({depth} levels below {top}): {source}")]
    Io {
        what: &'static str,
        name: String,
        depth: usize,
        top: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a directory {depth} levels below {top} was moved while it was walked; stopped there")]
    Moved { depth: usize, top: PathBuf },
    #[error("{name:?} ({depth} levels below {top}) is another filesystem; it is not removed")]
    OtherDevice {
        name: String,
        depth: usize,
        top: PathBuf,
    },
    #[error("{top} keeps changing while it is removed (something still writes there); stopped")]
    StillWritten { top: PathBuf },
}

/// What a walk found, counted up to where it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Apparent size of everything that is not a directory (`du
    /// --apparent-size`): a sparse file counts whole, which errs on the
    /// side of a limit.
    pub bytes: u64,
    /// Files, directories, links and anything else below the start.
    pub entries: u64,
    /// Newest modification time seen, the start included.
    pub newest: Option<SystemTime>,
}

/// Where a count may stop early: once either is exceeded the answer is
/// known, and counting on would only cost (a flow may leave millions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub bytes: Option<u64>,
    pub entries: Option<u64>,
}

impl Limits {
    pub fn exceeded_by(&self, u: &Usage) -> bool {
        self.bytes.is_some_and(|b| u.bytes > b) || self.entries.is_some_and(|e| u.entries > e)
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

// The field is signed on some targets, unsigned on others: a time before
// 1970 (or its unsigned wrap) gives no time rather than a wrong one.
#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
fn mtime(stat: &Stat) -> Option<SystemTime> {
    let secs = u64::try_from(stat.st_mtime as i64).ok()?;
    let nanos = u32::try_from(stat.st_mtime_nsec).unwrap_or(0);
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn shown(name: &CStr) -> String {
    name.to_string_lossy().escape_debug().to_string()
}

/// One directory level of a walk: its identity (checked when the walk comes
/// back up to it), the name it has in its parent, and the subdirectories
/// still to visit.
struct Level {
    id: FileId,
    name: Option<CString>,
    pending: Vec<CString>,
}

/// The walk's position: the open directory it is in and the levels above.
struct Walk<'a> {
    top: &'a Path,
    dev: u64,
    cur: OwnedFd,
    stack: Vec<Level>,
}

impl<'a> Walk<'a> {
    /// Starts at `dir` with a descriptor of its own (its own read offset).
    fn start(top: &'a Path, dir: impl AsFd) -> Result<(Self, Stat), WalkError> {
        let cur = rfs::openat(&dir, c".", dir_flags(), Mode::empty())
            .map_err(|e| self_err(top, "open", e))?;
        let stat = rfs::fstat(&cur).map_err(|e| self_err(top, "stat", e))?;
        Ok((
            Self {
                top,
                dev: stat.st_dev,
                cur,
                stack: Vec::new(),
            },
            stat,
        ))
    }

    fn depth(&self) -> usize {
        self.stack.len().saturating_sub(1)
    }

    fn err(&self, what: &'static str, name: &CStr, e: Errno) -> WalkError {
        WalkError::Io {
            what,
            name: shown(name),
            depth: self.depth(),
            top: self.top.to_path_buf(),
            source: e.into(),
        }
    }

    /// Opens subdirectory `name` of the current one. `None`: it is gone or
    /// is no longer a directory (a link put there meanwhile is not entered).
    fn open_child(&self, name: &CStr) -> Result<Option<(OwnedFd, FileId)>, WalkError> {
        match rfs::openat(&self.cur, name, dir_flags(), Mode::empty()) {
            Ok(fd) => {
                let stat = rfs::fstat(&fd).map_err(|e| self.err("stat", name, e))?;
                Ok(Some((fd, FileId::of(&stat))))
            }
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(self.err("open", name, e)),
        }
    }

    /// Goes back up one level: `..` of the current directory must be the
    /// directory the walk came down from.
    fn climb(&mut self) -> Result<(), WalkError> {
        let parent = rfs::openat(&self.cur, c"..", dir_flags(), Mode::empty())
            .map_err(|e| self.err("open", c"..", e))?;
        let id = FileId::of_fd(&parent).map_err(|e| WalkError::Io {
            what: "stat",
            name: "..".into(),
            depth: self.depth(),
            top: self.top.to_path_buf(),
            source: e,
        })?;
        if self.stack.last().map(|l| l.id) != Some(id) {
            return Err(WalkError::Moved {
                depth: self.depth(),
                top: self.top.to_path_buf(),
            });
        }
        self.cur = parent;
        Ok(())
    }
}

fn self_err(top: &Path, what: &'static str, e: Errno) -> WalkError {
    WalkError::Io {
        what,
        name: ".".into(),
        depth: 0,
        top: top.to_path_buf(),
        source: e.into(),
    }
}

/// Reads the names in `dir` (an iterator of the whole directory, one
/// `getdents` buffer at a time), minus `.` and `..`.
fn entries(dir: &OwnedFd) -> io::Result<impl Iterator<Item = io::Result<(CString, FileType)>>> {
    let dir = Dir::read_from(dir)?;
    Ok(dir.filter_map(|e| match e {
        Err(e) => Some(Err(e.into())),
        Ok(e) => {
            let name = e.file_name();
            if name == c"." || name == c".." {
                None
            } else {
                Some(Ok((name.to_owned(), e.file_type())))
            }
        }
    }))
}

/// Counts what is below `dir` (`top` is its path, for messages only),
/// stopping as soon as `stop` is exceeded.
pub fn usage(top: &Path, dir: impl AsFd, stop: Limits) -> Result<Usage, WalkError> {
    let (mut walk, stat) = Walk::start(top, dir)?;
    let mut usage = Usage {
        newest: mtime(&stat),
        ..Usage::default()
    };
    let pending = count_level(&walk, &mut usage)?;
    walk.stack.push(Level {
        id: FileId::of(&stat),
        name: None,
        pending,
    });
    loop {
        if stop.exceeded_by(&usage) {
            return Ok(usage);
        }
        let Some(level) = walk.stack.last_mut() else {
            return Ok(usage);
        };
        if let Some(name) = level.pending.pop() {
            let Some((fd, id)) = walk.open_child(&name)? else {
                continue;
            };
            if id.dev != walk.dev {
                continue;
            }
            walk.cur = fd;
            let pending = count_level(&walk, &mut usage)?;
            walk.stack.push(Level {
                id,
                name: Some(name),
                pending,
            });
        } else {
            walk.stack.pop();
            if walk.stack.is_empty() {
                return Ok(usage);
            }
            walk.climb()?;
        }
    }
}

/// Counts the entries of the current directory; returns its subdirectories.
fn count_level(walk: &Walk, usage: &mut Usage) -> Result<Vec<CString>, WalkError> {
    let mut subdirs = Vec::new();
    let read_error = |source| WalkError::Io {
        what: "read",
        name: ".".into(),
        depth: walk.stack.len(),
        top: walk.top.to_path_buf(),
        source,
    };
    for entry in entries(&walk.cur).map_err(read_error)? {
        let (name, _) = entry.map_err(read_error)?;
        let stat = match rfs::statat(&walk.cur, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            // Removed since it was listed: nothing to count.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(walk.err("stat", &name, e)),
        };
        usage.entries += 1;
        usage.newest = usage.newest.max(mtime(&stat));
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            subdirs.push(name);
        } else {
            usage.bytes = usage
                .bytes
                .saturating_add(u64::try_from(stat.st_size).unwrap_or(0));
        }
    }
    Ok(subdirs)
}

/// How often one directory is emptied again when new entries keep
/// appearing in it (a process still writing): then removal gives up.
const MAX_PASSES: u32 = 3;

/// Removes everything below `dir`, however deep, without following a link
/// and without leaving its filesystem. `dir` itself stays (its parent's
/// descriptor is needed to remove it: see [`remove_dir_at`]).
pub fn remove_contents(top: &Path, dir: impl AsFd) -> Result<(), WalkError> {
    let (mut walk, stat) = Walk::start(top, dir)?;
    let mut passes = vec![1u32];
    let pending = clear_level(&walk)?;
    walk.stack.push(Level {
        id: FileId::of(&stat),
        name: None,
        pending,
    });
    loop {
        let Some(level) = walk.stack.last_mut() else {
            return Ok(());
        };
        if let Some(name) = level.pending.pop() {
            if enter(&mut walk, top, name)? {
                passes.push(1);
            }
            continue;
        }
        // Every subdirectory was emptied and removed: anything left now was
        // added meanwhile. Look again (bounded) before going up.
        let again = clear_level(&walk)?;
        if !again.is_empty() {
            let n = passes.last_mut().map(|p| {
                *p += 1;
                *p
            });
            if n.unwrap_or(MAX_PASSES + 1) > MAX_PASSES {
                return Err(WalkError::StillWritten {
                    top: top.to_path_buf(),
                });
            }
            if let Some(level) = walk.stack.last_mut() {
                level.pending = again;
            }
            continue;
        }
        let Some(done) = walk.stack.pop() else {
            return Ok(());
        };
        passes.pop();
        let Some(name) = done.name else {
            // The start: emptied.
            return Ok(());
        };
        remove_emptied(&mut walk, top, &name, done.id)?;
    }
}

/// Enters the subdirectory `name` of the current level and removes what
/// can go at once in it. `false` when it is gone, or a link or file was put
/// there meanwhile: emptying this level again takes it as an entry.
fn enter(walk: &mut Walk, top: &Path, name: CString) -> Result<bool, WalkError> {
    let Some((fd, id)) = walk.open_child(&name)? else {
        return Ok(false);
    };
    if id.dev != walk.dev {
        return Err(WalkError::OtherDevice {
            name: shown(&name),
            depth: walk.stack.len(),
            top: top.to_path_buf(),
        });
    }
    walk.cur = fd;
    let pending = clear_level(walk)?;
    walk.stack.push(Level {
        id,
        name: Some(name),
        pending,
    });
    Ok(true)
}

/// Goes up from the directory `name` (whose level was just popped) and
/// removes it, if the name is still the directory `id` that was emptied.
fn remove_emptied(walk: &mut Walk, top: &Path, name: &CStr, id: FileId) -> Result<(), WalkError> {
    walk.climb()?;
    match rfs::statat(&walk.cur, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) if FileId::of(&s) == id => {}
        Ok(_) | Err(Errno::NOENT) => {
            return Err(WalkError::Moved {
                depth: walk.depth() + 1,
                top: top.to_path_buf(),
            })
        }
        Err(e) => return Err(walk.err("stat", name, e)),
    }
    match rfs::unlinkat(&walk.cur, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(walk.err("remove", name, e)),
    }
}

/// Removes every entry of the current directory that can go in one step:
/// files, links, empty directories. Returns the subdirectories that are not
/// empty (to be entered).
fn clear_level(walk: &Walk) -> Result<Vec<CString>, WalkError> {
    let mut subdirs = Vec::new();
    let read_err = |e: io::Error| WalkError::Io {
        what: "read",
        name: ".".into(),
        depth: walk.stack.len(),
        top: walk.top.to_path_buf(),
        source: e,
    };
    for entry in entries(&walk.cur).map_err(read_err)? {
        let (name, kind) = entry.map_err(read_err)?;
        let is_dir = match kind {
            FileType::Directory => true,
            FileType::Unknown => match rfs::statat(&walk.cur, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => FileType::from_raw_mode(s.st_mode) == FileType::Directory,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(walk.err("stat", &name, e)),
            },
            _ => false,
        };
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rfs::unlinkat(&walk.cur, &name, flags) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::NOTEMPTY | Errno::EXIST) if is_dir => subdirs.push(name),
            // Listed as a directory but replaced by a file meanwhile (or
            // the other way round): the next pass sees what it is now.
            Err(Errno::NOTDIR | Errno::ISDIR) => subdirs.push(name),
            Err(e) => return Err(walk.err("remove", &name, e)),
        }
    }
    Ok(subdirs)
}

/// Removes directory `name` under `parent` and everything in it, but only
/// if it is still the directory `expected` (device and inode), checked when
/// it is opened and again just before the last `unlinkat`. `path` is for
/// messages. `Ok(false)`: it was not the expected directory (or was gone),
/// and nothing was removed.
pub fn remove_dir_at(
    parent: impl AsFd,
    name: &CStr,
    expected: FileId,
    path: &Path,
) -> Result<bool, WalkError> {
    let fd = match rfs::openat(&parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(false),
        Err(e) => return Err(self_err(path, "open", e)),
    };
    if FileId::of_fd(&fd).map_err(|e| WalkError::Io {
        what: "stat",
        name: ".".into(),
        depth: 0,
        top: path.to_path_buf(),
        source: e,
    })? != expected
    {
        return Ok(false);
    }
    remove_contents(path, &fd)?;
    drop(fd);
    // A swap between this check and the unlink can only put an empty
    // directory under the knife: `AT_REMOVEDIR` removes nothing else.
    match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) if FileId::of(&s) == expected => {}
        Ok(_) | Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(self_err(path, "stat", e)),
    }
    match rfs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(self_err(path, "remove", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn open(p: &Path) -> OwnedFd {
        rfs::open(p, dir_flags(), Mode::empty()).unwrap()
    }

    /// A chain of `depth` directories named `d` below `root`, built with
    /// descriptors (its path is far longer than `PATH_MAX`).
    fn deep(root: &Path, depth: usize) {
        let mut cur = open(root);
        for _ in 0..depth {
            rfs::mkdirat(&cur, c"d", Mode::from_raw_mode(0o755)).unwrap();
            cur = rfs::openat(&cur, c"d", dir_flags(), Mode::empty()).unwrap();
        }
        let f = rfs::openat(
            &cur,
            c"f",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        rustix::io::write(&f, b"abc").unwrap();
    }

    #[test]
    fn counts_and_removes_a_tree_deeper_than_path_max() {
        let t = tempfile::tempdir().unwrap();
        deep(t.path(), 5000);
        let u = usage(t.path(), open(t.path()), Limits::default()).unwrap();
        assert_eq!((u.entries, u.bytes), (5001, 3));
        let stopped = usage(
            t.path(),
            open(t.path()),
            Limits {
                bytes: None,
                entries: Some(10),
            },
        )
        .unwrap();
        assert_eq!(stopped.entries, 11, "stops counting once over");
        remove_contents(t.path(), open(t.path())).unwrap();
        assert!(fs::read_dir(t.path()).unwrap().next().is_none());
    }

    #[test]
    fn links_are_entries_not_ways_out() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"1234567890").unwrap();
        let d = t.path().join("e");
        fs::create_dir_all(d.join("sub")).unwrap();
        symlink(outside.path(), d.join("out")).unwrap();
        symlink(outside.path(), d.join("sub").join("out")).unwrap();
        let u = usage(&d, open(&d), Limits::default()).unwrap();
        assert_eq!(u.entries, 3);
        let id = FileId::of_fd(open(&d)).unwrap();
        assert!(remove_dir_at(open(t.path()), c"e", id, &d).unwrap());
        assert!(!d.exists());
        assert!(outside.path().join("keep").exists());
    }

    #[test]
    fn removes_nothing_when_the_name_is_another_directory_now() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        fs::create_dir_all(a.join("x")).unwrap();
        fs::create_dir_all(b.join("y")).unwrap();
        let id_a = FileId::of_fd(open(&a)).unwrap();
        // `a` swapped: the name now holds b's directory.
        fs::rename(&a, t.path().join("a.old")).unwrap();
        fs::rename(&b, &a).unwrap();
        assert!(!remove_dir_at(open(t.path()), c"a", id_a, &a).unwrap());
        assert!(a.join("y").exists());
        // And a link there is not entered.
        fs::rename(&a, &b).unwrap();
        symlink(&b, &a).unwrap();
        assert!(!remove_dir_at(open(t.path()), c"a", id_a, &a).unwrap());
        assert!(b.join("y").exists());
    }
}
