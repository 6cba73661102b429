//! File writes that matter: atomic (temp file, fsync, rename) and with a mode.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode for secrets, state and execution files.
pub const FILE_MODE: u32 = 0o600;
/// Mode for execution and state directories.
pub const DIR_MODE: u32 = 0o750;
/// Where unreadable state files (outbox reports, journal entries) are moved.
pub const CORRUPT_DIR: &str = "corrupt";
/// Names of the temporary files behind atomic writes.
const TEMP_PREFIX: &str = ".flo-tmp-";

/// Whether `name` is one of our temporary files (a write that never
/// finished, safe to remove at start-up).
pub fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Writes `bytes` to `path` atomically with `mode`: readers see the old file
/// or the whole new one, never a torn write, even across a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file = write_temp(path, bytes, mode, true)?;
    file.persist(path).map_err(|e| e.error)?;
    sync_parent(path);
    Ok(())
}

/// Like [`write_atomic`] but leaves the directory sync to the caller, who
/// syncs once for several files with [`sync_dir`]: the file's bytes are
/// durable when this returns, its name only after that sync.
pub fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file = write_temp(path, bytes, mode, true)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Makes the names created in `dir` (renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
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
        .prefix(TEMP_PREFIX)
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

/// Moves a file into `dir` (creating it), with a warning saying why.
pub fn move_aside(dir: &Path, path: &Path, why: &str) {
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let target = dir.join(name);
    let result = create_dir_all(dir).and_then(|_| fs::rename(path, &target));
    match result {
        Ok(()) => log::warn!("{} moved to {} ({why})", path.display(), target.display()),
        Err(e) => {
            log::warn!(
                "{} is unusable ({why}) and cannot be moved aside ({e}); removing it",
                path.display()
            );
            let _ = fs::remove_file(path);
        }
    }
}

/// Creates `path` and its missing parents with `DIR_MODE`.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}
