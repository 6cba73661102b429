//! File writes that matter: atomic (temp file, fsync, rename) and with a mode.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode for secrets, state and execution files.
pub const FILE_MODE: u32 = 0o600;
/// Mode for execution and state directories.
pub const DIR_MODE: u32 = 0o750;

/// Writes `bytes` to `path` atomically with `mode`: readers see the old file
/// or the whole new one, never a torn write, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file = write_temp(path, bytes, mode, true)?;
    file.persist(path).map_err(|e| e.error)?;
    sync_parent(path);
    Ok(())
}

/// Like [`write_atomic`] but fails with `AlreadyExists` rather than replace
/// an existing file (used for the private key, which must never be clobbered).
pub fn write_new_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file = write_temp(path, bytes, mode, true)?;
    file.persist_noclobber(path).map_err(|e| e.error)?;
    sync_parent(path);
    Ok(())
}

/// Replaces `path` atomically (readers never see a torn file) but without
/// fsync: for files that need no crash durability (the heartbeat, copies
/// kept for operators), where an fsync per write would be wasted I/O.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file = write_temp(path, bytes, mode, false)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn write_temp(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".flo-tmp-")
        .tempfile_in(dir)?;
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    if durable {
        file.as_file().sync_all()?;
    }
    Ok(file)
}

fn sync_parent(path: &Path) {
    // Best effort: makes the rename itself durable on filesystems that need it.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// Makes an earlier [`replace`] of `path` durable: fsync of the file, then of
/// its directory (for the rename). A file already gone (delivered and
/// removed meanwhile) is fine.
pub fn sync(path: &Path) -> io::Result<()> {
    match fs::File::open(path) {
        Ok(f) => f.sync_all()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_parent(path);
    Ok(())
}

/// Creates `path` and its missing parents with `DIR_MODE`.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Writes a fresh file (not atomic: used inside a fresh execution directory).
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}
