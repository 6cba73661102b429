//! The suite's temporary directories, kept until it ends, and the
//! filesystems they are on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::Res;

/// Every directory the suite creates; removed only when the suite ends. On
/// a filesystem like this machine's (ext4 without a journal), creating a file
/// scans past every inode freed in the last few minutes, so deleting a
/// round's thousands of files would slow down the rounds after it.
static GRAVEYARD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn graveyard() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    GRAVEYARD.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new `flo-bench-*` directory under `base` (default: the system temp
/// directory), as a `TempDir` that does not remove itself: the graveyard does.
pub fn temp_dir_handle(base: Option<&Path>) -> Res<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("flo-bench-");
    let mut dir = match base {
        Some(b) => builder.tempdir_in(b),
        None => builder.tempdir(),
    }
    .map_err(|e| format!("temp dir: {e}"))?;
    dir.disable_cleanup(true);
    graveyard().push(dir.path().to_path_buf());
    Ok(dir)
}

/// [`temp_dir_handle`], as a path.
pub fn temp_dir(base: Option<&Path>) -> Res<PathBuf> {
    Ok(temp_dir_handle(base)?.path().to_path_buf())
}

/// Removes every directory the suite made, or (with `keep`) says how many
/// were kept.
pub fn finish(keep: bool) {
    if keep {
        let kept = graveyard().len();
        eprintln!("bench: FLO_BENCH_KEEP: {kept} flo-bench-* directories kept");
        return;
    }
    for d in std::mem::take(&mut *graveyard()) {
        let _ = fs::remove_dir_all(d);
    }
}

/// The filesystem type of a directory (`stat -f`), e.g. ext2/ext3 or tmpfs.
pub fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `/dev/shm` when it is a tmpfs: the supplementary runs put every file there.
pub fn tmpfs_dir() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    (shm.is_dir() && fs_type(&shm) == "tmpfs").then_some(shm)
}
