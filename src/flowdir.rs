//! An execution directory, held by a directory file descriptor. The flow
//! runs as the same user as the runner and may do anything in its directory:
//! swap it for a symlink, plant links or FIFOs where the runner's files go,
//! leave a `state.json` that never ends. So the runner never resolves a path
//! in there again once the directory is open: every file it creates or reads
//! is one name under this descriptor, opened without following links and
//! without blocking, and what it reads is capped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags};

use crate::fsutil;

/// How a read of a file the flow left went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("there is no {name}")]
    Missing { name: &'static str },
    #[error("{name} is a symbolic link; the runner does not follow links the flow left")]
    Link { name: &'static str },
    #[error("{name} is not a regular file (a {kind})")]
    NotRegular {
        name: &'static str,
        kind: &'static str,
    },
    #[error("{name} is larger than {cap} bytes (execution.max_state_bytes)")]
    TooLarge { name: &'static str, cap: u64 },
    #[error("cannot read {name}: {source}")]
    Io {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

pub struct FlowDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// `mkdirat` that accepts an existing directory.
fn mkdir_at(parent: &OwnedFd, name: &Path) -> io::Result<()> {
    match rfs::mkdirat(parent, name, Mode::from_raw_mode(fsutil::DIR_MODE)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A component of an execution directory's path that the flow replaced.
#[derive(Debug, thiserror::Error)]
#[error("{} is not a directory (a link or a file left there); refusing to use it", .path.display())]
pub struct NotADirectory {
    path: PathBuf,
    #[source]
    source: rustix::io::Errno,
}

/// Opens one directory component without following a link.
fn open_dir_at(parent: &OwnedFd, name: &Path, shown: &Path) -> io::Result<OwnedFd> {
    rfs::openat(parent, name, dir_flags(), Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
            let refused = NotADirectory {
                path: shown.to_path_buf(),
                source: e,
            };
            io::Error::new(io::ErrorKind::InvalidInput, refused)
        } else {
            e.into()
        }
    })
}

/// For walks that must stay in the directory the runner opened
/// (`disklimit`), wherever the flow moved it.
impl AsFd for FlowDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl FlowDir {
    /// Creates (or opens) `{root}/{flo}/{execution}`, one component at a
    /// time, refusing any component under `root` that is not a real
    /// directory: a flow that replaced its flow directory with a link to
    /// somewhere else gets nothing written there.
    pub fn create(root: &Path, flo: &str, execution: &str) -> io::Result<Self> {
        fsutil::create_dir_all(root)?;
        let root_fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let flo_path = root.join(flo);
        mkdir_at(&root_fd, Path::new(flo))?;
        let flo_fd = open_dir_at(&root_fd, Path::new(flo), &flo_path)?;
        let path = flo_path.join(execution);
        mkdir_at(&flo_fd, Path::new(execution))?;
        let fd = open_dir_at(&flo_fd, Path::new(execution), &path)?;
        Ok(Self { fd, path })
    }

    /// The path, for messages and for the executor's working directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_at(&self, name: &str, flags: OFlags) -> io::Result<File> {
        let fd = rfs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(fsutil::FILE_MODE),
        )?;
        Ok(File::from(fd))
    }

    /// Writes `name` afresh (replacing a file the flow left; a link there
    /// is removed, never written through).
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.create_new(name)?.write_all(bytes)
    }

    /// Creates `name` afresh: whatever the flow left at that name (a link,
    /// a file) is unlinked, never written through.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let create = || self.open_at(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL);
        match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                rfs::unlinkat(&self.fd, name, rfs::AtFlags::empty())?;
                create()
            }
            other => other,
        }
    }

    /// Replaces `name` atomically (a temporary name, then a rename under
    /// the same descriptor): readers see the old file or the new one.
    pub fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let temp = format!(".flo-tmp-{name}-{}", std::process::id());
        let _ = rfs::unlinkat(&self.fd, temp.as_str(), rfs::AtFlags::empty());
        let written = self
            .open_at(&temp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)
            .and_then(|mut f| f.write_all(bytes));
        let renamed = written.and_then(|()| {
            rfs::renameat(&self.fd, temp.as_str(), &self.fd, name).map_err(io::Error::from)
        });
        if renamed.is_err() {
            let _ = rfs::unlinkat(&self.fd, temp.as_str(), rfs::AtFlags::empty());
        }
        renamed
    }

    /// Reads `name` if it is a regular file of at most `cap` bytes. Opened
    /// without following a link and without blocking (a FIFO would block an
    /// ordinary open until someone writes), then checked with `fstat`.
    pub fn read_capped(&self, name: &'static str, cap: u64) -> Result<Vec<u8>, ReadError> {
        let file = match self.open_at(name, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ReadError::Missing { name })
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(ReadError::Link { name })
            }
            Err(source) => return Err(ReadError::Io { name, source }),
        };
        let stat = rfs::fstat(&file).map_err(|e| ReadError::Io {
            name,
            source: e.into(),
        })?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return Err(ReadError::NotRegular {
                name,
                kind: match kind {
                    FileType::Fifo => "FIFO",
                    FileType::Socket => "socket",
                    FileType::CharacterDevice => "character device",
                    FileType::BlockDevice => "block device",
                    FileType::Directory => "directory",
                    _ => "special file",
                },
            });
        }
        if stat.st_size as u64 > cap {
            return Err(ReadError::TooLarge { name, cap });
        }
        let mut bytes = Vec::with_capacity(stat.st_size as usize);
        // The file may still grow (a detached process writing): cap the read.
        file.take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ReadError::Io { name, source })?;
        if bytes.len() as u64 > cap {
            return Err(ReadError::TooLarge { name, cap });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn refuses_a_flow_directory_that_is_a_link() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("f")).unwrap();
        let e = FlowDir::create(root.path(), "f", "e").err().unwrap();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn writes_stay_in_the_directory_it_opened() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = FlowDir::create(root.path(), "f", "e").unwrap();
        // The flow swaps its directory for a link elsewhere.
        let real = root.path().join("f").join("e");
        std::fs::rename(&real, root.path().join("moved")).unwrap();
        symlink(outside.path(), &real).unwrap();
        dir.replace("result.json", b"{}").unwrap();
        dir.write("output.log", b"x").unwrap();
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(root.path().join("moved").join("result.json").exists());
    }

    #[test]
    fn reads_only_small_regular_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = FlowDir::create(root.path(), "f", "e").unwrap();
        let p = dir.path().to_path_buf();
        assert!(matches!(
            dir.read_capped("state.json", 10),
            Err(ReadError::Missing { .. })
        ));
        std::fs::write(p.join("state.json"), b"{}").unwrap();
        assert_eq!(dir.read_capped("state.json", 10).unwrap(), b"{}");
        std::fs::write(p.join("state.json"), vec![b' '; 11]).unwrap();
        assert!(matches!(
            dir.read_capped("state.json", 10),
            Err(ReadError::TooLarge { .. })
        ));
        std::fs::remove_file(p.join("state.json")).unwrap();
        symlink("/dev/zero", p.join("state.json")).unwrap();
        assert!(matches!(
            dir.read_capped("state.json", 10),
            Err(ReadError::Link { .. })
        ));
        std::fs::remove_file(p.join("state.json")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p.join("state.json"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = dir.read_capped("state.json", 10).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }
}
